/* test_step_args.c - the step's arguments (worker/step_args.c) against an
 * expectation written by hand from step.lua's header: KEYS, the fixed ARGV,
 * and per job the meta record '<BI4I4dI4B' byte by byte, id, model, inbox,
 * and the result value (a msgpack map whose common pairs are clen bytes).
 *
 * Linked with ld --wrap for rd_kafka_topic_name and rd_kafka_message_timestamp
 * (see the Makefile): a job's Kafka message is a plain struct here. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/step_args.h"

const char *__wrap_rd_kafka_topic_name(const rd_kafka_topic_t *rkt);
int64_t __wrap_rd_kafka_message_timestamp(const rd_kafka_message_t *rkm,
                                          rd_kafka_timestamp_type_t *tstype);

const char *__wrap_rd_kafka_topic_name(const rd_kafka_topic_t *rkt)
{
        (void)rkt;
        return "jobs";
}

int64_t __wrap_rd_kafka_message_timestamp(const rd_kafka_message_t *rkm,
                                          rd_kafka_timestamp_type_t *tstype)
{
        (void)rkm;
        *tstype = RD_KAFKA_TIMESTAMP_CREATE_TIME;
        return 1700000000000LL;
}

static const kw_step_conf_t conf = {"kinfer:", "w1", {10, -1, 3600}, 7200};

static rd_kafka_message_t msgs[4];
static float out0[] = {1.5f, -2.0f};

/* Three jobs of alice: ok (1x2 output), error, over quota. */
static void make_batch(kw_batch_t *b)
{
        static kw_job_t jobs[3];
        memset(jobs, 0, sizeof(jobs));
        memset(msgs, 0, sizeof(msgs));
        for (int i = 0; i < 3; i++) {
                msgs[i].partition = 3;
                msgs[i].offset = 40 + i;
                jobs[i].rkm = &msgs[i];
                jobs[i].state = KW_JOB_DONE;
                strcpy(jobs[i].job.user, "alice");
                jobs[i].started_ms = 1700000000100LL;
                jobs[i].done_ms = 1700000000200LL;
        }
        strcpy(jobs[0].job.id, "j-ok");
        strcpy(jobs[0].job.model, "xor");
        strcpy(jobs[0].job.inbox, "box1");
        jobs[0].job.rows = 1;
        jobs[0].job.ttl_s = 60;
        jobs[0].output = out0;
        jobs[0].out_rows = 1;
        jobs[0].out_cols = 2;
        jobs[0].model_version = 7;
        jobs[0].flops = 12;
        jobs[0].err = KF_OK;

        strcpy(jobs[1].job.id, "j-err");
        jobs[1].job.rows = 4; /* an error result: charged no flops */
        jobs[1].flops = 99;
        jobs[1].err = KF_ERR_BAD_REQUEST;
        strcpy(jobs[1].errmsg, "bad");

        strcpy(jobs[2].job.id, "j-over");
        strcpy(jobs[2].job.model, "xor");
        jobs[2].job.rows = 3;
        jobs[2].err = KF_ERR_QUOTA_EXCEEDED;
        jobs[2].over_quota = 1;

        memset(b, 0, sizeof(*b));
        b->jobs = jobs;
        b->n = b->cap = 3;
}

static void assert_arg(const kw_step_call_t *c, int i, const char *want)
{
        if (c->len[i] != strlen(want) || memcmp(c->argv[i], want, c->len[i]))
                fail_msg("argument %d: got '%.*s', want '%s'", i, (int)c->len[i], c->argv[i], want);
}

/* The value's map: a map16 header of ncommon + own pairs; the first
 * ncommon pairs fill exactly clen bytes after the header. */
