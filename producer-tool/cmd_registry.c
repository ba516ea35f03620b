/* cmd_registry.c - `kinfer model push|list|show|activate|rollback|rm`: the
 * model registry in Redis (common/model_registry_admin.c does the work). */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kf_util.h"
#include "kinfer.h"
#include "model.h"
#include "model_registry.h"

#define O(f) offsetof(kc_conf_t, f)

#define KC_OPT_JSON                                                                                \
        {                                                                                          \
                "json", 0, NULL, KF_OPT_BOOL, O(json), 0, 0, "0", NULL,                            \
                    "print JSON instead of text"                                                   \
        }
#define KC_OPT_FORCE(what)                                                                         \
        {                                                                                          \
                "force", 0, NULL, KF_OPT_BOOL, O(force), 0, 0, "0", NULL, what                     \
        }

static const kf_opt_t push_opts[] = {
    KC_OPTS_CONN,
    {"name", 'n', NULL, KF_OPT_STR, O(name), 0, 0, NULL, "NAME",
     "store under this name (default: the name in the file)"},
    {"activate", 'a', NULL, KF_OPT_BOOL, O(activate), 0, 0, "0", NULL,
     "make the new version the active one"},
    KC_OPT_FORCE("with --activate: even if ensembles following NAME expect other dims"),
    KC_OPT_JSON,
    {NULL},
};
static const kf_opt_t list_opts[] = {KC_OPTS_CONN, KC_OPT_JSON, {NULL}};
static const kf_opt_t activate_opts[] = {
    KC_OPTS_CONN,
    KC_OPT_FORCE("even if ensembles following NAME expect other dims"),
    KC_OPT_JSON,
    {NULL}};
static const kf_opt_t rm_opts[] = {
    KC_OPTS_CONN,
    KC_OPT_FORCE("remove the active version, or one an ensemble pins"),
    KC_OPT_JSON,
    {NULL}};

/* Exit status for a registry result. */
static int rc_exit(mreg_rc_t rc)
{
        switch (rc) {
        case MREG_OK:
                return KC_EXIT_OK;
        case MREG_IO:
                return KC_EXIT_CONN;
        default:
                return KC_EXIT_FAIL;
        }
}

/* The blob to store: the file as it is, or re-encoded under another name. */
static int renamed_blob(const char *path, char *buf, size_t len, const char *name, char **out,
                        size_t *outlen)
{
        model_file_t f;
        char err[512];
        int rc;

        if (model_file_decode(buf, len, &f, err, sizeof(err)) != 0) {
                kc_err("model push: %s: refused: %s", path, err);
                return -1;
        }
        if (f.kind == MODEL_KIND_MLP) {
                kf_strlcpy(f.mlp->name, name, sizeof(f.mlp->name));
                rc = model_encode(f.mlp, out, outlen, err, sizeof(err));
        } else {
                kf_strlcpy(f.ens->name, name, sizeof(f.ens->name));
                rc = model_ens_encode(f.ens, out, outlen, err, sizeof(err));
        }
        model_file_clear(&f);
        if (rc != 0)
                kc_err("model push: %s as '%s': %s", path, name, err);
        return rc;
}

