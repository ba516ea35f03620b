/* test_commit.c - the step writer (worker/commit.c) where it needs no
 * Redis: a round that fails while its steps are being built must not leave
 * appended steps behind for the next round (their replies would be read as
 * that round's, and a job taken for written that is not).
 *
 * The connection is faked: this test defines kw_redis_ensure and
 * kw_redis_drop itself (redis_conn.o is not linked), and ld --wrap replaces
 * kf_script_append (it fails on demand) and the two librdkafka calls a
 * result value makes of its message (see the Makefile). */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <string.h>

#include "../../worker/commit.h"

static int appended, fail_append_at, dropped;
static redisContext fake; /* never read: every call on it is faked */

int kw_redis_ensure(kw_redis_t *r, char *errstr, size_t errstr_size)
{
        (void)errstr, (void)errstr_size;
        if (!r->c)
                r->c = &fake;
        return 0;
}

void kw_redis_drop(kw_redis_t *r)
{
        if (r->c)
                dropped++;
        r->c = NULL;
}

int kw_redis_open(kw_redis_t *r, const char *url, int timeout_ms, const kf_script_t *script,
                  char *errstr, size_t errstr_size)
{
        (void)url, (void)timeout_ms, (void)script, (void)errstr, (void)errstr_size;
        memset(r, 0, sizeof(*r));
        return 0;
}

void kw_redis_close(kw_redis_t *r)
{
        r->c = NULL;
}

int __wrap_kf_script_append(redisContext *c, const kf_script_t *s, int numkeys, int argc,
                            const char **argv, const size_t *argvlen);
const char *__wrap_rd_kafka_topic_name(const rd_kafka_topic_t *rkt);
int64_t __wrap_rd_kafka_message_timestamp(const rd_kafka_message_t *rkm,
                                          rd_kafka_timestamp_type_t *tstype);

int __wrap_kf_script_append(redisContext *c, const kf_script_t *s, int numkeys, int argc,
                            const char **argv, const size_t *argvlen)
{
        (void)c, (void)s, (void)numkeys, (void)argc, (void)argv, (void)argvlen;
        return ++appended == fail_append_at ? REDIS_ERR : REDIS_OK;
}

const char *__wrap_rd_kafka_topic_name(const rd_kafka_topic_t *rkt)
{
        (void)rkt;
        return "jobs";
}

int64_t __wrap_rd_kafka_message_timestamp(const rd_kafka_message_t *rkm,
                                          rd_kafka_timestamp_type_t *tstype)
{
        (void)rkm;
        *tstype = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        return -1;
}

/* Two users, so two steps in one round; the second cannot be appended (out
 * of memory): the round fails, nothing is taken for written, and the first
 * step, appended but unsent, is dropped with the connection. */
static void test_failed_build_drops_appended_steps(void **state)
{
        static const kw_step_conf_t conf = {"kinfer:", "w1", {-1, -1, 3600}, 3600};
        rd_kafka_message_t msgs[2];
        kw_job_t jobs[2];
        kw_batch_t b;
        kw_commit_t cm;
        char err[256];
        (void)state;
        memset(msgs, 0, sizeof(msgs));
        memset(jobs, 0, sizeof(jobs));
        for (int i = 0; i < 2; i++) {
                jobs[i].rkm = &msgs[i];
                jobs[i].state = KW_JOB_DONE;
                jobs[i].err = KF_ERR_BAD_REQUEST;
                snprintf(jobs[i].job.id, sizeof(jobs[i].job.id), "j%d", i);
                snprintf(jobs[i].job.user, sizeof(jobs[i].job.user), "user%d", i);
        }
        memset(&b, 0, sizeof(b));
        b.jobs = jobs;
        b.n = b.cap = 2;
        assert_int_equal(kw_commit_open(&cm, "redis://x", 1000, &conf, err, sizeof(err)), 0);
        fail_append_at = 2;
        assert_int_equal(kw_commit_batch(&cm, &b, err, sizeof(err)), -1);
        assert_int_equal(appended, 2);
        assert_int_equal(jobs[0].state, KW_JOB_DONE);
        assert_int_equal(jobs[1].state, KW_JOB_DONE);
        assert_int_equal(dropped, 1);
        assert_null(cm.redis.c);
        kw_commit_close(&cm);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_failed_build_drops_appended_steps),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