static void check_value(const char *value, size_t vlen, uint32_t clen, uint8_t ncommon,
                        uint32_t npairs, const char *status)
{
        msgpack_unpacked u;
        size_t off = 0;
        msgpack_object_map *m;
        int found_status = 0;
        char v[4096];

        assert_true(vlen >= 3 + clen && vlen + 16 < sizeof(v));
        memcpy(v, value, vlen);
        if (!strcmp(status, "ok")) { /* the step appends `window` (step.lua) */
                memcpy(v + vlen, "\xa6window\x01", 8);
                vlen += 8;
        }
        assert_int_equal((unsigned char)v[0], 0xde);
        assert_int_equal(((unsigned char)v[1] << 8) | (unsigned char)v[2], npairs);
        msgpack_unpacked_init(&u);
        assert_int_equal(msgpack_unpack_next(&u, v, vlen, &off), MSGPACK_UNPACK_SUCCESS);
        assert_int_equal(off, vlen);
        assert_int_equal(u.data.type, MSGPACK_OBJECT_MAP);
        m = &u.data.via.map;
        assert_int_equal(m->size, npairs);
        /* the common pairs alone, re-packed, are clen bytes */
        {
                msgpack_sbuffer sb;
                msgpack_packer pk;
                msgpack_sbuffer_init(&sb);
                msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
                for (uint32_t i = 0; i < ncommon; i++) {
                        msgpack_pack_object(&pk, m->ptr[i].key);
                        msgpack_pack_object(&pk, m->ptr[i].val);
                }
                assert_int_equal(sb.size, clen);
                assert_memory_equal(sb.data, v + 3, clen);
                msgpack_sbuffer_destroy(&sb);
        }
        for (uint32_t i = 0; i < m->size; i++) {
                msgpack_object k = m->ptr[i].key, val = m->ptr[i].val;
                if (k.via.str.size == 6 && !memcmp(k.via.str.ptr, "status", 6)) {
                        assert_int_equal(val.via.str.size, strlen(status));
                        assert_memory_equal(val.via.str.ptr, status, strlen(status));
                        found_status = 1;
                }
                if (k.via.str.size == 6 && !memcmp(k.via.str.ptr, "source", 6))
                        assert_memory_equal(val.via.str.ptr, "jobs/3/4", 8); /* 40..42 */
        }
        assert_int_equal(found_status, status[0] != '\0');
        msgpack_unpacked_destroy(&u);
}

static void test_keys_and_fixed_args(void **state)
{
        kw_batch_t b;
        kw_step_call_t *c = calloc(1, sizeof(*c));
        int idx[] = {0, 1, 2};
        (void)state;
        make_batch(&b);
        assert_int_equal(kw_step_args(c, &conf, &b, idx, 3), 0);
        assert_int_equal(c->nkeys, 6);
        assert_int_equal(c->argc, 6 + 6 + 3 * 5);
        assert_arg(c, 0, "kinfer:{alice}:usage");
        assert_arg(c, 1, "kinfer:{alice}:quota");
        assert_arg(c, 2, "kinfer:{alice}:usage:models");
        assert_arg(c, 3, "kinfer:{alice}:result:j-ok");
        assert_arg(c, 4, "kinfer:{alice}:result:j-err");
        assert_arg(c, 5, "kinfer:{alice}:result:j-over");
        assert_arg(c, 6, "10");   /* default max jobs */
        assert_arg(c, 7, "-1");   /* default max rows: unlimited */
        assert_arg(c, 8, "3600"); /* default window */
        assert_arg(c, 9, "7200"); /* charge horizon */
        assert_arg(c, 10, "kinfer:{alice}:");
        assert_arg(c, 11, "3");
        /* per job: id, model, inbox */
        assert_arg(c, 13, "j-ok");
        assert_arg(c, 14, "xor");
        assert_arg(c, 15, "box1");
        assert_arg(c, 18, "j-err");
        assert_arg(c, 19, "");
        assert_arg(c, 20, "");
        assert_arg(c, 23, "j-over");
        kw_step_call_free(c);
        free(c);
}

/* '<BI4I4dI4B': 1 + 4 + 4 + 8 + 4 + 1 = 22 bytes, little-endian, written
 * here byte by byte. */
