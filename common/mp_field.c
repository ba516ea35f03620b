/* mp_field.c - strict reading of untrusted msgpack (mp_field.h): one bounded
 * unpack, map fields by name, typed getters, quoting for messages. */
#include "mp_field.h"

#include <stdlib.h>
#include <string.h>

#include "kf_util.h"
#include "mp_bound.h"

mp_unpack_rc_t mp_unpack_one(const void *buf, size_t len, int max_depth, msgpack_unpacked *up,
                             char *errstr, size_t errstr_size)
{
        msgpack_unpack_return ret;
        size_t off = 0;

        if (mp_bound_check(buf, len, max_depth, errstr, errstr_size) != 0)
                return MP_UNPACK_BAD;
        ret = msgpack_unpack_next(up, buf, len, &off);
        if (ret == MSGPACK_UNPACK_NOMEM_ERROR)
                return MP_UNPACK_NOMEM;
        /* Not expected once the bound check passed; said all the same. */
        if (ret != MSGPACK_UNPACK_SUCCESS || off != len) {
                kf_errf(errstr, errstr_size, "unpacker returned %d at byte %zu", (int)ret, off);
                return MP_UNPACK_BAD;
        }
        return MP_UNPACK_OK;
}

int mp_str_eq(const msgpack_object *o, const char *s)
{
        size_t n = strlen(s);
        /* msgpack-c can leave ptr NULL for an empty string: no memcmp() then. */
        return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
               (n == 0 || memcmp(o->via.str.ptr, s, n) == 0);
}

mp_map_rc_t mp_map_fields(const msgpack_object_map *map, const char *const *names, size_t n_names,
                          int flags, const msgpack_object **vals, uint32_t *at)
{
        uint32_t dup = 0; /* names seen twice (MP_MAP_DUP_NULL) */

        if (n_names > MP_MAP_MAX_NAMES)
                n_names = MP_MAP_MAX_NAMES;
        for (size_t j = 0; j < n_names; j++)
                vals[j] = NULL;
        for (uint32_t i = 0; i < map->size; i++) {
                const msgpack_object *k = &map->ptr[i].key;
                size_t j;

                if (k->type != MSGPACK_OBJECT_STR) {
                        *at = i;
                        return MP_MAP_KEY_NOT_STR;
                }
                for (j = 0; j < n_names && !mp_str_eq(k, names[j]); j++)
                        ;
                if (j == n_names) {
                        if (flags & MP_MAP_STRICT) {
                                *at = i;
                                return MP_MAP_UNKNOWN;
                        }
                        continue;
                }
                if (vals[j] || (dup & (1u << j))) {
                        if (!(flags & MP_MAP_DUP_NULL)) {
                                *at = i;
                                return MP_MAP_DUP;
                        }
                        dup |= 1u << j;
                        vals[j] = NULL;
                        continue;
                }
                vals[j] = &map->ptr[i].val;
        }
        return MP_MAP_OK;
}

static int mp_kv_cmp(const void *a, const void *b)
{
        const msgpack_object_str *x = &(*(const msgpack_object_kv *const *)a)->key.via.str;
        const msgpack_object_str *y = &(*(const msgpack_object_kv *const *)b)->key.via.str;
        uint32_t n = x->size < y->size ? x->size : y->size;
        /* msgpack-c can leave ptr NULL for an empty string: no memcmp() then. */
        int c = n ? memcmp(x->ptr, y->ptr, n) : 0;

        if (c)
                return c;
        return x->size < y->size ? -1 : x->size > y->size;
}

/* Sorting keeps a map with many keys from costing n^2. */
int mp_map_find_dup(const msgpack_object_map *map, uint32_t *at)
{
        const msgpack_object_kv **kv;
        int found = 0;

        if (map->size < 2)
                return 0;
        kv = malloc(map->size * sizeof(*kv));
        if (!kv)
                return -1;
        for (uint32_t i = 0; i < map->size; i++)
                kv[i] = &map->ptr[i];
        qsort(kv, map->size, sizeof(*kv), mp_kv_cmp);
        for (uint32_t i = 1; i < map->size; i++) {
                if (mp_kv_cmp(&kv[i - 1], &kv[i]) == 0) {
                        *at = (uint32_t)(kv[i] - map->ptr);
                        found = 1;
                        break;
                }
        }
        free(kv);
        return found;
}

int mp_get_str(const msgpack_object *o, char *dst, size_t dstsize)
{
        if (o->type != MSGPACK_OBJECT_STR || o->via.str.size >= dstsize)
                return -1;
        if (o->via.str.size)
                memcpy(dst, o->via.str.ptr, o->via.str.size);
        dst[o->via.str.size] = '\0';
        return 0;
}

int mp_get_u64(const msgpack_object *o, uint64_t *out)
{
        if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                return -1;
        *out = o->via.u64;
        return 0;
}

const char *mp_type_name(const msgpack_object *o)
{
        switch (o->type) {
        case MSGPACK_OBJECT_NIL:
                return "nil";
        case MSGPACK_OBJECT_BOOLEAN:
                return "boolean";
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
                return "integer";
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                return "negative integer";
        case MSGPACK_OBJECT_FLOAT32:
                return "float32";
        case MSGPACK_OBJECT_FLOAT64:
                return "float64";
        case MSGPACK_OBJECT_STR:
                return "string";
        case MSGPACK_OBJECT_ARRAY:
                return "array";
        case MSGPACK_OBJECT_MAP:
                return "map";
        case MSGPACK_OBJECT_BIN:
                return "bin";
        case MSGPACK_OBJECT_EXT:
                return "ext";
        }
        return "unknown type";
}

const char *mp_quote(const char *s, size_t len, size_t max, char *out, size_t outsize)
{
        size_t n = len < max ? len : max, o = 0;

        if (outsize == 0)
                return out;
        for (size_t i = 0; i < n && o + 1 < outsize; i++)
                out[o++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
        if (n < len && o + 4 < outsize) {
                memcpy(out + o, "...", 3);
                o += 3;
        }
        out[o] = '\0';
        return out;
}

void mp_f32_le_read(float *dst, const void *src, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        if (n)
                memcpy(dst, src, n * sizeof(float));
#else
        for (size_t i = 0; i < n; i++) {
                const unsigned char *p = (const unsigned char *)src + 4 * i;
                uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                             (uint32_t)p[3] << 24;
                memcpy(&dst[i], &u, sizeof(u));
        }
#endif
}
