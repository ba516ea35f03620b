/* model_ensemble.c - ensembles: the members array of an ensemble file, its
 * encoder, building one from resolved members, and its forward pass. */
#include "model.h"

#include <float.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_util.h"
#include "model_int.h"
#include "mp_pack.h"

/* model_math.c calls this for kind ensemble; declared there. */
int model_ens_forward(const model_t *m, const float *X, uint32_t rows, float *Y,
                      model_scratch_t *s);

enum { M_MODEL, M_VERSION, M_WEIGHT, M__CNT };
static const char *const model_member_fields[M__CNT] = {"model", "version", "weight"};

void model_ens_spec_free(model_ens_spec_t *spec)
{
        if (!spec)
                return;
        free(spec->members);
        free(spec);
}

/* A weight: any msgpack number that is finite as a float32. */
static int model_member_weight(const msgpack_object *o, uint32_t i, double *out, char *errstr,
                               size_t errstr_size)
{
        double w;

        switch (o->type) {
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
                w = (double)o->via.u64;
                break;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                w = (double)o->via.i64;
                break;
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                w = o->via.f64;
                break;
        default:
                return kf_errf(errstr, errstr_size, "member %u: weight must be a number", i);
        }
        if (!isfinite(w) || fabs(w) > FLT_MAX)
                return kf_errf(errstr, errstr_size, "member %u: weight %g is not a finite float32",
                               i, w);
        *out = w;
        return 0;
}

model_ens_spec_t *model_ens_spec_from_object(const msgpack_object *members, const char *name,
                                             size_t name_len, uint32_t input_dim,
                                             uint32_t output_dim, char *errstr, size_t errstr_size)
{
        model_ens_spec_t *spec = NULL;
        uint32_t n;
        char q[64], ctx[32];

        if (!members) {
                kf_errf(errstr, errstr_size, "missing members");
                return NULL;
        }
        if (members->type != MSGPACK_OBJECT_ARRAY) {
                kf_errf(errstr, errstr_size, "members must be an array");
                return NULL;
        }
        n = members->via.array.size;
        if (n == 0 || n > MODEL_MAX_MEMBERS) {
                kf_errf(errstr, errstr_size, "%u members, expected 1..%d", n, MODEL_MAX_MEMBERS);
                return NULL;
        }
        if (!(spec = calloc(1, sizeof(*spec))) ||
            !(spec->members = calloc(n, sizeof(*spec->members)))) {
                kf_errf(errstr, errstr_size, "out of memory");
                goto err;
        }
        memcpy(spec->name, name, name_len); /* validated by the caller: <= JOB_MODEL_MAX */
        spec->name[name_len] = '\0';
        spec->input_dim = input_dim;
        spec->output_dim = output_dim;
        spec->n_members = n;

        for (uint32_t i = 0; i < n; i++) {
                const msgpack_object *mo = &members->via.array.ptr[i], *mf[M__CNT];
                model_member_spec_t *ms = &spec->members[i];

                if (mo->type != MSGPACK_OBJECT_MAP) {
                        kf_errf(errstr, errstr_size, "member %u is not a map", i);
                        goto err;
                }
                snprintf(ctx, sizeof(ctx), "member %u: ", i);
                if (model_map_fields(mo, model_member_fields, M__CNT, mf, ctx, errstr,
                                     errstr_size) != 0)
                        goto err;
                if (!mf[M_MODEL]) {
                        kf_errf(errstr, errstr_size, "member %u: missing model", i);
                        goto err;
                }
                if (mf[M_MODEL]->type != MSGPACK_OBJECT_STR ||
                    !job_name_valid(mf[M_MODEL]->via.str.ptr, mf[M_MODEL]->via.str.size,
                                    JOB_MODEL_MAX)) {
                        kf_errf(errstr, errstr_size,
                                "member %u: model \"%s\" is not a name of 1..%d chars of "
                                "[A-Za-z0-9._:-]",
                                i,
                                mf[M_MODEL]->type == MSGPACK_OBJECT_STR
                                    ? model_quote(mf[M_MODEL]->via.str.ptr,
                                                  mf[M_MODEL]->via.str.size, q, sizeof(q))
                                    : "(not a string)",
                                JOB_MODEL_MAX);
                        goto err;
                }
                memcpy(ms->model, mf[M_MODEL]->via.str.ptr, mf[M_MODEL]->via.str.size);
                ms->model[mf[M_MODEL]->via.str.size] = '\0';
                if (mf[M_VERSION]) {
                        if (mf[M_VERSION]->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                            mf[M_VERSION]->via.u64 > UINT32_MAX) {
                                kf_errf(errstr, errstr_size,
                                        "member %u: version must be an integer in 0..%u", i,
                                        UINT32_MAX);
                                goto err;
                        }
                        ms->version = (uint32_t)mf[M_VERSION]->via.u64;
                }
                if (!mf[M_WEIGHT]) {
                        kf_errf(errstr, errstr_size, "member %u: missing weight", i);
                        goto err;
                }
                if (model_member_weight(mf[M_WEIGHT], i, &ms->weight, errstr, errstr_size) != 0)
                        goto err;
                /* Pinned to an older version of itself is a blend of old and
                 * new; following its own active version never ends. */
                if (ms->version == 0 && !strcmp(ms->model, spec->name)) {
                        kf_errf(errstr, errstr_size,
                                "member %u: the ensemble '%s' cannot follow its own active "
                                "version (a cycle); pin a version",
                                i, spec->name);
                        goto err;
                }
        }
        return spec;
err:
        model_ens_spec_free(spec);
        return NULL;
}

