/* test_tenancy.c - protocol v2's promises between users, against a real
 * redis-server, the dev broker and a real worker: names chosen to collide
 * cannot reach another user's keys, two users may use the same job id, a job
 * is charged once even after its result expired or was deleted, and damaged
 * counters never let a result through without its charge.
 *
 * Keys are spelled here from docs/protocol.md ("Redis keys"), jobs packed
 * with msgpack-c directly: nothing is taken from the code under test. */
/* cmocka.h needs these first, in this order. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../harness/kt_job.h"
#include "../harness/stack.h"

typedef struct tt_s {
        kt_stack_t stack;
        char models[300];
        redisContext *c;
} tt_t;

static int setup(void **state)
{
        tt_t *t = calloc(1, sizeof(*t));

        assert_non_null(t);
        assert_int_equal(kt_stack_init(&t->stack), 0);
        assert_int_equal(kt_stack_start_redis(&t->stack, NULL), 0);
        assert_int_equal(kt_stack_start_broker(&t->stack, 1, 2), 0);
        assert_int_equal(kt_stack_models_dir(&t->stack, t->models, sizeof(t->models)), 0);
        assert_int_equal(kt_write_lin_model(t->models), 0); /* y = (2 x0 + 1, 3 x1 + 1) */
        t->c = kt_stack_redis(&t->stack);
        assert_non_null(t->c);
        {
                const char *argv[] = {"kinfer-worker", "--models", t->models,
                                      "--worker-id",   "ten-w1",   NULL};
                assert_true(kt_stack_spawn(&t->stack, "ten-w1", argv, NULL) >= 0);
        }
        *state = t;
        return 0;
}

static int teardown(void **state)
{
        tt_t *t = *state;
        redisFree(t->c);
        kt_stack_stop(&t->stack);
        free(t);
        return 0;
}

static void pk_s(msgpack_packer *pk, const char *s)
{
        msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* A v2 job of one row (x, -x) for model, with an inbox and, if ttl > 0, a
 * ttl; produced with the user as the key.  The same arguments produce the
 * same bytes: producing twice is what a redelivery looks like to a worker. */
static void produce(tt_t *t, const char *user, const char *id, const char *model, float x,
                    const char *inbox, unsigned ttl)
{
        msgpack_sbuffer sb;
        msgpack_packer pk;
        kt_msg_t m;

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 6 + (ttl > 0));
        pk_s(&pk, "v");
        msgpack_pack_uint8(&pk, 2);
        pk_s(&pk, "id");
        pk_s(&pk, id);
        pk_s(&pk, "user");
        pk_s(&pk, user);
        pk_s(&pk, "model");
        pk_s(&pk, model);
        pk_s(&pk, "inbox");
        pk_s(&pk, inbox);
        pk_s(&pk, "input");
        msgpack_pack_array(&pk, 1);
        msgpack_pack_array(&pk, 2);
        msgpack_pack_float(&pk, x);
        msgpack_pack_float(&pk, -x);
        if (ttl) {
                pk_s(&pk, "ttl");
                msgpack_pack_uint32(&pk, ttl);
        }
        m = (kt_msg_t){user, sb.data, sb.size, -1};
        assert_int_equal(kt_produce(t->stack.brokers, "kinfer.jobs", &m, 1), 0);
        msgpack_sbuffer_destroy(&sb);
}

/* Pops ids from user's inbox until id has come n times in all (counting in
 * *seen across calls); fails after timeout_ms. */
static void await_announce(tt_t *t, const char *user, const char *inbox, const char *id, int n,
                           int *seen, int timeout_ms)
{
        long long until = kt_now_ms() + timeout_ms;
        while (*seen < n) {
                redisReply *r = redisCommand(t->c, "BLPOP kinfer:{%s}:inbox:%s 1", user, inbox);
                assert_non_null(r);
                if (r->type == REDIS_REPLY_ARRAY && !strcmp(r->element[1]->str, id))
                        (*seen)++;
                freeReplyObject(r);
                if (*seen < n && kt_now_ms() > until) {
                        kt_stack_fail(&t->stack);
                        fail_msg("job %s of %s: announced %d times, want %d", id, user, *seen, n);
                }
        }
}

