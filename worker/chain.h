/* chain.h - chaining (--chain-model): a result message of another kinfer
 * stage (results_topic.h), consumed as a job of this worker's model, so a
 * two-stage pipeline (an embedder, then a classifier) needs no glue code.
 *
 * The mapping (docs/protocol.md, "Chaining"): the upstream result's
 * `output` (rows x cols, float32) becomes the job's `input`; the user stays
 * the user (who is charged, whose keys it writes); the id becomes
 * "UPSTREAM_ID:MODEL", so each stage's result has its own Redis key and the
 * id names its lineage; `model` is the chained model.  An upstream error
 * result becomes an error result (bad_request) of this stage naming the
 * upstream error; a message that is not a result, or whose chained id would
 * be over 128 characters, has no address here and is dead-lettered.
 *
 * Pure: bytes in, bytes out; any thread. */
#ifndef KW_CHAIN_H
#define KW_CHAIN_H

#include <stddef.h>

/* Maps the result message val (len bytes) to a job of model.  Returns 0 and
 * the job's msgpack in *out (malloc'd, caller frees; *outlen bytes); 1 and a
 * job with an address but a placeholder input, with why saying why it must
 * be an error result; or -1 with why, *out NULL: no address. */
int kw_chain_map(const void *val, size_t len, const char *model, char **out, size_t *outlen,
                 char *why, size_t why_size);

#endif