static int cmd_push(int argc, char **argv)
{
        kc_conf_t c = {0};
        char *buf = NULL, *blob = NULL, err[1024], sha[MREG_SHA256_HEX];
        size_t len = 0, blen = 0;
        redisContext *r = NULL;
        model_file_t f = {0};
        uint32_t version = 0;
        const char *name;
        int first, rc = KC_EXIT_USAGE;
        mreg_rc_t mrc;

        first = kc_parse(push_opts, &c, 0, argc, argv,
                         "model push FILE [--name NAME] [--activate]\n\nValidates a model file "
                         "and stores it in the registry as a new version of\nits model; the "
                         "registry assigns the version.  Workers are told at once.");
        if (first != argc - 1) {
                kc_err("model push: give one model file (see --help)");
                goto out;
        }
        rc = KC_EXIT_FAIL;
        if (kf_file_read(argv[first], MREG_MAX_BLOB, &buf, &len, err, sizeof(err)) != 0) {
                kc_err("model push: %s", err);
                goto out;
        }
        blob = buf;
        blen = len;
        if (model_file_decode(buf, len, &f, err, sizeof(err)) != 0) {
                kc_err("model push: %s: refused: %s", argv[first], err);
                goto out;
        }
        name = f.kind == MODEL_KIND_MLP ? f.mlp->name : f.ens->name;
        if (c.name && strcmp(c.name, name) != 0) {
                if (!job_name_valid(c.name, strlen(c.name), JOB_MODEL_MAX)) {
                        kc_err("model push: --name '%s': 1..%d chars of [A-Za-z0-9._:-]", c.name,
                               JOB_MODEL_MAX);
                        rc = KC_EXIT_USAGE;
                        goto out;
                }
                if (renamed_blob(argv[first], buf, len, c.name, &blob, &blen) != 0)
                        goto out;
                name = c.name;
        }
        r = kc_redis(&c);
        mrc = mreg_push(r, c.prefix, name, blob, blen, c.activate, c.force, &version, err,
                        sizeof(err));
        if (mrc != MREG_OK) {
                kc_err("model push: %s: %s", argv[first], err);
                rc = rc_exit(mrc);
                goto out;
        }
        mreg_sha256_hex(blob, blen, sha);
        if (c.json) {
                json_t *o =
                    json_pack("{s:s,s:i,s:b,s:I,s:s}", "name", name, "version", (json_int_t)version,
                              "active", c.activate, "size", (json_int_t)blen, "sha256", sha);
                kc_print_json(o);
                json_decref(o);
        } else {
                printf("%s version %u%s (%zu bytes, sha256 %.16s...)\n", name, version,
                       c.activate ? " pushed and active" : " pushed", blen, sha);
        }
        rc = KC_EXIT_OK;
out:
        if (blob != buf)
                free(blob);
        free(buf);
        model_file_clear(&f);
        if (r)
                redisFree(r);
        kf_config_free(push_opts, &c, NULL);
        return rc;
}

/* Unix ms as 2026-11-23T07:23:31Z. */
static const char *fmt_time(int64_t ms, char *buf, size_t size)
{
        time_t t = (time_t)(ms / 1000);
        struct tm tm;
        if (!gmtime_r(&t, &tm) || !strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm))
                kf_strlcpy(buf, "-", size);
        return buf;
}

static json_t *version_json(const mreg_version_t *v)
{
        json_t *o = json_pack("{s:i,s:s,s:i,s:i,s:I,s:s,s:I}", "version", (json_int_t)v->version,
                              "kind", v->kind == MODEL_KIND_MLP ? "mlp" : "ensemble", "input_dim",
                              (json_int_t)v->input_dim, "output_dim", (json_int_t)v->output_dim,
                              "size", (json_int_t)v->size, "sha256", v->sha256, "created",
                              (json_int_t)v->created_ms);
        if (v->kind == MODEL_KIND_MLP) {
                json_object_set_new(o, "layers", json_integer(v->layers));
        } else {
                json_t *m = v->members ? json_loads(v->members, 0, NULL) : NULL;
                json_object_set_new(o, "members", m ? m : json_array());
        }
        return o;
}

static json_t *meta_json(const mreg_meta_t *m)
{
        json_t *hist = json_array(), *vers = json_array();
        for (uint32_t i = 0; i < m->n_history; i++)
                json_array_append_new(hist, json_integer(m->history[i]));
        for (uint32_t i = 0; i < m->n_versions; i++)
                json_array_append_new(vers, version_json(&m->versions[i]));
        return json_pack("{s:s,s:i,s:i,s:o,s:o}", "name", m->name, "active", (json_int_t)m->active,
                         "last_version", (json_int_t)m->next, "history", hist, "versions", vers);
}

/* "0.5 x a v1 + 0.25 x softmax(b (active))" from the members JSON: the
 * ensemble's formula, in the order it is computed. */
static void members_str(const char *members, char *buf, size_t size)
{
        json_t *a = members ? json_loads(members, 0, NULL) : NULL, *m;
        size_t i, o = 0;

        buf[0] = '\0';
        json_array_foreach(a, i, m)
        {
                json_int_t v = json_integer_value(json_object_get(m, "version"));
                char ver[32];
                if (v)
                        snprintf(ver, sizeof(ver), " v%lld", (long long)v);
                else
                        snprintf(ver, sizeof(ver), " (active)");
                const char *act = json_string_value(json_object_get(m, "act"));
                int has_act = act && strcmp(act, "identity") != 0; /* none before v2 */
                if (o + 1 < size)
                        o += (size_t)snprintf(
                            buf + o, size - o, "%s%g x %s%s%s%s%s", i ? " + " : "",
                            json_number_value(json_object_get(m, "weight")), has_act ? act : "",
                            has_act ? "(" : "", json_string_value(json_object_get(m, "model")), ver,
                            has_act ? ")" : "");
        }
        json_decref(a);
}