/* Every key of user, each with its DUMP, sorted: a picture of all the
 * user's state that any change would alter. */
static char *user_state(tt_t *t, const char *user)
{
        redisReply *keys = redisCommand(t->c, "KEYS kinfer:{%s}:*", user);
        size_t cap = 1 << 16, len = 0;
        char *out = malloc(cap);
        assert_non_null(keys);
        assert_non_null(out);
        out[0] = '\0';
        /* KEYS order is arbitrary: sort by name first */
        for (size_t i = 0; i < keys->elements; i++)
                for (size_t j = i + 1; j < keys->elements; j++)
                        if (strcmp(keys->element[i]->str, keys->element[j]->str) > 0) {
                                redisReply *tmp = keys->element[i];
                                keys->element[i] = keys->element[j];
                                keys->element[j] = tmp;
                        }
        for (size_t i = 0; i < keys->elements; i++) {
                redisReply *d = redisCommand(t->c, "DUMP %s", keys->element[i]->str);
                assert_non_null(d);
                while (len + keys->element[i]->len + 2 * d->len + 8 > cap)
                        assert_non_null(out = realloc(out, cap *= 2));
                len += (size_t)sprintf(out + len, "%s=", keys->element[i]->str);
                for (size_t k = 0; k < d->len; k++)
                        len += (size_t)sprintf(out + len, "%02x", (unsigned char)d->str[k]);
                out[len++] = '\n';
                out[len] = '\0';
                freeReplyObject(d);
        }
        freeReplyObject(keys);
        return out;
}

/* A victim with a quota, usage and results; then users whose names are
 * the victim's name followed by the separator and the words of its keys,
 * jobs reusing the victim's ids, and models named after counter fields.
 * Nothing of the victim's changes; each attacker has only its own keys;
 * names with braces are dead-lettered, never written. */
