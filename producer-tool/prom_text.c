/* prom_text.c - the Prometheus text exposition format (0.0.4) read one
 * sample at a time, strictly and without allocating (prom_text.h). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prom_text.h"

typedef struct {
        const char *p, *end; /* the rest of the current line */
        int line;
        char *errstr;
        size_t errstr_size;
} cur_t;

static int fail(cur_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(cur_t *c, const char *fmt, ...)
{
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        if (c->errstr && c->errstr_size)
                snprintf(c->errstr, c->errstr_size, "line %d: %s", c->line, msg);
        return -1;
}

static void skip_blanks(cur_t *c)
{
        while (c->p < c->end && (*c->p == ' ' || *c->p == '\t'))
                c->p++;
}

static int is_alpha(char ch)
{
        return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
}

static int is_digit(char ch)
{
        return ch >= '0' && ch <= '9';
}

/* A metric name [a-zA-Z_:][a-zA-Z0-9_:]* (colons = 1) or a label name
 * [a-zA-Z_][a-zA-Z0-9_]* into out. */
static int read_name(cur_t *c, char *out, int colons, const char *what)
{
        size_t n = 0;
        if (c->p >= c->end || !(is_alpha(*c->p) || (colons && *c->p == ':')))
                return fail(c, "expected a %s", what);
        while (c->p < c->end && (is_alpha(*c->p) || is_digit(*c->p) || (colons && *c->p == ':'))) {
                if (n == KP_NAME_MAX)
                        return fail(c, "%s longer than %d characters", what, KP_NAME_MAX);
                out[n++] = *c->p++;
        }
        out[n] = '\0';
        return 0;
}

/* A quoted label value, unescaped into out. */
static int read_lvalue(cur_t *c, char *out, const char *label)
{
        size_t n = 0;
        if (c->p >= c->end || *c->p != '"')
                return fail(c, "label '%s': expected '\"'", label);
        c->p++;
        for (;;) {
                char ch;
                if (c->p >= c->end)
                        return fail(c, "label '%s': value not terminated", label);
                ch = *c->p++;
                if (ch == '"')
                        break;
                if (ch == '\\') {
                        if (c->p >= c->end)
                                return fail(c, "label '%s': value not terminated", label);
                        ch = *c->p++;
                        if (ch == 'n')
                                ch = '\n';
                        else if (ch != '\\' && ch != '"')
                                return fail(c, "label '%s': unknown escape '\\%c'", label, ch);
                }
                if (n == KP_LVALUE_MAX)
                        return fail(c, "label '%s': value longer than %d bytes", label,
                                    KP_LVALUE_MAX);
                out[n++] = ch;
        }
        out[n] = '\0';
        return 0;
}

static int read_labels(cur_t *c, kp_sample_t *s)
{
        c->p++; /* '{' */
        for (;;) {
                kp_label_t *l;
                skip_blanks(c);
                if (c->p < c->end && *c->p == '}') {
                        c->p++;
                        return 0;
                }
                if (s->n_labels == KP_LABELS_MAX)
                        return fail(c, "more than %d labels", KP_LABELS_MAX);
                l = &s->labels[s->n_labels];
                if (read_name(c, l->name, 0, "label name"))
                        return -1;
                for (int i = 0; i < s->n_labels; i++)
                        if (!strcmp(s->labels[i].name, l->name))
                                return fail(c, "label '%s' given twice", l->name);
                skip_blanks(c);
                if (c->p >= c->end || *c->p != '=')
                        return fail(c, "label '%s': expected '='", l->name);
                c->p++;
                skip_blanks(c);
                if (read_lvalue(c, l->value, l->name))
                        return -1;
                s->n_labels++;
                skip_blanks(c);
                if (c->p < c->end && *c->p == ',')
                        c->p++;
                else if (c->p >= c->end || *c->p != '}')
                        return fail(c, "expected ',' or '}' after label '%s'", l->name);
        }
}

/* The next blank-separated token, copied into buf (at most size-1 bytes). */
static int read_token(cur_t *c, char *buf, size_t size, const char *what)
{
        size_t n = 0;
        while (c->p < c->end && *c->p != ' ' && *c->p != '\t') {
                if (n + 1 == size)
                        return fail(c, "%s too long", what);
                buf[n++] = *c->p++;
        }
        buf[n] = '\0';
        if (!n)
                return fail(c, "expected a %s", what);
        return 0;
}

static int read_value(cur_t *c, kp_sample_t *s)
{
        char buf[64], *endp;
        if (read_token(c, buf, sizeof(buf), "value"))
                return -1;
        errno = 0;
        s->value = strtod(buf, &endp);
        /* ERANGE on underflow still gives a usable value; on overflow, +-Inf
         * is what the text meant anyway. */
        if (endp == buf || *endp)
                return fail(c, "value '%s' is not a number", buf);
        skip_blanks(c);
        if (c->p < c->end) {
                long long ts;
                if (read_token(c, buf, sizeof(buf), "timestamp"))
                        return -1;
                errno = 0;
                ts = strtoll(buf, &endp, 10);
                if (endp == buf || *endp || errno == ERANGE)
                        return fail(c, "timestamp '%s' is not a 64-bit integer", buf);
                s->has_ts = 1;
                s->ts_ms = ts;
                skip_blanks(c);
                if (c->p < c->end)
                        return fail(c, "unexpected text after the timestamp");
        }
        return 0;
}

int kp_parse(const char *text, size_t len, kp_sample_cb *cb, void *opaque, char *errstr,
             size_t errstr_size)
{
        cur_t c = {.errstr = errstr, .errstr_size = errstr_size};
        const char *p = text, *end = text + len;
        kp_sample_t s;

        while (p < end) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                const char *eol = nl ? nl : end;
                int rc;
                c.line++;
                c.p = p;
                c.end = eol;
                p = nl ? nl + 1 : end;
                if (memchr(c.p, '\0', (size_t)(eol - c.p)))
                        return fail(&c, "NUL byte");
                skip_blanks(&c);
                if (c.p == c.end || *c.p == '#')
                        continue;
                memset(&s, 0, sizeof(s));
                s.line = c.line;
                if (read_name(&c, s.name, 1, "metric name"))
                        return -1;
                skip_blanks(&c);
                if (c.p < c.end && *c.p == '{' && read_labels(&c, &s))
                        return -1;
                skip_blanks(&c);
                if (read_value(&c, &s))
                        return -1;
                if ((rc = cb(&s, opaque)))
                        return rc;
        }
        return 0;
}

const char *kp_label(const kp_sample_t *s, const char *name)
{
        for (int i = 0; i < s->n_labels; i++)
                if (!strcmp(s->labels[i].name, name))
                        return s->labels[i].value;
        return NULL;
}