static void print_show(const mreg_meta_t *m)
{
        char t[32], mem[1024];
        int ens = 0;

        printf("model     %s\n", m->name);
        if (m->active)
                printf("active    %u\n", m->active);
        else
                printf("active    none\n");
        printf("rollback  ");
        if (m->n_history == 0)
                printf("none\n");
        else
                printf("%u\n", m->history[m->n_history - 1]);
        printf("versions  %u (numbers up to %u given out; never reused)\n\n", m->n_versions,
               m->next);
        printf("  %-8s %-9s %-13s %-7s %10s  %-20s  %s\n", "VERSION", "KIND", "DIMS", "LAYERS",
               "BYTES", "CREATED", "SHA256");
        for (uint32_t i = 0; i < m->n_versions; i++) {
                const mreg_version_t *v = &m->versions[i];
                char dims[32], layers[16];
                snprintf(dims, sizeof(dims), "%u->%u", v->input_dim, v->output_dim);
                snprintf(layers, sizeof(layers), "%u", v->layers);
                printf("%c %-8u %-9s %-13s %-7s %10llu  %-20s  %.16s...\n",
                       v->version == m->active ? '*' : ' ', v->version,
                       v->kind == MODEL_KIND_MLP ? "mlp" : "ensemble", dims,
                       v->kind == MODEL_KIND_MLP ? layers : "-", (unsigned long long)v->size,
                       fmt_time(v->created_ms, t, sizeof(t)), v->sha256);
                if (v->kind == MODEL_KIND_ENSEMBLE) {
                        members_str(v->members, mem, sizeof(mem));
                        printf("           output = %s\n", mem);
                        ens = 1;
                }
        }
        if (ens)
                printf("\nAn ensemble's output is the weighted sum of its members' outputs, each "
                       "after its act\n(if any); a job's softmax, argmax or topk apply to that "
                       "sum.\n");
}

static int cmd_show(int argc, char **argv)
{
        kc_conf_t c = {0};
        redisContext *r;
        mreg_meta_t m;
        char err[512];
        int first, rc;
        mreg_rc_t mrc;

        first = kc_parse(list_opts, &c, 0, argc, argv,
                         "model show NAME [--json]\n\nPrints a model's versions, its active "
                         "version and where rollback goes.");
        if (first != argc - 1) {
                kc_err("model show: give one model name");
                kf_config_free(list_opts, &c, NULL);
                return KC_EXIT_USAGE;
        }
        r = kc_redis(&c);
        mrc = mreg_meta_get(r, c.prefix, argv[first], &m, err, sizeof(err));
        if (mrc != MREG_OK) {
                kc_err("model show: %s", err);
                rc = rc_exit(mrc);
        } else {
                if (c.json) {
                        json_t *o = meta_json(&m);
                        kc_print_json(o);
                        json_decref(o);
                } else {
                        print_show(&m);
                }
                mreg_meta_free(&m);
                rc = KC_EXIT_OK;
        }
        redisFree(r);
        kf_config_free(list_opts, &c, NULL);
        return rc;
}

static int cmd_list(int argc, char **argv)
{
        kc_conf_t c = {0};
        redisContext *r;
        char **names = NULL, err[512];
        size_t n = 0;
        json_t *all = NULL;
        int first, rc = KC_EXIT_OK;
        mreg_rc_t mrc;

        first = kc_parse(list_opts, &c, 0, argc, argv,
                         "model list [--json]\n\nLists the models in the registry.");
        if (first != argc) {
                kc_err("model list: takes no arguments");
                kf_config_free(list_opts, &c, NULL);
                return KC_EXIT_USAGE;
        }
        r = kc_redis(&c);
        mrc = mreg_names(r, c.prefix, &names, &n, err, sizeof(err));
        if (mrc != MREG_OK) {
                kc_err("model list: %s", err);
                rc = rc_exit(mrc);
                goto out;
        }
        if (c.json)
                all = json_array();
        else
                printf("%-24s %-7s %-9s %-13s %s\n", "NAME", "ACTIVE", "KIND", "DIMS", "VERSIONS");
        for (size_t i = 0; i < n; i++) {
                const mreg_version_t *a;
                char vers[256], dims[32], act[16];
                mreg_meta_t m;

                mrc = mreg_meta_get(r, c.prefix, names[i], &m, err, sizeof(err));
                if (mrc == MREG_NOT_FOUND)
                        continue; /* removed meanwhile */
                if (mrc != MREG_OK) {
                        kc_err("model list: %s", err);
                        rc = rc_exit(mrc);
                        if (mrc == MREG_IO)
                                goto out;
                        continue;
                }
                if (c.json) {
                        json_array_append_new(all, meta_json(&m));
                        mreg_meta_free(&m);
                        continue;
                }
                a = mreg_meta_version(&m, m.active);
                mreg_meta_versions_str(&m, vers, sizeof(vers));
                snprintf(act, sizeof(act), "%u", m.active);
                if (a)
                        snprintf(dims, sizeof(dims), "%u->%u", a->input_dim, a->output_dim);
                printf("%-24s %-7s %-9s %-13s %s\n", m.name, m.active ? act : "-",
                       a ? (a->kind == MODEL_KIND_MLP ? "mlp" : "ensemble") : "-", a ? dims : "-",
                       vers);
                mreg_meta_free(&m);
        }
        if (c.json) {
                json_t *o = json_pack("{s:O}", "models", all);
                kc_print_json(o);
                json_decref(o);
        }
out:
        json_decref(all);
        mreg_names_free(names, n);
        redisFree(r);
        kf_config_free(list_opts, &c, NULL);
        return rc;
}

