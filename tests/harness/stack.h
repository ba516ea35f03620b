/* stack.h - throwaway real servers for integration tests.
 *
 * Starts a real redis-server (Debian's) and the real kinfer-devbroker, each
 * on a free loopback port, in a private temp directory, and kinfer programs
 * against them; stops every process it started by PID.  Nothing is faked:
 * tests talk to these servers over TCP like production does.
 *
 * Binaries are taken from $KINFER_BIN (default "build").  Each spawned
 * program's stdout+stderr go to <dir>/<name>.log, kept on failure
 * (KINFER_KEEP=1 keeps the directory always) and printed by stack_dump_logs.
 * Not thread-safe: one stack per test process, used from the test thread. */
#ifndef KT_STACK_H
#define KT_STACK_H

#include <hiredis.h>
#include <stddef.h>
#include <sys/types.h>

#define KT_MAX_PROCS 32

typedef struct kt_proc_s {
        pid_t pid; /* 0 = slot free or reaped */
        char name[64];
        char log[512];
} kt_proc_t;

typedef struct kt_stack_s {
        char dir[256];       /* private temp dir, removed by kt_stack_stop */
        const char *bindir;  /* where kinfer binaries are */
        int redis_port;      /* 0 until kt_stack_start_redis */
        char redis_url[128]; /* redis://127.0.0.1:PORT/0 */
        char brokers[512];   /* devbroker bootstrap list, "" until started */
        /* kt_stack_start_kafka_secure: the SASL_SSL listener's address, the
         * mutual-TLS listener's, the CA that signed the broker's certificate,
         * a CA that did not, and the folder of every certificate and key
         * (tests/harness/kafka-certs.sh lists them). */
        char kafka_tls_brokers[64], kafka_mtls_brokers[64];
        char kafka_ca[420], kafka_other_ca[420], kafka_tls_dir[400];
        kt_proc_t redis, broker;
        kt_proc_t procs[KT_MAX_PROCS];
        int failed; /* set by kt_stack_fail: keep dir, dump logs */
} kt_stack_t;

/* A free loopback TCP port (bound and released: another process can still
 * take it before the caller binds it), or -1. */
int kt_free_port(void);

/* Creates the temp dir.  Returns 0 or -1 (message on stderr). */
int kt_stack_init(kt_stack_t *s);

/* Starts redis-server on a free loopback port (no persistence unless
 * extra_args asks for it; extra_args is a NULL-terminated list of extra
 * command-line words or NULL) and waits until it answers PING. */
int kt_stack_start_redis(kt_stack_t *s, const char *const *extra_args);

/* Starts kinfer-devbroker with n_brokers brokers and `partitions` partitions
 * per kinfer topic and waits for its bootstrap line.  With the environment
 * variable KINFER_TEST_BROKER=kafka it starts a genuine Kafka instead
 * (kt_stack_start_kafka; one broker only), so a whole suite can be run on
 * one: then kt_stack_broker_cmd fails, and so do the tests that need it. */
int kt_stack_start_broker(kt_stack_t *s, int n_brokers, int partitions);

/* Starts a genuine single-node Apache Kafka 4.x instead of the dev broker
 * (KRaft, broker and controller in one JVM, started by deploy/kafka/node.sh
 * from the jars `make kafka-jars` resolves from Maven Central) on two free
 * loopback ports, its configuration, data and log in the stack's dir, and
 * creates kinfer.jobs and kinfer.dlq with `partitions` partitions each (the
 * broker, like production clusters, creates no topic by itself).  Returns
 * when every partition has a leader, or -1 (the log is kafka.log).  Run from
 * the source tree, or set KINFER_KAFKA_NODE (node.sh) and KINFER_KAFKA_JARS
 * (default $KINFER_BIN/kafka/jars).  s->brokers is its address; the stack
 * stops it like the dev broker, and kt_stack_broker_cmd does not apply. */
int kt_stack_start_kafka(kt_stack_t *s, int partitions);

/* kt_stack_start_kafka with two more, locked-down listeners: SASL_SSL on
 * s->kafka_tls_brokers (TLS with a certificate for 127.0.0.1 and localhost
 * signed by a CA made for this stack with the openssl CLI,
 * tests/harness/kafka-certs.sh, s->kafka_ca; then SASL PLAIN or
 * SCRAM-SHA-512) for the users given as name, password, ..., NULL (no
 * spaces, quotes, commas or brackets), and mutual TLS (SSL) on
 * s->kafka_mtls_brokers for clients whose certificate the same CA signed
 * (client.pem in s->kafka_tls_dir).  s->brokers stays the plaintext
 * listener, which the harness, the fault fixture and the broker itself use.
 * KINFER_KAFKA_CERTS overrides the script's path. */