static void test_colliding_names(void **state)
{
        tt_t *t = *state;
        static const char *const attackers[] = {
            "ten:usage", "ten:quota", "ten:result", "ten:usage:window",
            "ten:",      "kinfer:",   "ten:inbox",  "ten:charged"};
        static const char *const models[] = {"lin", "lin:jobs", "jobs:lin", "lin:usage"};
        const char *set[] = {"kinfer", "quota", "set", "ten", "--jobs", "3", NULL};
        char *before, *after, *out = NULL;
        int seen = 0;

        assert_int_equal(kt_stack_run(&t->stack, set, NULL, NULL, 30000), 0);
        produce(t, "ten", "t-1", "lin", 1, "ib", 0);
        produce(t, "ten", "t-2", "lin", 2, "ib", 0);
        await_announce(t, "ten", "ib", "t-2", 1, &seen, 60000);
        /* the inbox is drained: the picture holds results, counters, records */
        before = user_state(t, "ten");
        assert_non_null(strstr(before, "kinfer:{ten}:result:t-1="));
        assert_non_null(strstr(before, "kinfer:{ten}:usage:models="));

        for (size_t a = 0; a < sizeof(attackers) / sizeof(attackers[0]); a++) {
                for (size_t m = 0; m < sizeof(models) / sizeof(models[0]); m++) {
                        char id[32];
                        snprintf(id, sizeof(id), "t-%zu", m + 1); /* the victim's ids too */
                        produce(t, attackers[a], id, models[m], 5, "ib", 0);
                }
        }
        /* braces: no address at all */
        produce(t, "ten}", "t-1", "lin", 5, "ib", 0);
        produce(t, "{ten}", "t-1", "lin", 5, "ib", 0);
        produce(t, "x", "t-1", "lin", 5, "}:result:t-1", 0); /* a hostile inbox name */
        for (size_t a = 0; a < sizeof(attackers) / sizeof(attackers[0]); a++) {
                int s = 0;
                await_announce(t, attackers[a], "ib", "t-4", 1, &s, 60000);
        }
        {
                /* the bad inbox name: an error result for x's own job */
                kf_result_t r;
                long long until = kt_now_ms() + 30000;
                int rc;
                while ((rc = kt_result_get(t->c, "x", "t-1", &r)) == 0 && kt_now_ms() < until)
                        kt_sleep_ms(50);
                assert_int_equal(rc, 1);
                assert_false(r.ok);
                assert_string_equal(r.error, "bad_request");
                assert_non_null(strstr(r.message, "field 'inbox'"));
                kf_result_clear(&r);
        }
        /* and the dead-letter count says both brace names were refused */
        {
                long long until = kt_now_ms() + 30000;
                redisReply *r;
                for (;;) {
                        r = redisCommand(t->c, "HGET kinfer:stats undecodable");
                        if ((r->type == REDIS_REPLY_STRING && atoll(r->str) >= 2) ||
                            kt_now_ms() > until)
                                break;
                        freeReplyObject(r);
                        kt_sleep_ms(50);
                }
                assert_int_equal(r->type, REDIS_REPLY_STRING);
                assert_int_equal(atoll(r->str), 2);
                freeReplyObject(r);
        }

        after = user_state(t, "ten");
        if (strcmp(before, after))
                fail_msg("the victim's keys changed:\n--- before\n%s--- after\n%s", before, after);
        /* no key anywhere has a brace inside the user part but the valid ones */
        {
                redisReply *k = redisCommand(t->c, "KEYS *ten}*");
                for (size_t i = 0; i < k->elements; i++)
                        if (strncmp(k->element[i]->str, "kinfer:{ten}:", 13) &&
                            strncmp(k->element[i]->str, "kinfer:{ten:", 12) &&
                            strncmp(k->element[i]->str, "kinfer:{kinfer:}", 16))
                                fail_msg("unexpected key %s", k->element[i]->str);
                freeReplyObject(k);
        }
        /* each attacker was charged for its own lin job only, its own results */
        for (size_t a = 0; a < sizeof(attackers) / sizeof(attackers[0]); a++) {
                kf_result_t r;
                assert_int_equal(kt_usage(t->c, attackers[a], NULL, "jobs"), 1);
                assert_int_equal(kt_usage(t->c, attackers[a], NULL, "errors"), 3);
                assert_int_equal(kt_usage(t->c, attackers[a], "models", "jobs:lin"), 1);
                assert_int_equal(kt_usage(t->c, attackers[a], "models", "errors:lin:jobs"), 1);
                assert_int_equal(kt_result_get(t->c, attackers[a], "t-1", &r), 1);
                assert_true(r.ok);
                assert_true(r.output[0] == 11.0f); /* 2*5+1: its own input, not ten's */
                assert_string_equal(r.user, attackers[a]);
                kf_result_clear(&r);
        }
        /* kinfer usage of the victim lists only its own model */
        {
                const char *argv[] = {"kinfer", "usage", "ten", NULL};
                assert_int_equal(kt_stack_run(&t->stack, argv, NULL, &out, 30000), 0);
                assert_non_null(strstr(out, "lifetime   jobs 2 rows 2 flops 16 errors 0"));
                assert_non_null(strstr(out, "model lin  jobs 2 rows 2 flops 16 errors 0"));
                assert_null(strstr(out, "lin:"));
                free(out);
        }
        {
                /* the model name with ':' is listed whole for the attacker */
                const char *argv[] = {"kinfer", "usage", "ten:usage", "--json", NULL};
                assert_int_equal(kt_stack_run(&t->stack, argv, NULL, &out, 30000), 0);
                assert_non_null(strstr(out, "\"lin:jobs\":{\"jobs\":0,\"rows\":0,\"flops\":0,"
                                            "\"errors\":1}"));
                free(out);
        }
        free(before);
        free(after);
}

