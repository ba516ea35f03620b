/* input.c - turns command-line rows, JSON-lines files and CSV files into
 * job input matrices, with errors that name the file, line and value. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_util.h"
#include "kinfer.h"

/* Appends the comma-separated numbers of s to *vals.  Returns the count, or
 * -1 with errstr naming the bad value. */
static int parse_csv_row(const char *s, float **vals, size_t *n, size_t *cap, char *errstr,
                         size_t errstr_size)
{
        const char *p = s;
        int cnt = 0;
        for (;;) {
                char *end;
                double v;
                int len;
                while (*p == ' ' || *p == '\t')
                        p++;
                len = (int)strcspn(p, ",\r\n");
                errno = 0;
                v = strtod(p, &end);
                if (end == p)
                        return kf_errf(errstr, errstr_size, "value %d ('%.*s') is not a number",
                                       cnt + 1, len, p);
                /* strtod reads "nan" and "inf" as numbers; an infinity with
                 * ERANGE was a finite literal too large, refused below. */
                if (isnan(v) || (isinf(v) && errno != ERANGE))
                        return kf_errf(errstr, errstr_size, "value %d ('%.*s') is not finite",
                                       cnt + 1, len, p);
                /* ERANGE is also strtod's word for underflow (1e-320, a
                 * float64 subnormal or 0), which is no error here: it rounds
                 * to a float32 subnormal or 0, finite like any other value.
                 * Only a magnitude beyond float32's is refused, as the job
                 * decoder does, and before the conversion, which C leaves
                 * undefined for it. */
                if (fabs(v) > FLT_MAX)
                        return kf_errf(errstr, errstr_size,
                                       "value %d ('%.*s') is out of float32 range (largest %g)",
                                       cnt + 1, len, p, (double)FLT_MAX);
                if (*n == *cap) {
                        size_t nc = *cap ? *cap * 2 : 64;
                        float *nv = realloc(*vals, nc * sizeof(float));
                        if (!nv)
                                return kf_errf(errstr, errstr_size, "out of memory");
                        *vals = nv;
                        *cap = nc;
                }
                (*vals)[(*n)++] = (float)v;
                cnt++;
                p = end;
                while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
                        p++;
                if (*p == '\0')
                        return cnt;
                if (*p != ',')
                        return kf_errf(errstr, errstr_size, "unexpected '%c' after value %d", *p,
                                       cnt);
                p++;
        }
}

/* Line 1 of a CSV file that did not parse as a row: 1 if it is a header,
 * i.e. none of its fields is a number (what strtod reads, all of the field
 * but the blanks around it), else 0.  A line that mixes numbers with other
 * fields is a data line with a typo, never a header to drop: why then names
 * its first field that is not a number.  A line of numbers only keeps the
 * parser's why (a value out of range, say). */
static int csv_header_check(const char *line, char *why, size_t why_size)
{
        const char *p = line, *bad = NULL;
        int numbers = 0, bad_col = 0, bad_len = 0;

        for (int col = 1;; col++) {
                size_t len = strcspn(p, ",\r\n");
                const char *f = p, *e = p + len;
                char *end;

                while (f < e && (*f == ' ' || *f == '\t'))
                        f++;
                while (e > f && (e[-1] == ' ' || e[-1] == '\t'))
                        e--;
                (void)strtod(f, &end);
                if (f < e && end == e) {
                        numbers++;
                } else if (!bad) {
                        bad = f;
                        bad_col = col;
                        bad_len = (int)(e - f);
                }
                p += len;
                if (*p != ',')
                        break;
                p++;
        }
        if (numbers == 0)
                return 1;
        if (bad)
                kf_errf(why, why_size,
                        "column %d ('%.*s') is not a number, but other fields of this line are: "
                        "a first line is a header only when none of its fields is a number",
                        bad_col, bad_len, bad);
        return 0;
}

int kc_rows_from_args(int argc, char **argv, kc_matrix_t *m, char *errstr, size_t errstr_size)
{
        size_t n = 0, cap = 0;
        float *vals = NULL;
        char why[256];

        memset(m, 0, sizeof(*m));
        for (int i = 0; i < argc; i++) {
                int cnt = parse_csv_row(argv[i], &vals, &n, &cap, why, sizeof(why));
                if (cnt < 0) {
                        free(vals);
                        return kf_errf(errstr, errstr_size, "row %d '%s': %s", i + 1, argv[i], why);
                }
                if (i > 0 && (uint32_t)cnt != m->cols) {
                        free(vals);
                        return kf_errf(errstr, errstr_size, "row %d has %d values, row 1 has %u",
                                       i + 1, cnt, m->cols);
                }
                m->cols = (uint32_t)cnt;
                m->rows++;
        }
        m->data = vals;
        return 0;
}

/* One JSON row (array of numbers) into vals; returns its length or -1. */
static int json_row(json_t *row, float **vals, size_t *n, size_t *cap, char *errstr,
                    size_t errstr_size)
{
        size_t i;
        json_t *v;
        if (!json_is_array(row) || json_array_size(row) == 0)
                return kf_errf(errstr, errstr_size, "a row must be a non-empty array of numbers");
        json_array_foreach(row, i, v)
        {
                double d;
                if (!json_is_number(v))
                        return kf_errf(errstr, errstr_size, "value %zu is not a number", i + 1);
                d = json_number_value(v);
                /* The CSV reader's range test: jansson already refuses what
                 * overflows a double, and what underflows becomes a float32
                 * 0 or subnormal; beyond float32's range the conversion is
                 * undefined, so the test comes first. */
                if (fabs(d) > FLT_MAX)
                        return kf_errf(errstr, errstr_size,
                                       "value %zu (%g) is out of float32 range (largest %g)", i + 1,
                                       d, (double)FLT_MAX);
                if (*n == *cap) {
                        size_t nc = *cap ? *cap * 2 : 64;
                        float *nv = realloc(*vals, nc * sizeof(float));
                        if (!nv)
                                return kf_errf(errstr, errstr_size, "out of memory");
                        *vals = nv;
                        *cap = nc;
                }
                (*vals)[(*n)++] = (float)d;
        }
        return (int)json_array_size(row);
}