static void test_meta_by_hand(void **state)
{
        kw_batch_t b;
        kw_step_call_t *c = calloc(1, sizeof(*c));
        int idx[] = {0, 1, 2};
        /* 12.0 as an IEEE double is 0x4028000000000000 */
        unsigned char want_ok[22] = {1,    60,   0,    0,    0,                /* kind ok, ttl 60 */
                                     1,    0,    0,    0,                      /* rows 1 */
                                     0,    0,    0,    0,    0, 0, 0x28, 0x40, /* flops 12.0 */
                                     0xff, 0xff, 0xff, 0xff, /* clen: patched below */
                                     0xff};
        /* 86400 = 0x00015180, the default ttl */
        unsigned char want_err[22] = {2, 0x80, 0x51, 0x01, 0, 4, 0, 0, 0, 0, 0,
                                      0, 0,    0,    0,    0, 0, 0, 0, 0, 0, 0};
        unsigned char want_over[22] = {3, 0x80, 0x51, 0x01, 0, 3, 0, 0, 0, 0, 0,
                                       0, 0,    0,    0,    0, 0, 0, 0, 0, 0, 0};
        unsigned char *want[3] = {want_ok, want_err, want_over};
        /* common: v id user [model] worker source enqueued started done; own:
         * ok: status version shape output, and window (the step appends it);
         * error: status error message; over quota: none (the step decides) */
        uint32_t npairs[3] = {9 + 4 + 1, 8 + 3, 9};
        const char *status[3] = {"ok", "error", ""};
        (void)state;
        make_batch(&b);
        assert_int_equal(kw_step_args(c, &conf, &b, idx, 3), 0);
        for (int i = 0; i < 3; i++) {
                const unsigned char *meta = (const unsigned char *)c->argv[12 + 5 * i];
                const char *value = c->argv[12 + 5 * i + 4];
                size_t vlen = c->len[12 + 5 * i + 4];
                uint32_t clen;
                uint8_t ncommon = i == 1 ? 8 : 9; /* a job without a model: no model pair */
                assert_int_equal(c->len[12 + 5 * i], 22);
                clen = (uint32_t)meta[17] | (uint32_t)meta[18] << 8 | (uint32_t)meta[19] << 16 |
                       (uint32_t)meta[20] << 24;
                want[i][17] = (unsigned char)clen;
                want[i][18] = (unsigned char)(clen >> 8);
                want[i][19] = (unsigned char)(clen >> 16);
                want[i][20] = (unsigned char)(clen >> 24);
                want[i][21] = ncommon;
                assert_memory_equal(meta, want[i], 22);
                check_value(value, vlen, clen, ncommon, npairs[i], status[i]);
        }
        kw_step_call_free(c);
        free(c);
}

/* A key that cannot be built is never sent: -2. */
static void test_bad_user(void **state)
{
        kw_batch_t b;
        kw_step_call_t *c = calloc(1, sizeof(*c));
        int idx[] = {0};
        (void)state;
        make_batch(&b);
        strcpy(b.jobs[0].job.user, "a}b");
        assert_int_equal(kw_step_args(c, &conf, &b, idx, 1), -2);
        kw_step_call_free(c);
        free(c);
}

/* With a result topic (docs/protocol.md, "Result topic"): a job asking
 * `results: "stream"` has 128 added to its kind, and one more ARGV, "1",
 * asks the step for the values back; without one, neither, so a
 * stream-only job still gets its Redis result. */
static void test_stream_only(void **state)
{
        kw_batch_t b;
        kw_step_call_t *c = calloc(1, sizeof(*c));
        kw_step_conf_t sconf = conf;
        int idx[] = {0, 1, 2};
        (void)state;
        make_batch(&b);
        b.jobs[0].job.stream_only = 1;
        b.jobs[1].job.stream_only = 1;
        assert_int_equal(kw_step_args(c, &conf, &b, idx, 3), 0);
        assert_int_equal(c->argc, 6 + 6 + 3 * 5);
        assert_int_equal((unsigned char)c->argv[12][0], 1);     /* ok, not stream only */
        assert_int_equal((unsigned char)c->argv[12 + 5][0], 2); /* error */
        sconf.results_topic = 1;
        assert_int_equal(kw_step_args(c, &sconf, &b, idx, 3), 0);
        assert_int_equal(c->argc, 6 + 6 + 3 * 5 + 1);
        assert_int_equal((unsigned char)c->argv[12][0], 1 + 128);
        assert_int_equal((unsigned char)c->argv[12 + 5][0], 2 + 128);
        assert_int_equal((unsigned char)c->argv[12 + 10][0], 3); /* over quota, both */
        assert_arg(c, c->argc - 1, "1");
        kw_step_call_free(c);
        free(c);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_keys_and_fixed_args),
            cmocka_unit_test(test_meta_by_hand),
            cmocka_unit_test(test_bad_user),
            cmocka_unit_test(test_stream_only),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