/* Two users submit the same job id: each gets their own result, computed
 * from their own input, and each is charged for their own job. */
static void test_same_id_two_users(void **state)
{
        tt_t *t = *state;
        int sa = 0, sb = 0;
        kf_result_t r;

        produce(t, "alice", "shared-1", "lin", 1, "ib", 0);
        produce(t, "bob", "shared-1", "lin", 7, "ib", 0);
        await_announce(t, "alice", "ib", "shared-1", 1, &sa, 60000);
        await_announce(t, "bob", "ib", "shared-1", 1, &sb, 60000);
        assert_int_equal(kt_result_get(t->c, "alice", "shared-1", &r), 1);
        assert_true(r.ok && r.output[0] == 3.0f && r.output[1] == -2.0f);
        kf_result_clear(&r);
        assert_int_equal(kt_result_get(t->c, "bob", "shared-1", &r), 1);
        assert_true(r.ok && r.output[0] == 15.0f && r.output[1] == -20.0f);
        kf_result_clear(&r);
        assert_int_equal(kt_usage(t->c, "alice", NULL, "jobs"), 1);
        assert_int_equal(kt_usage(t->c, "bob", NULL, "jobs"), 1);
        /* and the same user reusing the id is a duplicate: announced, not
         * computed, not charged, the first result unchanged */
        produce(t, "alice", "shared-1", "lin", 100, "ib", 0);
        await_announce(t, "alice", "ib", "shared-1", 2, &sa, 60000);
        assert_int_equal(kt_result_get(t->c, "alice", "shared-1", &r), 1);
        assert_true(r.ok && r.output[0] == 3.0f);
        kf_result_clear(&r);
        assert_int_equal(kt_usage(t->c, "alice", NULL, "jobs"), 1);
}

/* A redelivery (the same message again) after the result expired (ttl 1 s)
 * or after the client deleted it: not computed again, not charged again. */
static void test_charge_once_after_result_gone(void **state)
{
        tt_t *t = *state;
        redisReply *r;
        int seen = 0;

        produce(t, "carol", "exp-1", "lin", 1, "ib", 1);
        produce(t, "carol", "del-1", "lin", 2, "ib", 0);
        await_announce(t, "carol", "ib", "exp-1", 1, &seen, 60000);
        seen = 0;
        await_announce(t, "carol", "ib", "del-1", 1, &seen, 60000);
        assert_int_equal(kt_usage(t->c, "carol", NULL, "jobs"), 2);
        freeReplyObject(redisCommand(t->c, "DEL kinfer:{carol}:result:del-1"));
        kt_sleep_ms(2100); /* exp-1's result has expired */
        r = redisCommand(t->c, "EXISTS kinfer:{carol}:result:exp-1 kinfer:{carol}:result:del-1");
        assert_int_equal(r->integer, 0);
        freeReplyObject(r);

        produce(t, "carol", "exp-1", "lin", 1, "ib", 1);
        produce(t, "carol", "del-1", "lin", 2, "ib", 0);
        seen = 0;
        await_announce(t, "carol", "ib", "exp-1", 1, &seen, 60000);
        seen = 0;
        await_announce(t, "carol", "ib", "del-1", 1, &seen, 60000);
        assert_int_equal(kt_usage(t->c, "carol", NULL, "jobs"), 2);
        assert_int_equal(kt_usage(t->c, "carol", NULL, "rows"), 2);
        assert_int_equal(kt_usage(t->c, "carol", NULL, "errors"), 0);
        /* nothing was written again: the client's deletion stands */
        r = redisCommand(t->c, "EXISTS kinfer:{carol}:result:exp-1 kinfer:{carol}:result:del-1");
        assert_int_equal(r->integer, 0);
        freeReplyObject(r);
        /* the charge record says why: both ids decided, as ok */
        r = redisCommand(t->c, "KEYS kinfer:{carol}:charged:*");
        assert_true(r->elements >= 1);
        {
                redisReply *v = redisCommand(t->c, "HGET %s del-1", r->element[0]->str);
                assert_string_equal(v->str, "ok");
                freeReplyObject(v);
        }
        freeReplyObject(r);
}

