/* stack_int.h - stack.c's process helpers, shared with the other server
 * starters of the harness (kt_kafka.c).  Not for tests: they use stack.h. */
#ifndef KT_STACK_INT_H
#define KT_STACK_INT_H

#include "stack.h"

/* Opens a child's log for appending (a restarted server keeps one log), or -1
 * with a message on stderr. */
int kt_open_log(const char *path);

/* The environment a child of stack s gets (ours, minus any inherited
 * KINFER_BROKERS/KINFER_REDIS, plus the stack's servers, plus extra_env).
 * Caller frees with kt_free_strv. */
char **kt_build_env(const kt_stack_t *s, const char *const *extra_env);
void kt_free_strv(char **v);

/* Forks and execs path with stdin/stdout/stderr from in/out/err; the child
 * dies with the test (PR_SET_PDEATHSIG).  Returns the pid, or -1 (also when
 * the exec failed: message on stderr). */
pid_t kt_spawn_child(const char *path, char *const *argv, char *const *envp, int in, int out,
                     int err);

/* Waits up to timeout_ms (< 0: forever) for pid.  Returns its exit status as
 * kt_stack_run reports it, or -2 if it is still running. */
int kt_wait_pid(pid_t pid, int timeout_ms);

/* Sends sig to *pidp; for SIGTERM/SIGINT/SIGKILL waits for the exit (SIGKILL
 * after timeout_ms), clears *pidp and returns the exit status. */
int kt_signal_proc(pid_t *pidp, int sig, int timeout_ms);

/* kt_stack_stop's: the stack's Kafka node (kt_kafka.c) is gone, a new stack
 * may start another. */
void kt_kafka_forget(void);

#endif
