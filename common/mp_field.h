/* mp_field.h - reading untrusted msgpack: one object out of a buffer, then
 * its maps' fields, strings, numbers and float32 data, strictly.
 *
 * The read-side partner of mp_pack.h.  Every decoder of kinfer's formats
 * (jobs, model files, result values) goes through here, so "a key that is
 * not a string", "a field given twice" and "an unsigned integer" mean the
 * same everywhere.  Nothing here prints or allocates beyond what is said;
 * messages are the caller's (each format words its own), built from the
 * codes and indices these functions return and from mp_quote(). */
#ifndef KF_MP_FIELD_H
#define KF_MP_FIELD_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

/* Unpacks the one object buf holds into *up (msgpack_unpacked_init'ed by
 * the caller, who destroys it in every case).  The bytes are walked by
 * mp_bound_check first (nesting at most max_depth), so msgpack-c never
 * reserves memory for lengths that are not there.  Returns MP_UNPACK_OK,
 * MP_UNPACK_BAD with the reason in errstr ("at byte 1: array declares ..."),
 * or MP_UNPACK_NOMEM. */
typedef enum {
        MP_UNPACK_OK = 0,
        MP_UNPACK_BAD,   /* not exactly one well-formed object: errstr says why */
        MP_UNPACK_NOMEM, /* msgpack-c could not allocate */
} mp_unpack_rc_t;

mp_unpack_rc_t mp_unpack_one(const void *buf, size_t len, int max_depth, msgpack_unpacked *up,
                             char *errstr, size_t errstr_size);

/* What mp_map_fields found wrong, at entry *at of the map. */
typedef enum {
        MP_MAP_OK = 0,
        MP_MAP_KEY_NOT_STR, /* a key is not a string */
        MP_MAP_UNKNOWN,     /* MP_MAP_STRICT: a key is not one of names */
        MP_MAP_DUP,         /* a known key is given again */
} mp_map_rc_t;

#define MP_MAP_STRICT 0x1 /* a key not in names is an error (else it is skipped) */
/* A repeated known key is not reported: its value is left NULL (so neither
 * copy is used) and the scan goes on.  For callers that check every key,
 * known or not, for repeats themselves (mp_map_find_dup). */
#define MP_MAP_DUP_NULL  0x2
#define MP_MAP_MAX_NAMES 32

/* Points vals[i] at the value of the key names[i] (NULL when absent), for
 * n_names <= MP_MAP_MAX_NAMES names.  Entries are looked at in order and the
 * first problem is returned with *at set to its entry index; vals is then
 * partly filled. */
mp_map_rc_t mp_map_fields(const msgpack_object_map *map, const char *const *names, size_t n_names,
                          int flags, const msgpack_object **vals, uint32_t *at);

/* Whether any key of map (all strings) is given twice, in O(n log n).
 * Returns 0 for none, 1 with *at the index of an entry whose key is a
 * repeat, or -1 when out of memory. */
int mp_map_find_dup(const msgpack_object_map *map, uint32_t *at);

/* 1 if o is a string equal to s. */
int mp_str_eq(const msgpack_object *o, const char *s);

/* A string into dst (NUL-terminated); -1 if o is not a string or does not
 * fit in dstsize. */
int mp_get_str(const msgpack_object *o, char *dst, size_t dstsize);

/* A non-negative integer; -1 if o is anything else. */
int mp_get_u64(const msgpack_object *o, uint64_t *out);

/* "string", "negative integer", "map", ...: for "got %s" in messages. */
const char *mp_type_name(const msgpack_object *o);

/* Untrusted text for a message: at most max bytes of s, anything but
 * printable ASCII shown as '?', "..." after a cut, no quotes added; so a
 * message never carries control characters, broken UTF-8 or megabytes from
 * the input.  out needs max + 4 bytes to hold all of it.  Returns out. */
const char *mp_quote(const char *s, size_t len, size_t max, char *out, size_t outsize);

/* n little-endian float32 values from src (a msgpack bin: no alignment),
 * whatever the host's byte order.  The reverse of mp_pack_f32_le. */
void mp_f32_le_read(float *dst, const void *src, size_t n);

#endif