int kt_stack_start_kafka_secure(kt_stack_t *s, int partitions, const char *const *users);

/* Sends sig to the Kafka JVM: SIGKILL (a crash) or SIGTERM (a clean
 * shutdown) wait for its exit and return its status as kt_stack_kill does;
 * SIGSTOP/SIGCONT return 0 at once. */
int kt_stack_kill_kafka(kt_stack_t *s, int sig);

/* Starts Kafka again, after kt_stack_kill_kafka, on the same ports and the
 * same data directory, and waits until the topics' partitions have a leader
 * again.  Returns 0 or -1. */
int kt_stack_restart_kafka(kt_stack_t *s);

/* Sets one topic configuration on the running Kafka (e.g. "max.message.bytes"),
 * replacing the topic's other dynamic settings.  Returns 0 or -1. */
int kt_stack_kafka_topic_config(kt_stack_t *s, const char *topic, const char *key,
                                const char *value);

/* Sends one control command line to the dev broker's stdin (see
 * docs/devbroker.md, e.g. "broker-down 1") and waits for its reply line.
 * Returns 0 if the broker answered "ok", -1 otherwise. */
int kt_stack_broker_cmd(kt_stack_t *s, const char *cmd);

/* Spawns a program (argv[0] is a binary name looked up in bindir if it has
 * no '/') with KINFER_BROKERS and KINFER_REDIS set for this stack, plus
 * extra_env ("K=V" strings, NULL-terminated, or NULL).  Returns the slot or
 * -1.  The process runs until kt_stack_kill/kt_stack_wait. */
int kt_stack_spawn(kt_stack_t *s, const char *name, const char *const *argv,
                   const char *const *extra_env);

/* Runs a program to completion with the same environment, feeding stdin
 * from stdin_path (or /dev/null) and capturing stdout into a malloc'd,
 * NUL-terminated *out (caller frees; may be NULL to discard).  Returns the
 * exit status (0..255), 128+signal if killed, or -1 if it could not run or
 * ran past timeout_ms (then it is killed). */
int kt_stack_run(kt_stack_t *s, const char *const *argv, const char *stdin_path, char **out,
                 int timeout_ms);

/* Waits up to timeout_ms (< 0: forever) for slot's process to exit by itself.
 * Returns its exit status as kt_stack_run does, or -1 if it is still running
 * (it is not killed) or the slot holds no process. */
int kt_stack_wait(kt_stack_t *s, int slot, int timeout_ms);

/* Sends sig to slot's process.  For SIGTERM/SIGINT/SIGKILL waits up to
 * timeout_ms for it to exit (then SIGKILL) and returns its exit status as
 * kt_stack_run does; for other signals returns 0 at once. */
int kt_stack_kill(kt_stack_t *s, int slot, int sig, int timeout_ms);

/* Same for the redis-server (e.g. SIGSTOP/SIGCONT).  kt_stack_restart_redis
 * starts it again on the same port after a SIGKILL; with appendonly it may
 * still be LOADING when this returns (poll INFO persistence loading:0). */
int kt_stack_signal_redis(kt_stack_t *s, int sig);
int kt_stack_restart_redis(kt_stack_t *s);

/* A new hiredis connection to this stack's redis, or NULL. Caller frees. */
redisContext *kt_stack_redis(kt_stack_t *s);

/* Marks the run failed: logs are printed and the directory kept. */
void kt_stack_fail(kt_stack_t *s);

/* Prints each spawned process's log to stderr (tail, up to 200 lines each). */
void kt_stack_dump_logs(kt_stack_t *s);

/* Stops every process (SIGTERM, then SIGKILL after 5 s), redis last, and
 * removes the directory unless failed or KINFER_KEEP is set. */
void kt_stack_stop(kt_stack_t *s);

/* Milliseconds since an arbitrary fixed point (CLOCK_MONOTONIC). */
long long kt_now_ms(void);

/* Sleeps ms milliseconds (restarted after a signal). */
void kt_sleep_ms(int ms);

/* Makes <dir>/models for model files and writes its path into out.
 * Returns 0 or -1 (message on stderr). */
int kt_stack_models_dir(kt_stack_t *s, char *out, size_t size);

#endif