static int parse_version(const char *cmd, const char *s, uint32_t *v)
{
        int64_t x;
        if (kf_parse_i64(s, 1, UINT32_MAX, &x) != 0) {
                kc_err("model %s: '%s' is not a version (1..%u)", cmd, s, UINT32_MAX);
                return -1;
        }
        *v = (uint32_t)x;
        return 0;
}

/* activate NAME VERSION, rollback NAME, rm NAME VERSION. */
static int cmd_change(int argc, char **argv)
{
        const char *cmd = argv[0];
        int is_rollback = !strcmp(cmd, "rollback"), is_rm = !strcmp(cmd, "rm");
        const kf_opt_t *opts = is_rm ? rm_opts : activate_opts;
        kc_conf_t c = {0};
        redisContext *r;
        uint32_t version = 0, from = 0, to = 0;
        char err[1024];
        int first, rc;
        mreg_rc_t mrc;
        json_t *o;

        first = kc_parse(opts, &c, 0, argc, argv,
                         is_rollback ? "model rollback NAME [--force]\n\nMakes the version that "
                                       "was active before the current one active again;\nrepeat "
                                       "to go further back."
                         : is_rm     ? "model rm NAME VERSION [--force]\n\nDeletes one version. "
                                       "Refused for the active version and for versions\nan "
                                       "ensemble pins, unless --force.  Version numbers are never "
                                       "reused."
                                     : "model activate NAME VERSION [--force]\n\nMakes VERSION "
                                       "the active version: jobs without a version use it.");
        if (argc - first != (is_rollback ? 1 : 2) ||
            (!is_rollback && parse_version(cmd, argv[first + 1], &version) != 0)) {
                kc_err("model %s: expected NAME%s (see --help)", cmd,
                       is_rollback ? "" : " VERSION");
                kf_config_free(opts, &c, NULL);
                return KC_EXIT_USAGE;
        }
        r = kc_redis(&c);
        if (is_rollback)
                mrc =
                    mreg_rollback(r, c.prefix, argv[first], c.force, &from, &to, err, sizeof(err));
        else if (is_rm)
                mrc = mreg_rm(r, c.prefix, argv[first], version, c.force, err, sizeof(err));
        else
                mrc = mreg_activate(r, c.prefix, argv[first], version, c.force, &from, err,
                                    sizeof(err));
        rc = rc_exit(mrc);
        if (mrc != MREG_OK) {
                kc_err("model %s: %s", cmd, err);
        } else if (c.json) {
                if (is_rm)
                        o = json_pack("{s:s,s:i,s:b}", "name", argv[first], "removed",
                                      (json_int_t)version, "ok", 1);
                else
                        o = json_pack("{s:s,s:i,s:i}", "name", argv[first], "active",
                                      (json_int_t)(is_rollback ? to : version), "previous",
                                      (json_int_t)from);
                kc_print_json(o);
                json_decref(o);
        } else if (is_rm) {
                printf("%s version %u removed\n", argv[first], version);
        } else if (is_rollback) {
                printf("%s rolled back: version %u active (was %u)\n", argv[first], to, from);
        } else if (from == version) {
                printf("%s version %u was already active\n", argv[first], version);
        } else {
                printf("%s version %u active (was %s%.0u)\n", argv[first], version,
                       from ? "" : "none", from);
        }
        redisFree(r);
        kf_config_free(opts, &c, NULL);
        return rc;
}

int kc_cmd_registry(int argc, char **argv)
{
        if (!strcmp(argv[0], "push"))
                return cmd_push(argc, argv);
        if (!strcmp(argv[0], "list"))
                return cmd_list(argc, argv);
        if (!strcmp(argv[0], "show"))
                return cmd_show(argc, argv);
        return cmd_change(argc, argv);
}
