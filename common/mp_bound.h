/* mp_bound.h - structural validation of an untrusted msgpack buffer.
 *
 * msgpack-c 4.0.0's unpacker reserves memory for the element count or byte
 * length an object *declares*, before the bytes exist: a 5-byte array32
 * header can make it reserve gigabytes.  mp_bound_check() walks the encoded
 * bytes without allocating and accepts the buffer only if every declared
 * array, map, str, bin and ext length fits in the bytes that remain (each
 * array element and map entry needs at least one byte), nesting stays within
 * max_depth, and exactly one object fills the buffer.  After it succeeds,
 * msgpack_unpack() cannot reserve more than a small multiple of len. */
#ifndef KF_MP_BOUND_H
#define KF_MP_BOUND_H

#include <stddef.h>

/* Returns 0 if buf holds exactly one well-formed object, or -1 with a message
 * in errstr naming the offset and what is wrong ("at byte 1: array declares
 * 4294967295 elements but only 3 bytes remain"). */
int mp_bound_check(const void *buf, size_t len, int max_depth, char *errstr, size_t errstr_size);

#endif