/* Damaged counters (a manual edit: not an integer, near overflow, the wrong
 * type): the user's jobs get internal results naming the key, nothing is
 * charged and no ok result is written, so the quota still holds; other
 * users are served; the worker logs it. */
static void test_damaged_counters(void **state)
{
        tt_t *t = *state;
        static const struct {
                const char *user, *cmd, *says;
        } cases[] = {
            {"dmg1", "HSET kinfer:{dmg1}:usage jobs abc", "field jobs holds \"abc\""},
            {"dmg2", "HSET kinfer:{dmg2}:usage flops 9999999999999999999",
             "field flops holds \"9999999999999999999\""},
            {"dmg3", "SET kinfer:{dmg3}:usage:models x",
             "kinfer:{dmg3}:usage:models is not a "
             "hash"},
            {"dmg4", "HSET kinfer:{dmg4}:usage errors 1.5", "field errors holds \"1.5\""},
        };
        const char *set[] = {"kinfer", "quota", "set", "dmg1", "--jobs", "1", NULL};
        char log[600], *text;
        FILE *fp;

        assert_int_equal(kt_stack_run(&t->stack, set, NULL, NULL, 30000), 0);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                redisReply *r = redisCommand(t->c, cases[i].cmd);
                assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
                freeReplyObject(r);
                produce(t, cases[i].user, "d-1", "lin", 1, "ib", 0);
                produce(t, cases[i].user, "d-2", "lin", 2, "ib", 0);
        }
        produce(t, "healthy", "h-1", "lin", 1, "ib", 0);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                int seen = 0;
                await_announce(t, cases[i].user, "ib", "d-2", 1, &seen, 60000);
                for (int k = 1; k <= 2; k++) {
                        kf_result_t r;
                        char id[16];
                        snprintf(id, sizeof(id), "d-%d", k);
                        assert_int_equal(kt_result_get(t->c, cases[i].user, id, &r), 1);
                        if (r.ok || strcmp(r.error, "internal") ||
                            !strstr(r.message, cases[i].says) || !strstr(r.message, "not charged"))
                                fail_msg("%s/%s: %s: %s", cases[i].user, id, r.error, r.message);
                        kf_result_clear(&r);
                }
        }
        /* nothing was charged: the edited values are as they were */
        assert_int_equal(kt_usage(t->c, "dmg1", NULL, "rows"), 0);
        assert_int_equal(kt_usage(t->c, "dmg1", NULL, "errors"), 0);
        assert_int_equal(kt_usage(t->c, "dmg2", NULL, "jobs"), 0);
        assert_int_equal(kt_usage(t->c, "dmg3", NULL, "jobs"), 0);
        assert_int_equal(kt_usage(t->c, "dmg4", NULL, "jobs"), 0);
        {
                redisReply *r = redisCommand(t->c, "KEYS kinfer:{dmg*}:usage:window:*");
                assert_int_equal(r->elements, 0);
                freeReplyObject(r);
        }
        /* a healthy user on the same worker is served and charged */
        {
                int seen = 0;
                await_announce(t, "healthy", "ib", "h-1", 1, &seen, 60000);
                assert_int_equal(kt_usage(t->c, "healthy", NULL, "jobs"), 1);
        }
        /* repaired, the user is served again, and the quota counts from here */
        freeReplyObject(redisCommand(t->c, "HDEL kinfer:{dmg1}:usage jobs"));
        produce(t, "dmg1", "d-3", "lin", 3, "ib", 0);
        produce(t, "dmg1", "d-4", "lin", 4, "ib", 0);
        {
                int seen = 0;
                kf_result_t r;
                await_announce(t, "dmg1", "ib", "d-4", 1, &seen, 60000);
                assert_int_equal(kt_result_get(t->c, "dmg1", "d-3", &r), 1);
                assert_true(r.ok);
                kf_result_clear(&r);
                assert_int_equal(kt_result_get(t->c, "dmg1", "d-4", &r), 1);
                assert_string_equal(r.error, "quota_exceeded");
                kf_result_clear(&r);
                assert_int_equal(kt_usage(t->c, "dmg1", NULL, "jobs"), 1);
        }
        snprintf(log, sizeof(log), "%s/ten-w1.log", t->stack.dir);
        fp = fopen(log, "r");
        assert_non_null(fp);
        text = calloc(1, 1 << 20);
        assert_true(fread(text, 1, (1 << 20) - 1, fp) > 0);
        fclose(fp);
        /* per job, with where it came from, and the damage itself
         * (rate-limited: one of them at least) */
        assert_non_null(strstr(text, "job d-1 of user dmg1 (kinfer.jobs/"));
        assert_non_null(strstr(text, "job d-2 of user dmg2 (kinfer.jobs/"));
        assert_non_null(strstr(text, "): answered internal, the user's usage records"));
        assert_non_null(strstr(text, "bad data in Redis: "));
        free(text);
}

