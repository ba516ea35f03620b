/* mp_pack.h - the msgpack writing kinfer does in more than one place (jobs,
 * model files, result values), on msgpack-c's packer.
 *
 * Every function returns msgpack-c's convention: 0, or non-zero when the
 * buffer could not grow (out of memory); results may be OR-ed together and
 * checked once at the end. */
#ifndef KF_MP_PACK_H
#define KF_MP_PACK_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

/* A NUL-terminated string as a msgpack str. */
int mp_pack_cstr(msgpack_packer *pk, const char *s);

/* A map entry whose key is a string: key then a str or a uint value. */
int mp_pack_kv_str(msgpack_packer *pk, const char *key, const char *val);
int mp_pack_kv_u64(msgpack_packer *pk, const char *key, uint64_t val);

/* n float32 values as one bin of 4n bytes, little-endian whatever the
 * host's byte order (the wire format of inputs, weights and outputs). */
int mp_pack_f32_le(msgpack_packer *pk, const float *v, size_t n);

#endif