int model_ens_encode(const model_ens_spec_t *spec, char **out, size_t *outlen, char *errstr,
                     size_t errstr_size)
{
        msgpack_sbuffer sb;
        msgpack_packer pk;
        int rc = 0;

        if (!spec || !out || !outlen)
                return kf_errf(errstr, errstr_size, "model_ens_encode: NULL argument");
        if (!job_name_valid(spec->name, strnlen(spec->name, sizeof(spec->name)), JOB_MODEL_MAX))
                return kf_errf(errstr, errstr_size,
                               "bad name: must be 1..%d chars of [A-Za-z0-9._:-]", JOB_MODEL_MAX);
        if (spec->input_dim == 0 || spec->input_dim > MODEL_MAX_DIM || spec->output_dim == 0 ||
            spec->output_dim > MODEL_MAX_DIM)
                return kf_errf(errstr, errstr_size,
                               "input_dim %u or output_dim %u out of range 1..%u", spec->input_dim,
                               spec->output_dim, MODEL_MAX_DIM);
        if (spec->n_members == 0 || spec->n_members > MODEL_MAX_MEMBERS || !spec->members)
                return kf_errf(errstr, errstr_size, "%u members, expected 1..%d", spec->n_members,
                               MODEL_MAX_MEMBERS);
        for (uint32_t i = 0; i < spec->n_members; i++) {
                const model_member_spec_t *ms = &spec->members[i];
                if (!job_name_valid(ms->model, strnlen(ms->model, sizeof(ms->model)),
                                    JOB_MODEL_MAX))
                        return kf_errf(errstr, errstr_size, "member %u: bad model name", i);
                if (!isfinite(ms->weight) || fabs(ms->weight) > FLT_MAX)
                        return kf_errf(errstr, errstr_size,
                                       "member %u: weight %g is not a finite float32", i,
                                       ms->weight);
                if (ms->version == 0 && !strcmp(ms->model, spec->name))
                        return kf_errf(errstr, errstr_size,
                                       "member %u: the ensemble '%s' cannot follow its own "
                                       "active version (a cycle); pin a version",
                                       i, spec->name);
        }

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        rc |= msgpack_pack_map(&pk, 7);
        rc |= mp_pack_kv_str(&pk, "format", MODEL_FORMAT_NAME);
        rc |= mp_pack_kv_u64(&pk, "v", MODEL_FORMAT_V);
        rc |= mp_pack_kv_str(&pk, "name", spec->name);
        rc |= mp_pack_kv_str(&pk, "kind", "ensemble");
        rc |= mp_pack_kv_u64(&pk, "input_dim", spec->input_dim);
        rc |= mp_pack_kv_u64(&pk, "output_dim", spec->output_dim);
        rc |= mp_pack_cstr(&pk, "members");
        rc |= msgpack_pack_array(&pk, spec->n_members);
        for (uint32_t i = 0; i < spec->n_members && rc == 0; i++) {
                const model_member_spec_t *ms = &spec->members[i];
                rc |= msgpack_pack_map(&pk, ms->version ? 3 : 2);
                rc |= mp_pack_kv_str(&pk, "model", ms->model);
                if (ms->version)
                        rc |= mp_pack_kv_u64(&pk, "version", ms->version);
                rc |= mp_pack_cstr(&pk, "weight");
                rc |= msgpack_pack_double(&pk, ms->weight);
        }
        if (rc != 0) {
                msgpack_sbuffer_destroy(&sb);
                return kf_errf(errstr, errstr_size, "out of memory encoding ensemble %s",
                               spec->name);
        }
        *out = sb.data;
        *outlen = sb.size;
        return 0;
}

