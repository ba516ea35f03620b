/* mp_pack.c - msgpack writing helpers (mp_pack.h). */
#include "mp_pack.h"

#include <string.h>

int mp_pack_cstr(msgpack_packer *pk, const char *s)
{
        return msgpack_pack_str_with_body(pk, s, strlen(s));
}

int mp_pack_kv_str(msgpack_packer *pk, const char *key, const char *val)
{
        /* Two statements: the operands of | are not evaluated in a set order. */
        int rc = mp_pack_cstr(pk, key);
        return rc | mp_pack_cstr(pk, val);
}

int mp_pack_kv_u64(msgpack_packer *pk, const char *key, uint64_t val)
{
        int rc = mp_pack_cstr(pk, key);
        return rc | msgpack_pack_uint64(pk, val);
}

int mp_pack_f32_le(msgpack_packer *pk, const float *v, size_t n)
{
        int rc = msgpack_pack_bin(pk, n * sizeof(float));
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        if (n)
                rc |= msgpack_pack_bin_body(pk, v, n * sizeof(float));
#else
        /* staged through a small buffer, not one allocation the size of v */
        unsigned char tmp[4096];
        size_t o = 0;
        for (size_t i = 0; i < n && rc == 0; i++) {
                uint32_t u;
                memcpy(&u, &v[i], sizeof(u));
                tmp[o++] = (unsigned char)u;
                tmp[o++] = (unsigned char)(u >> 8);
                tmp[o++] = (unsigned char)(u >> 16);
                tmp[o++] = (unsigned char)(u >> 24);
                if (o == sizeof(tmp) || i + 1 == n) {
                        rc = msgpack_pack_bin_body(pk, tmp, o);
                        o = 0;
                }
        }
#endif
        return rc;
}
