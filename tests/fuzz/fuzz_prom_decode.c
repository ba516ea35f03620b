/* fuzz_prom_decode.c - libFuzzer target for kp_parse (producer-tool/
 * prom_text.c), which reads the workers' /metrics for `kinfer top`:
 * arbitrary bytes in; besides "no crash, no overread, no leak", every sample
 * delivered must be within bounds (names and label values NUL-terminated
 * within their limits, at most KP_LABELS_MAX labels, distinct label names,
 * lines in order) and an error must say which line.  Built and run by
 * `make fuzz`. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../producer-tool/prom_text.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        fprintf(stderr, "fuzz_prom_decode: %s\n", #cond);                          \
                        abort();                                                                   \
                }                                                                                  \
        } while (0)

typedef struct {
        int last_line;
        size_t n;
} state_t;

static int on_sample(const kp_sample_t *s, void *opaque)
{
        state_t *st = opaque;
        CHECK(s->line > st->last_line);
        st->last_line = s->line;
        CHECK(memchr(s->name, '\0', sizeof(s->name)) && s->name[0]);
        CHECK(s->n_labels >= 0 && s->n_labels <= KP_LABELS_MAX);
        for (int i = 0; i < s->n_labels; i++) {
                CHECK(memchr(s->labels[i].name, '\0', sizeof(s->labels[i].name)));
                CHECK(memchr(s->labels[i].value, '\0', sizeof(s->labels[i].value)));
                CHECK(kp_label(s, s->labels[i].name) == s->labels[i].value);
        }
        st->n++;
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        state_t st = {0};
        char err[256] = "";
        int rc = kp_parse((const char *)data, size, on_sample, &st, err, sizeof(err));
        CHECK(rc == 0 || rc == -1);
        CHECK(rc == 0 || !strncmp(err, "line ", 5));
        return 0;
}