/* Adds weight * mlp to the flat member list, merging a repeated MLP. */
static int model_ens_add(model_member_t *mem, uint32_t *n, model_t *mlp, double weight,
                         const char *ens_name, char *errstr, size_t errstr_size)
{
        for (uint32_t i = 0; i < *n; i++) {
                if (mem[i].model == mlp) {
                        double w = (double)mem[i].weight + weight;
                        if (!isfinite(w) || fabs(w) > FLT_MAX)
                                return kf_errf(errstr, errstr_size,
                                               "ensemble '%s': the weights of '%s' add up to "
                                               "more than a float32 holds",
                                               ens_name, mlp->name);
                        mem[i].weight = (float)w;
                        return 0;
                }
        }
        if (*n == MODEL_MAX_MEMBERS)
                return kf_errf(errstr, errstr_size,
                               "ensemble '%s': more than %d distinct models once nested "
                               "ensembles are expanded",
                               ens_name, MODEL_MAX_MEMBERS);
        if (!isfinite(weight) || fabs(weight) > FLT_MAX)
                return kf_errf(errstr, errstr_size,
                               "ensemble '%s': the weight of '%s' overflows a float32", ens_name,
                               mlp->name);
        mem[*n].model = mlp;
        mem[*n].weight = (float)weight;
        (*n)++;
        return 0;
}

model_t *model_ens_build(const model_ens_spec_t *spec, model_t *const *resolved, char *errstr,
                         size_t errstr_size)
{
        model_member_t mem[MODEL_MAX_MEMBERS];
        uint32_t n = 0;
        model_t *m;

        for (uint32_t i = 0; i < spec->n_members; i++) {
                const model_t *r = resolved[i];
                if (!r) {
                        kf_errf(errstr, errstr_size, "member %u ('%s') is not resolved", i,
                                spec->members[i].model);
                        return NULL;
                }
                if (r->input_dim != spec->input_dim || r->output_dim != spec->output_dim) {
                        kf_errf(errstr, errstr_size,
                                "member %u: model '%s' version %u is %u->%u, the ensemble '%s' "
                                "is %u->%u",
                                i, r->name, r->version, r->input_dim, r->output_dim, spec->name,
                                spec->input_dim, spec->output_dim);
                        return NULL;
                }
                if (r->kind == MODEL_KIND_MLP) {
                        if (model_ens_add(mem, &n, (model_t *)r, spec->members[i].weight,
                                          spec->name, errstr, errstr_size) != 0)
                                return NULL;
                        continue;
                }
                for (uint32_t j = 0; j < r->n_members; j++) {
                        if (model_ens_add(mem, &n, r->members[j].model,
                                          spec->members[i].weight * r->members[j].weight,
                                          spec->name, errstr, errstr_size) != 0)
                                return NULL;
                }
        }

        if (!(m = calloc(1, sizeof(*m))) || !(m->members = calloc(n, sizeof(*m->members)))) {
                free(m);
                kf_errf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        kf_strlcpy(m->name, spec->name, sizeof(m->name));
        m->kind = MODEL_KIND_ENSEMBLE;
        m->input_dim = spec->input_dim;
        m->output_dim = spec->output_dim;
        m->refcnt = 1;
        m->n_members = n;
        for (uint32_t i = 0; i < n; i++) {
                m->members[i].model = model_ref(mem[i].model);
                m->members[i].weight = mem[i].weight;
                m->flops_per_row += mem[i].model->flops_per_row;
                m->weight_bytes += mem[i].model->weight_bytes;
                if (mem[i].model->max_width > m->max_width)
                        m->max_width = mem[i].model->max_width;
        }
        return m;
}

int model_ens_forward(const model_t *m, const float *X, uint32_t rows, float *Y, model_scratch_t *s)
{
        size_t n = (size_t)rows * m->output_dim;

        if (s->ecap < n) {
                void *e = NULL;
                if (posix_memalign(&e, 64, n * sizeof(float)) != 0)
                        return -1;
                free(s->e);
                s->e = e;
                s->ecap = n;
        }
        /* Members are MLPs (build flattens nested ensembles), so their
         * forward passes use scratch a and b but never e. */
        for (uint32_t i = 0; i < m->n_members; i++) {
                const float w = m->members[i].weight;
                float *e = s->e;
                if (model_forward(m->members[i].model, X, rows, e, s) != 0)
                        return -1;
                if (i == 0) {
                        for (size_t k = 0; k < n; k++)
                                Y[k] = w * e[k];
                } else {
                        for (size_t k = 0; k < n; k++)
                                Y[k] += w * e[k];
                }
        }
        return 0;
}