/* A job with more rows than the quota allows per window can never run:
 * quota_exceeded without retry_after, saying so; a job that fits is
 * still served. */
static void test_never_fits_quota(void **state)
{
        tt_t *t = *state;
        const char *set[] = {"kinfer", "quota", "set", "big", "--rows", "2", NULL};
        const char *argv[] = {"kinfer", "submit", "--model", "lin", "--user", "big", "--id",
                              "b-3",    "--wait", "1,1",     "2,2", "3,3",    NULL};
        const char *ok[] = {"kinfer", "submit", "--model", "lin", "--user", "big",
                            "--id",   "b-2",    "--wait",  "1,1", "2,2",    NULL};
        char *out = NULL;
        assert_int_equal(kt_stack_run(&t->stack, set, NULL, NULL, 30000), 0);
        assert_int_equal(kt_stack_run(&t->stack, argv, NULL, &out, 60000), 1);
        assert_non_null(strstr(out, "\"error\":\"quota_exceeded\""));
        assert_non_null(strstr(out, "this job has 3 rows, more than the 2 rows the quota "
                                    "allows per window"));
        assert_null(strstr(out, "retry_after"));
        free(out);
        assert_int_equal(kt_stack_run(&t->stack, ok, NULL, &out, 60000), 0);
        assert_non_null(strstr(out, "\"status\":\"ok\""));
        free(out);
        assert_int_equal(kt_usage(t->c, "big", NULL, "rows"), 2);
}

/* A prefix that could move the hash tag (braces) or not fit the key
 * buffers is refused at start by both programs, before any key is built. */
static void test_prefix_refused(void **state)
{
        tt_t *t = *state;
        char long_prefix[80];
        const char *bad[] = {"a{b", "x}", long_prefix, "a*", ""};
        memset(long_prefix, 'p', 65);
        long_prefix[65] = '\0';
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                const char *w[] = {"kinfer-worker", "--models", t->models,
                                   "--prefix",      bad[i],     NULL};
                const char *g[] = {"kinfer", "get", "--user", "u", "--prefix", bad[i], "j", NULL};
                assert_int_equal(kt_stack_run(&t->stack, w, NULL, NULL, 30000), 2);
                assert_int_equal(kt_stack_run(&t->stack, g, NULL, NULL, 30000), 2);
        }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_colliding_names, setup, teardown),
            cmocka_unit_test_setup_teardown(test_same_id_two_users, setup, teardown),
            cmocka_unit_test_setup_teardown(test_charge_once_after_result_gone, setup, teardown),
            cmocka_unit_test_setup_teardown(test_damaged_counters, setup, teardown),
            cmocka_unit_test_setup_teardown(test_prefix_refused, setup, teardown),
            cmocka_unit_test_setup_teardown(test_never_fits_quota, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
