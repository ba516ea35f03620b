/* prom_text.h - reads the Prometheus text exposition format, version 0.0.4
 * (what a worker's /metrics serves, docs/operations.md), one sample at a
 * time: `kinfer top` sums the workers' counters from it.
 *
 * Strict where a wrong reading would show a wrong number: a metric or label
 * name outside Prometheus' grammar, an unterminated or badly escaped label
 * value, a duplicated label, a value that is not a number, trailing garbage
 * or a NUL byte stop the parse with an error naming the line.  Comments
 * (# HELP, # TYPE, anything after '#') and blank lines are skipped; the
 * types are not checked (top reads names it knows).
 *
 * Bounded: names, label values and the number of labels have fixed limits
 * (below); a longer one is an error, never a truncated name that could
 * match another series.  Nothing is allocated.
 *
 * Threads: no shared state; call from any thread. */
#ifndef KC_PROM_TEXT_H
#define KC_PROM_TEXT_H

#include <stddef.h>
#include <stdint.h>

#define KP_NAME_MAX   200 /* metric and label names, without the NUL */
#define KP_LVALUE_MAX 512 /* a label value, unescaped, without the NUL */
#define KP_LABELS_MAX 16

typedef struct kp_label_s {
        char name[KP_NAME_MAX + 1];
        char value[KP_LVALUE_MAX + 1]; /* unescaped: \\ \" \n read as \ " newline */
} kp_label_t;

typedef struct kp_sample_s {
        char name[KP_NAME_MAX + 1];
        kp_label_t labels[KP_LABELS_MAX];
        int n_labels;
        double value;  /* NaN, +Inf, -Inf as strtod reads them */
        int has_ts;    /* a timestamp followed the value */
        int64_t ts_ms; /* the timestamp, when has_ts */
        int line;      /* 1-based line of the sample */
} kp_sample_t;

/* Called for each sample, in order; s is borrowed (valid during the call).
 * A non-zero return stops the parse, and kp_parse returns it. */
typedef int(kp_sample_cb)(const kp_sample_t *s, void *opaque);

/* Parses text[0..len) (need not be NUL-terminated) and calls cb for each
 * sample.  Returns 0, a callback's non-zero value, or -1 with errstr naming
 * the line and what was wrong (samples before it were delivered). */
int kp_parse(const char *text, size_t len, kp_sample_cb *cb, void *opaque, char *errstr,
             size_t errstr_size);

/* The value of label name in s, or NULL if s has none. */
const char *kp_label(const kp_sample_t *s, const char *name);

#endif