static int fmt_of(const char *path, const char *format)
{
        const char *dot;
        if (format)
                return !strcmp(format, "csv") ? 'c' : !strcmp(format, "jsonl") ? 'j' : 0;
        dot = strrchr(path, '.');
        if (!dot)
                return 0;
        if (!strcmp(dot, ".csv"))
                return 'c';
        if (!strcmp(dot, ".jsonl") || !strcmp(dot, ".json") || !strcmp(dot, ".ndjson"))
                return 'j';
        return 0;
}

int kc_read_jobs(const char *path, const char *format, int64_t rows_per_job, kc_job_cb *cb,
                 void *opaque, char *errstr, size_t errstr_size)
{
        int fmt = fmt_of(path, format);
        FILE *fp;
        char *line = NULL;
        size_t linecap = 0, n = 0, cap = 0;
        float *vals = NULL;
        kc_matrix_t m = {0};
        long lineno = 0;
        int rc = 0;
        char why[256];

        if (!fmt)
                return kf_errf(errstr, errstr_size,
                               "%s: cannot tell the format: name it .jsonl or .csv, or use "
                               "--format jsonl|csv",
                               path);
        if (!(fp = strcmp(path, "-") ? fopen(path, "r") : stdin))
                return kf_errf(errstr, errstr_size, "%s: %s", path, strerror(errno));
        while (getline(&line, &linecap, fp) >= 0) {
                char *p = line;
                lineno++;
                while (*p == ' ' || *p == '\t')
                        p++;
                if (*p == '\0' || *p == '\n' || *p == '\r' || *p == '#')
                        continue;
                if (fmt == 'j') {
                        json_error_t jerr;
                        json_t *doc = json_loads(p, JSON_DECODE_ANY, &jerr);
                        size_t i;
                        json_t *row;
                        n = 0;
                        if (!doc) {
                                rc = kf_errf(errstr, errstr_size, "%s:%ld: invalid JSON: %s", path,
                                             lineno, jerr.text);
                                break;
                        }
                        m.rows = 0;
                        if (json_is_array(doc) && json_array_size(doc) &&
                            json_is_array(json_array_get(doc, 0))) {
                                json_array_foreach(doc, i, row)
                                {
                                        int c = json_row(row, &vals, &n, &cap, why, sizeof(why));
                                        if (c < 0 || (i && (uint32_t)c != m.cols)) {
                                                if (c >= 0)
                                                        snprintf(why, sizeof(why),
                                                                 "row %zu has %d values, row 1 "
                                                                 "has %u",
                                                                 i + 1, c, m.cols);
                                                rc = -1;
                                                break;
                                        }
                                        m.cols = (uint32_t)c;
                                        m.rows++;
                                }
                        } else {
                                int c = json_row(doc, &vals, &n, &cap, why, sizeof(why));
                                if (c < 0)
                                        rc = -1;
                                m.cols = (uint32_t)(c < 0 ? 0 : c);
                                m.rows = 1;
                        }
                        json_decref(doc);
                        if (rc) {
                                kf_errf(errstr, errstr_size, "%s:%ld: %s", path, lineno, why);
                                break;
                        }
                        m.data = vals;
                        if (cb(&m, opaque)) {
                                rc = -1;
                                kf_errf(errstr, errstr_size, "%s:%ld: stopped", path, lineno);
                                break;
                        }
                } else {
                        int c;
                        if (m.rows == 0)
                                n = 0;
                        c = parse_csv_row(p, &vals, &n, &cap, why, sizeof(why));
                        if (c < 0) {
                                if (lineno == 1 && csv_header_check(p, why, sizeof(why)))
                                        continue; /* a header line */
                                rc = kf_errf(errstr, errstr_size, "%s:%ld: %s", path, lineno, why);
                                break;
                        }
                        if (m.rows && (uint32_t)c != m.cols) {
                                rc = kf_errf(errstr, errstr_size,
                                             "%s:%ld: %d values, the job's first row has %u", path,
                                             lineno, c, m.cols);
                                break;
                        }
                        m.cols = (uint32_t)c;
                        if (++m.rows == (uint32_t)rows_per_job) {
                                m.data = vals;
                                if (cb(&m, opaque)) {
                                        rc = kf_errf(errstr, errstr_size, "%s:%ld: stopped", path,
                                                     lineno);
                                        break;
                                }
                                m.rows = 0;
                        }
                }
        }
        if (rc == 0 && fmt == 'c' && m.rows) { /* a last, shorter job */
                m.data = vals;
                if (cb(&m, opaque))
                        rc = kf_errf(errstr, errstr_size, "%s: stopped", path);
        }
        if (rc == 0 && ferror(fp))
                rc = kf_errf(errstr, errstr_size, "%s: read error", path);
        free(line);
        free(vals);
        if (fp != stdin)
                fclose(fp);
        return rc;
}
