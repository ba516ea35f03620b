/* test_model.c - the kinfer-model file format: decoding files packed by hand,
 * encode/decode round trips, loading from disk, and refusal of corrupt files. */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <limits.h>
#include <math.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model.h"

/* ---- building model files by hand ------------------------------------ */

typedef struct tlayer_s {
        const float *W;
        size_t W_bytes; /* bytes of W written: may cut the last float */
        const float *b;
        size_t b_bytes;
        const char *act; /* NULL omits the key */
} tlayer_t;

/* Lets a test replace one value with something of the wrong type: called
 * after each key is packed (layer is -1 for top-level keys); returns 1 if it
 * packed the value itself. */
typedef int (*toverride_fn)(msgpack_packer *pk, const char *key, int layer);

typedef struct tspec_s {
        const char *format; /* NULL omits the key */
        int64_t v;
        int omit_v;
        const char *name; /* NULL omits */
        const char *kind; /* NULL omits */
        int64_t input_dim, output_dim;
        int omit_input_dim;
        uint32_t n_layers;
        const tlayer_t *layers;
        const char *extra_key; /* one more top-level key, value nil */
        toverride_fn override;
} tspec_t;

/* The reference model: 3 -> 4 (relu) -> 2 (softmax). */
static const float W0[12] = {0.5f,  -1.25f, 2.0f, 0.125f, -0.75f, 1.5f,
                             0.25f, -2.5f,  1.0f, 0.0f,   3.0f,   -0.0625f};
static const float b0[4] = {0.1f, -0.2f, 0.3f, -0.4f};
static const float W1[8] = {1.0f, -1.0f, 0.5f, 0.25f, -0.5f, 2.0f, 0.75f, -0.125f};
static const float b1[2] = {0.01f, -0.02f};

static const tlayer_t ref_layers[2] = {
    {W0, sizeof(W0), b0, sizeof(b0), "relu"},
    {W1, sizeof(W1), b1, sizeof(b1), "softmax"},
};

static tspec_t spec_default(void)
{
        tspec_t s = {0};
        s.format = "kinfer-model";
        s.v = 1;
        s.name = "digits.v2:test-1";
        s.kind = "mlp";
        s.input_dim = 3;
        s.output_dim = 2;
        s.n_layers = 2;
        s.layers = ref_layers;
        return s;
}

static void pack_cstr(msgpack_packer *pk, const char *s)
{
        msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* Writes floats as little-endian float32 bytes, whatever the host order. */
static void pack_f32_bin(msgpack_packer *pk, const float *v, size_t bytes)
{
        unsigned char *raw = malloc(bytes + 4);
        assert_non_null(raw);
        for (size_t i = 0; 4 * i < bytes; i++) {
                uint32_t u;
                memcpy(&u, &v[i], 4);
                raw[4 * i] = u & 0xff;
                raw[4 * i + 1] = (u >> 8) & 0xff;
                raw[4 * i + 2] = (u >> 16) & 0xff;
                raw[4 * i + 3] = u >> 24;
        }
        msgpack_pack_bin_with_body(pk, raw, bytes);
        free(raw);
}

static int key_overridden(const tspec_t *s, msgpack_packer *pk, const char *key, int layer)
{
        pack_cstr(pk, key);
        return s->override && s->override(pk, key, layer);
}

static void pack_layer(const tspec_t *s, msgpack_packer *pk, const tlayer_t *l, int idx)
{
        msgpack_pack_map(pk, 2 + (l->act != NULL));
        if (!key_overridden(s, pk, "W", idx))
                pack_f32_bin(pk, l->W, l->W_bytes);
        if (!key_overridden(s, pk, "b", idx))
                pack_f32_bin(pk, l->b, l->b_bytes);
        if (l->act && !key_overridden(s, pk, "act", idx))
                pack_cstr(pk, l->act);
}

/* Packs a spec in the documented key order; returns a malloc'd buffer. */
static char *build(const tspec_t *s, size_t *len)
{
        msgpack_sbuffer sb;
        msgpack_packer pk;
        /* output_dim and layers are always written; the rest may be left out */
        size_t n = 2 + (s->format != NULL) + !s->omit_v + (s->name != NULL) + (s->kind != NULL) +
                   !s->omit_input_dim + (s->extra_key != NULL);

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, n);
        if (s->format && !key_overridden(s, &pk, "format", -1))
                pack_cstr(&pk, s->format);
        if (!s->omit_v && !key_overridden(s, &pk, "v", -1))
                msgpack_pack_int64(&pk, s->v);
        if (s->name && !key_overridden(s, &pk, "name", -1))
                pack_cstr(&pk, s->name);
        if (s->kind && !key_overridden(s, &pk, "kind", -1))
                pack_cstr(&pk, s->kind);
        if (!s->omit_input_dim && !key_overridden(s, &pk, "input_dim", -1))
                msgpack_pack_int64(&pk, s->input_dim);
        if (!key_overridden(s, &pk, "output_dim", -1))
                msgpack_pack_int64(&pk, s->output_dim);
        if (!key_overridden(s, &pk, "layers", -1)) {
                msgpack_pack_array(&pk, s->n_layers);
                for (uint32_t i = 0; i < s->n_layers; i++)
                        pack_layer(s, &pk, &s->layers[i], (int)i);
        }
        if (s->extra_key) {
                pack_cstr(&pk, s->extra_key);
                msgpack_pack_nil(&pk);
        }
        *len = sb.size;
        return sb.data;
}

/* Decodes a copy of exactly len bytes, so an over-read is a valgrind error. */
static model_t *decode_exact(const void *buf, size_t len, char *err, size_t errsize)
{
        void *copy = malloc(len ? len : 1);
        model_t *m;
        assert_non_null(copy);
        memcpy(copy, buf, len);
        err[0] = '\0';
        m = model_decode(copy, len, err, errsize);
        free(copy);
        return m;
}

static void expect_refused_bytes(const void *buf, size_t len, const char *want)
{
        char err[512];
        model_t *m = decode_exact(buf, len, err, sizeof(err));
        if (m || !strstr(err, want))
                print_error("expected refusal containing \"%s\", got %s \"%s\"\n", want,
                            m ? "a model" : "NULL with", err);
        assert_null(m);
        assert_non_null(strstr(err, want));
}

static void expect_refused(const tspec_t *s, const char *want)
{
        size_t len;
        char *buf = build(s, &len);
        expect_refused_bytes(buf, len, want);
        free(buf);
}

static model_t *expect_decoded(const tspec_t *s)
{
        char err[512];
        size_t len;
        char *buf = build(s, &len);
        model_t *m = decode_exact(buf, len, err, sizeof(err));
        if (!m)
                print_error("unexpected refusal: %s\n", err);
        assert_non_null(m);
        free(buf);
        return m;
}

/* ---- activations ------------------------------------------------------- */

static void test_act_names(void **state)
{
        (void)state;
        static const char *const names[] = {"identity", "relu", "tanh", "sigmoid", "softmax"};
        for (int i = 0; i < 5; i++) {
                assert_string_equal(model_act_name((model_act_t)i), names[i]);
                assert_int_equal(model_act_parse(names[i], strlen(names[i])), i);
        }
        assert_int_equal(MODEL_ACT__CNT, 5);
        assert_int_equal(model_act_parse("gelu", 4), -1);
        assert_int_equal(model_act_parse("", 0), -1);
        assert_int_equal(model_act_parse("RELU", 4), -1);
        /* len bounds the comparison: the bytes come from msgpack strings */
        assert_int_equal(model_act_parse("relux", 4), MODEL_ACT_RELU);
        assert_int_equal(model_act_parse("relu", 3), -1);
        assert_non_null(model_act_name(MODEL_ACT__CNT));
}

/* ---- decoding ---------------------------------------------------------- */

static void test_decode_hand_built(void **state)
{
        (void)state;
        tspec_t s = spec_default();
        model_t *m = expect_decoded(&s);

        assert_string_equal(m->name, "digits.v2:test-1");
        assert_int_equal(m->version, 0);
        assert_int_equal(m->input_dim, 3);
        assert_int_equal(m->output_dim, 2);
        assert_int_equal(m->n_layers, 2);
        assert_int_equal(m->layers[0].in, 3);
        assert_int_equal(m->layers[0].out, 4);
        assert_int_equal(m->layers[0].act, MODEL_ACT_RELU);
        assert_int_equal(m->layers[1].in, 4);
        assert_int_equal(m->layers[1].out, 2);
        assert_int_equal(m->layers[1].act, MODEL_ACT_SOFTMAX);
        /* 3x4 + 4x2 weights: width 4, 2*(12+8) flops, (12+4+8+2)*4 bytes */
        assert_int_equal(m->max_width, 4);
        assert_int_equal(m->flops_per_row, 40);
        assert_int_equal(m->weight_bytes, 104);
        assert_int_equal(m->refcnt, 1);
        assert_memory_equal(m->layers[0].W, W0, sizeof(W0));
        assert_memory_equal(m->layers[0].b, b0, sizeof(b0));
        assert_memory_equal(m->layers[1].W, W1, sizeof(W1));
        assert_memory_equal(m->layers[1].b, b1, sizeof(b1));
        /* spot checks against the literals, independent of memcmp */
        assert_true(m->layers[0].W[1] == -1.25f);
        assert_true(m->layers[0].W[11] == -0.0625f);
        assert_true(m->layers[1].b[1] == -0.02f);
        for (uint32_t i = 0; i < m->n_layers; i++) {
                assert_int_equal((uintptr_t)m->layers[i].W % 64, 0);
                assert_int_equal((uintptr_t)m->layers[i].b % 64, 0);
        }
        model_unref(m);
}

/* Keys in any order are accepted; the order is only a convention. */
static void test_decode_key_order_free(void **state)
{
        (void)state;
        msgpack_sbuffer sb;
        msgpack_packer pk;
        char err[256];
        model_t *m;

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 7);
        pack_cstr(&pk, "layers");
        msgpack_pack_array(&pk, 1);
        msgpack_pack_map(&pk, 3);
        pack_cstr(&pk, "act");
        pack_cstr(&pk, "identity");
        pack_cstr(&pk, "b");
        pack_f32_bin(&pk, (const float[]){32.0f}, 4);
        pack_cstr(&pk, "W");
        pack_f32_bin(&pk, (const float[]){1.8f}, 4);
        pack_cstr(&pk, "output_dim");
        msgpack_pack_uint32(&pk, 1);
        pack_cstr(&pk, "name");
        pack_cstr(&pk, "c2f");
        pack_cstr(&pk, "input_dim");
        msgpack_pack_uint64(&pk, 1);
        pack_cstr(&pk, "kind");
        pack_cstr(&pk, "mlp");
        pack_cstr(&pk, "v");
        msgpack_pack_uint8(&pk, 1);
        pack_cstr(&pk, "format");
        pack_cstr(&pk, "kinfer-model");

        m = decode_exact(sb.data, sb.size, err, sizeof(err));
        assert_non_null(m);
        assert_string_equal(m->name, "c2f");
        assert_true(m->layers[0].W[0] == 1.8f);
        assert_true(m->layers[0].b[0] == 32.0f);
        assert_int_equal(m->layers[0].act, MODEL_ACT_IDENTITY);
        assert_int_equal(m->flops_per_row, 2);
        assert_int_equal(m->weight_bytes, 8);
        model_unref(m);
        msgpack_sbuffer_destroy(&sb);
}

static void test_decode_softmax_any_layer(void **state)
{
        (void)state;
        tlayer_t l[2] = {ref_layers[0], ref_layers[1]};
        tspec_t s = spec_default();
        model_t *m;
        l[0].act = "softmax";
        l[1].act = "tanh";
        s.layers = l;
        m = expect_decoded(&s);
        assert_int_equal(m->layers[0].act, MODEL_ACT_SOFTMAX);
        assert_int_equal(m->layers[1].act, MODEL_ACT_TANH);
        model_unref(m);
}

static void test_decode_name_limits(void **state)
{
        (void)state;
        char name64[65], name65[66];
        tspec_t s = spec_default();
        model_t *m;

        memset(name64, 'a', 64);
        name64[64] = '\0';
        memset(name65, 'a', 65);
        name65[65] = '\0';
        s.name = name64;
        m = expect_decoded(&s);
        assert_string_equal(m->name, name64);
        model_unref(m);

        s.name = name65;
        expect_refused(&s, "bad name");
        s.name = "";
        expect_refused(&s, "bad name");
        s.name = "has space";
        expect_refused(&s, "bad name \"has space\"");
        s.name = "slash/no";
        expect_refused(&s, "bad name");
        s.name = "ctl\x01";
        expect_refused(&s, "bad name \"ctl?\""); /* control chars never reach the log */
        s.name = NULL;
        expect_refused(&s, "missing name");
}

/* ---- refusals, one per corrupt class ---------------------------------- */

static void test_refuse_header(void **state)
{
        (void)state;
        tspec_t s;

        s = spec_default();
        s.format = NULL;
        expect_refused(&s, "not a kinfer-model file: no format tag");
        s.format = "onnx";
        expect_refused(&s, "not a kinfer-model file: format is \"onnx\"");
        s.format = "kinfer-model2";
        expect_refused(&s, "format is \"kinfer-model2\"");

        s = spec_default();
        s.v = 3; /* v2 adds ensemble member acts (test_ensemble.c) */
        expect_refused(&s, "unsupported model format v3");
        s.v = 0;
        expect_refused(&s, "unsupported model format v0");
        s.v = -1;
        expect_refused(&s, "unsupported model format v-1");
        s.omit_v = 1;
        expect_refused(&s, "missing v");

        s = spec_default();
        s.kind = "cnn";
        expect_refused(&s, "unknown kind \"cnn\"");
        s.kind = NULL;
        expect_refused(&s, "missing kind");
}

static void test_refuse_dims(void **state)
{
        (void)state;
        tspec_t s = spec_default();

        s.input_dim = 0;
        expect_refused(&s, "input_dim 0 out of range 1..1048576");
        s.input_dim = (int64_t)MODEL_MAX_DIM + 1;
        expect_refused(&s, "input_dim 1048577 out of range");
        s.input_dim = -3;
        expect_refused(&s, "input_dim -3 out of range");
        s.input_dim = (int64_t)1 << 40;
        expect_refused(&s, "input_dim 1099511627776 out of range");
        s.omit_input_dim = 1;
        expect_refused(&s, "missing input_dim");

        s = spec_default();
        s.output_dim = 0;
        expect_refused(&s, "output_dim 0 out of range");
        s.output_dim = (int64_t)MODEL_MAX_DIM + 1;
        expect_refused(&s, "output_dim 1048577 out of range");
        /* a legal output_dim the layers do not produce */
        s.output_dim = 3;
        expect_refused(&s, "layer 1 outputs 2 values but output_dim is 3");
}

static void test_refuse_layer_count(void **state)
{
        (void)state;
        static const float w22[4] = {1, 0, 0, 1}, b2[2] = {0, 0};
        tlayer_t many[MODEL_MAX_LAYERS + 1];
        tspec_t s = spec_default();
        model_t *m;

        s.n_layers = 0;
        expect_refused(&s, "0 layers, expected 1..64");

        for (int i = 0; i <= MODEL_MAX_LAYERS; i++)
                many[i] = (tlayer_t){w22, sizeof(w22), b2, sizeof(b2), "identity"};
        s.input_dim = 2;
        s.output_dim = 2;
        s.layers = many;
        s.n_layers = MODEL_MAX_LAYERS + 1;
        expect_refused(&s, "65 layers, expected 1..64");
        s.n_layers = MODEL_MAX_LAYERS; /* the limit itself is fine */
        m = expect_decoded(&s);
        assert_int_equal(m->n_layers, 64);
        assert_int_equal(m->flops_per_row, 64 * 2 * 4);
        model_unref(m);
}

static void test_refuse_sizes(void **state)
{
        (void)state;
        static const float W1_5x2[10] = {0};
        static const float b1_3[3] = {0}, W1_4x3[12] = {0};
        tlayer_t l[2];
        tspec_t s = spec_default();
        s.layers = l;

        /* W one float short */
        memcpy(l, ref_layers, sizeof(l));
        l[0].W_bytes = 44;
        expect_refused(&s, "layer 0: W has 44 bytes, expected 48 (3x4 float32)");
        /* W not even whole floats */
        l[0].W_bytes = 47;
        expect_refused(&s, "layer 0: W has 47 bytes, expected 48 (3x4 float32)");
        l[0].W_bytes = 0;
        expect_refused(&s, "layer 0: W has 0 bytes, expected 48");

        memcpy(l, ref_layers, sizeof(l));
        l[0].b_bytes = 15;
        expect_refused(&s, "layer 0: b has 15 bytes, not a whole number of float32");
        l[0].b_bytes = 0;
        expect_refused(&s, "layer 0: b has 0 values");
        /* b of 3 outputs: W0 (3x4) no longer matches 3x3 */
        l[0].b_bytes = 12;
        expect_refused(&s, "layer 0: W has 48 bytes, expected 36 (3x3 float32)");

        /* chaining: layer 1 built for 5 inputs after a 4-wide layer */
        memcpy(l, ref_layers, sizeof(l));
        l[1].W = W1_5x2;
        l[1].W_bytes = sizeof(W1_5x2);
        expect_refused(&s, "layer 1: W has 40 bytes, expected 32 (4x2 float32)");

        /* consistent chain, wrong final width */
        memcpy(l, ref_layers, sizeof(l));
        l[1] = (tlayer_t){W1_4x3, sizeof(W1_4x3), b1_3, sizeof(b1_3), "identity"};
        expect_refused(&s, "layer 1 outputs 3 values but output_dim is 2");
        s.output_dim = 3;
        model_unref(expect_decoded(&s));
}

static void test_refuse_non_finite(void **state)
{
        (void)state;
        float w1[8], bb0[4];
        tlayer_t l[2];
        tspec_t s = spec_default();
        s.layers = l;

        memcpy(l, ref_layers, sizeof(l));
        memcpy(w1, W1, sizeof(w1));
        w1[5] = NAN;
        l[1].W = w1;
        expect_refused(&s, "layer 1: W[5] is NaN");

        memcpy(l, ref_layers, sizeof(l));
        memcpy(bb0, b0, sizeof(bb0));
        bb0[2] = INFINITY;
        l[0].b = bb0;
        expect_refused(&s, "layer 0: b[2] is Inf");
        bb0[2] = -INFINITY;
        expect_refused(&s, "layer 0: b[2] is -Inf");

        /* the largest finite float is a legal weight */
        bb0[2] = 3.4028234663852886e38f;
        model_unref(expect_decoded(&s));
}

static void test_refuse_activation(void **state)
{
        (void)state;
        tlayer_t l[2];
        tspec_t s = spec_default();
        s.layers = l;

        memcpy(l, ref_layers, sizeof(l));
        l[1].act = "gelu";
        expect_refused(&s, "layer 1: unknown activation \"gelu\"");
        l[1].act = "Relu";
        expect_refused(&s, "layer 1: unknown activation \"Relu\"");
        l[1].act = "";
        expect_refused(&s, "layer 1: unknown activation \"\"");
        l[1].act = NULL;
        expect_refused(&s, "layer 1: missing act");
}

static int ovr_input_dim_str(msgpack_packer *pk, const char *key, int layer)
{
        if (layer == -1 && strcmp(key, "input_dim") == 0) {
                pack_cstr(pk, "3");
                return 1;
        }
        return 0;
}

static int ovr_input_dim_float(msgpack_packer *pk, const char *key, int layer)
{
        if (layer == -1 && strcmp(key, "input_dim") == 0) {
                msgpack_pack_double(pk, 3.0);
                return 1;
        }
        return 0;
}

static int ovr_format_int(msgpack_packer *pk, const char *key, int layer)
{
        if (layer == -1 && strcmp(key, "format") == 0) {
                msgpack_pack_int(pk, 1);
                return 1;
        }
        return 0;
}

static int ovr_v_str(msgpack_packer *pk, const char *key, int layer)
{
        if (layer == -1 && strcmp(key, "v") == 0) {
                pack_cstr(pk, "1");
                return 1;
        }
        return 0;
}

static int ovr_layers_map(msgpack_packer *pk, const char *key, int layer)
{
        if (layer == -1 && strcmp(key, "layers") == 0) {
                msgpack_pack_map(pk, 0);
                return 1;
        }
        return 0;
}

static int ovr_w_array(msgpack_packer *pk, const char *key, int layer)
{
        if (layer == 0 && strcmp(key, "W") == 0) {
                msgpack_pack_array(pk, 12);
                for (int i = 0; i < 12; i++)
                        msgpack_pack_float(pk, W0[i]);
                return 1;
        }
        return 0;
}

static int ovr_b_str(msgpack_packer *pk, const char *key, int layer)
{
        if (layer == 1 && strcmp(key, "b") == 0) {
                pack_cstr(pk, "12345678");
                return 1;
        }
        return 0;
}

static int ovr_act_int(msgpack_packer *pk, const char *key, int layer)
{
        if (layer == 0 && strcmp(key, "act") == 0) {
                msgpack_pack_int(pk, 1);
                return 1;
        }
        return 0;
}

static int ovr_name_bin(msgpack_packer *pk, const char *key, int layer)
{
        if (layer == -1 && strcmp(key, "name") == 0) {
                msgpack_pack_bin_with_body(pk, "abc", 3);
                return 1;
        }
        return 0;
}

static void test_refuse_types(void **state)
{
        (void)state;
        tspec_t s = spec_default();

        s.override = ovr_input_dim_str;
        expect_refused(&s, "input_dim must be an unsigned integer");
        s.override = ovr_input_dim_float;
        expect_refused(&s, "input_dim must be an unsigned integer");
        s.override = ovr_format_int;
        expect_refused(&s, "not a kinfer-model file: format is \"(not a string)\"");
        s.override = ovr_v_str;
        expect_refused(&s, "v must be an unsigned integer");
        s.override = ovr_layers_map;
        expect_refused(&s, "layers must be an array");
        s.override = ovr_w_array;
        expect_refused(&s, "layer 0: W must be bin");
        s.override = ovr_b_str;
        expect_refused(&s, "layer 1: b must be bin");
        s.override = ovr_act_int;
        expect_refused(&s, "layer 0: act must be a string");
        s.override = ovr_name_bin;
        expect_refused(&s, "name must be a string");
}

static void test_refuse_keys(void **state)
{
        (void)state;
        tspec_t s = spec_default();
        msgpack_sbuffer sb;
        msgpack_packer pk;

        s.extra_key = "extra";
        expect_refused(&s, "unknown key \"extra\"");
        s.extra_key = "name"; /* a second name key */
        expect_refused(&s, "duplicate key \"name\"");
        s.extra_key = "format";
        expect_refused(&s, "duplicate key \"format\"");

        /* a layer with an extra key and one with a non-string key */
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 7);
        pack_cstr(&pk, "format");
        pack_cstr(&pk, "kinfer-model");
        pack_cstr(&pk, "v");
        msgpack_pack_int(&pk, 1);
        pack_cstr(&pk, "name");
        pack_cstr(&pk, "m");
        pack_cstr(&pk, "kind");
        pack_cstr(&pk, "mlp");
        pack_cstr(&pk, "input_dim");
        msgpack_pack_int(&pk, 1);
        pack_cstr(&pk, "output_dim");
        msgpack_pack_int(&pk, 1);
        pack_cstr(&pk, "layers");
        msgpack_pack_array(&pk, 1);
        msgpack_pack_map(&pk, 4);
        pack_cstr(&pk, "W");
        pack_f32_bin(&pk, (const float[]){1.0f}, 4);
        pack_cstr(&pk, "b");
        pack_f32_bin(&pk, (const float[]){0.0f}, 4);
        pack_cstr(&pk, "act");
        pack_cstr(&pk, "relu");
        pack_cstr(&pk, "bias");
        msgpack_pack_nil(&pk);
        expect_refused_bytes(sb.data, sb.size, "layer 0: unknown key \"bias\"");
        msgpack_sbuffer_destroy(&sb);

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 1);
        msgpack_pack_int(&pk, 7);
        msgpack_pack_nil(&pk);
        expect_refused_bytes(sb.data, sb.size, "key 0 is not a string");
        msgpack_sbuffer_destroy(&sb);
}

static void test_refuse_not_a_model(void **state)
{
        (void)state;
        static const unsigned char array[] = {0x93, 0x01, 0x02, 0x03};
        static const unsigned char str[] = {0xa3, 'a', 'b', 'c'};
        static const unsigned char layer_s[] = {0x81, 0xa6, 'l', 'a',  'y',
                                                'e',  'r',  's', 0x91, 0x05};
        expect_refused_bytes(array, sizeof(array),
                             "not a kinfer-model file: top level is not a map");
        expect_refused_bytes(str, sizeof(str), "top level is not a map");
        expect_refused_bytes("", 0, "not valid msgpack");
        expect_refused_bytes("{\"format\":\"kinfer-model\"}", 25, "not valid msgpack");
        /* a layer that is a number: the format check comes first */
        expect_refused_bytes(layer_s, sizeof(layer_s), "no format tag");
}

static void test_refuse_corrupt_msgpack(void **state)
{
        (void)state;
        tspec_t s = spec_default();
        size_t len;
        char *buf = build(&s, &len);
        char *more;
        /* array32 and bin32 headers declaring ~4 GiB in a few bytes: refused
         * by the bound check before msgpack-c reserves anything */
        static const unsigned char huge_array[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0x01};
        static const unsigned char huge_map[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'v', 0x01};
        static const unsigned char huge_bin[] = {0xc6, 0xff, 0xff, 0xff, 0xff, 0x00};
        static const unsigned char never_used[] = {0xc1};

        expect_refused_bytes(huge_array, sizeof(huge_array), "not valid msgpack");
        expect_refused_bytes(huge_map, sizeof(huge_map), "not valid msgpack");
        expect_refused_bytes(huge_bin, sizeof(huge_bin), "not valid msgpack");
        expect_refused_bytes(never_used, sizeof(never_used), "not valid msgpack");

        /* a valid file followed by one more object */
        more = malloc(len + 1);
        assert_non_null(more);
        memcpy(more, buf, len);
        more[len] = (char)0xc0;
        expect_refused_bytes(more, len + 1, "not valid msgpack");
        free(more);
        free(buf);
}

static int ovr_layers_huge(msgpack_packer *pk, const char *key, int layer)
{
        static const unsigned char hdr[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
        if (layer == -1 && strcmp(key, "layers") == 0) {
                /* array32 of 2^32-1 layers, then a single nil */
                pk->callback(pk->data, (const char *)hdr, sizeof(hdr));
                msgpack_pack_nil(pk);
                return 1;
        }
        return 0;
}

static void test_refuse_huge_declared_inside(void **state)
{
        (void)state;
        tspec_t s = spec_default();
        s.override = ovr_layers_huge;
        expect_refused(&s, "not valid msgpack");
}

/* Every prefix of a valid file is refused and none crashes or over-reads:
 * each is decoded from a buffer of exactly that size. */
static void test_truncated_every_prefix(void **state)
{
        (void)state;
        tspec_t s = spec_default();
        size_t len;
        char *buf = build(&s, &len);
        char err[512];

        assert_true(len > 100);
        for (size_t cut = 0; cut < len; cut++) {
                model_t *m = decode_exact(buf, cut, err, sizeof(err));
                if (m || !strstr(err, "not valid msgpack"))
                        print_error("prefix of %zu/%zu bytes: %s\n", cut, len,
                                    m ? "accepted" : err);
                assert_null(m);
                assert_non_null(strstr(err, "not valid msgpack"));
        }
        model_unref(decode_exact(buf, len, err, sizeof(err))); /* the whole file is fine */
        free(buf);
}

/* Overwriting any byte with any of a few troublesome values must yield a
 * refusal or a model that passed validation, never a crash or a leak. */
static void test_corrupt_every_byte(void **state)
{
        (void)state;
        static const unsigned char vals[] = {0x00, 0x7f, 0x80, 0xc1, 0xc6, 0xdd, 0xdf, 0xff};
        tspec_t s = spec_default();
        size_t len;
        char *buf = build(&s, &len);
        char err[512];

        for (size_t i = 0; i < len; i++) {
                for (size_t v = 0; v < sizeof(vals); v++) {
                        char saved = buf[i];
                        model_t *m;
                        buf[i] = (char)vals[v];
                        m = decode_exact(buf, len, err, sizeof(err));
                        if (m) {
                                /* anything accepted obeys the invariants */
                                assert_true(m->n_layers >= 1);
                                assert_int_equal(m->layers[0].in, m->input_dim);
                                assert_int_equal(m->layers[m->n_layers - 1].out, m->output_dim);
                                for (uint32_t k = 0; k < m->layers[0].in * m->layers[0].out; k++)
                                        assert_true(isfinite(m->layers[0].W[k]));
                                model_unref(m);
                        } else {
                                assert_true(err[0] != '\0');
                        }
                        buf[i] = saved;
                }
        }
        free(buf);
}

/* ---- model_new_mlp ----------------------------------------------------- */

static void test_new_mlp(void **state)
{
        (void)state;
        const uint32_t dims[4] = {5, 7, 3, 2};
        const model_act_t acts[3] = {MODEL_ACT_TANH, MODEL_ACT_RELU, MODEL_ACT_SIGMOID};
        char err[256];
        model_t *m = model_new_mlp("net", 3, dims, acts, err, sizeof(err));

        assert_non_null(m);
        assert_string_equal(m->name, "net");
        assert_int_equal(m->input_dim, 5);
        assert_int_equal(m->output_dim, 2);
        assert_int_equal(m->n_layers, 3);
        assert_int_equal(m->max_width, 7);
        assert_int_equal(m->flops_per_row, 2 * (35 + 21 + 6));
        assert_int_equal(m->weight_bytes, 4 * (35 + 7 + 21 + 3 + 6 + 2));
        assert_int_equal(m->refcnt, 1);
        for (uint32_t i = 0; i < 3; i++) {
                const model_layer_t *l = &m->layers[i];
                assert_int_equal(l->in, dims[i]);
                assert_int_equal(l->out, dims[i + 1]);
                assert_int_equal(l->act, acts[i]);
                assert_int_equal((uintptr_t)l->W % 64, 0);
                assert_int_equal((uintptr_t)l->b % 64, 0);
                for (uint32_t k = 0; k < l->in * l->out; k++)
                        assert_true(l->W[k] == 0.0f);
                for (uint32_t k = 0; k < l->out; k++)
                        assert_true(l->b[k] == 0.0f);
        }
        /* every weight is writable: valgrind checks the bounds */
        for (uint32_t i = 0; i < 3; i++) {
                memset(m->layers[i].W, 0, (size_t)dims[i] * dims[i + 1] * sizeof(float));
                memset(m->layers[i].b, 0, dims[i + 1] * sizeof(float));
        }
        model_unref(m);
}

static void expect_new_refused(const char *name, uint32_t n, const uint32_t *dims,
                               const model_act_t *acts, const char *want)
{
        char err[256] = "";
        model_t *m = model_new_mlp(name, n, dims, acts, err, sizeof(err));
        if (m || !strstr(err, want))
                print_error("expected \"%s\", got \"%s\"\n", want, err);
        assert_null(m);
        assert_non_null(strstr(err, want));
}

static void test_new_mlp_refused(void **state)
{
        (void)state;
        const model_act_t acts[2] = {MODEL_ACT_RELU, MODEL_ACT_IDENTITY};
        const model_act_t bad[2] = {MODEL_ACT_RELU, (model_act_t)99};
        const uint32_t ok[3] = {2, 3, 1};
        const uint32_t zero[3] = {2, 0, 1};
        const uint32_t wide[3] = {2, MODEL_MAX_DIM + 1, 1};
        /* 2^20 x 2^20 x 4 bytes = 4 TiB: refused without trying to allocate */
        const uint32_t huge[3] = {MODEL_MAX_DIM, MODEL_MAX_DIM, 1};
        model_t *m;
        char err[256];

        expect_new_refused("bad name", 2, ok, acts, "bad name");
        expect_new_refused(NULL, 2, ok, acts, "bad name");
        expect_new_refused("m", 0, ok, acts, "0 layers");
        expect_new_refused("m", MODEL_MAX_LAYERS + 1, ok, acts, "65 layers");
        expect_new_refused("m", 2, zero, acts, "layer size 0 (dims[1]) out of range");
        expect_new_refused("m", 2, wide, acts, "layer size 1048577 (dims[1]) out of range");
        expect_new_refused("m", 2, huge, acts, "more than the 4 GiB limit");
        expect_new_refused("m", 2, ok, bad, "layer 1: unknown activation 99");
        expect_new_refused("m", 2, NULL, acts, "no layer sizes");

        /* the widest single dimension is fine when the product is small */
        {
                const uint32_t edge[2] = {MODEL_MAX_DIM, 1};
                m = model_new_mlp("edge", 1, edge, acts, err, sizeof(err));
                assert_non_null(m);
                assert_int_equal(m->max_width, MODEL_MAX_DIM);
                assert_int_equal(m->weight_bytes, 4 * (MODEL_MAX_DIM + 1));
                model_unref(m);
        }
}

/* ---- encoding ---------------------------------------------------------- */

static void test_encode_matches_hand_built(void **state)
{
        (void)state;
        tspec_t s = spec_default();
        size_t len, elen;
        char *buf = build(&s, &len), *enc = NULL;
        char err[256];
        model_t *m = decode_exact(buf, len, err, sizeof(err));

        assert_non_null(m);
        assert_int_equal(model_encode(m, &enc, &elen, err, sizeof(err)), 0);
        /* same keys, same order, same encodings as the hand-packed file */
        assert_int_equal(elen, len);
        assert_memory_equal(enc, buf, len);
        free(enc);
        free(buf);
        model_unref(m);
}

static uint32_t rng_state = 12345;
static uint32_t rng_next(void)
{
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 17;
        rng_state ^= rng_state << 5;
        return rng_state;
}

static void test_encode_round_trip(void **state)
{
        (void)state;
        const uint32_t dims[4] = {6, 9, 4, 3};
        const model_act_t acts[3] = {MODEL_ACT_SIGMOID, MODEL_ACT_SOFTMAX, MODEL_ACT_TANH};
        char err[256], *enc = NULL;
        size_t elen;
        model_t *m = model_new_mlp("round.trip", 3, dims, acts, err, sizeof(err)), *d;

        assert_non_null(m);
        for (uint32_t i = 0; i < 3; i++) {
                model_layer_t *l = &m->layers[i];
                for (uint32_t k = 0; k < l->in * l->out; k++)
                        l->W[k] = (float)((int32_t)rng_next()) / 1e6f;
                for (uint32_t k = 0; k < l->out; k++)
                        l->b[k] = (float)((int32_t)rng_next()) / 1e9f;
        }
        /* values whose bits must survive exactly */
        m->layers[0].W[0] = -0.0f;
        m->layers[0].W[1] = 1e-45f; /* smallest subnormal */
        m->layers[0].W[2] = -3.4028234663852886e38f;
        m->layers[2].b[2] = 0.1f;

        assert_int_equal(model_encode(m, &enc, &elen, err, sizeof(err)), 0);
        d = decode_exact(enc, elen, err, sizeof(err));
        assert_non_null(d);
        assert_string_equal(d->name, "round.trip");
        assert_int_equal(d->input_dim, 6);
        assert_int_equal(d->output_dim, 3);
        assert_int_equal(d->n_layers, 3);
        assert_int_equal(d->max_width, 9);
        assert_int_equal(d->flops_per_row, m->flops_per_row);
        assert_int_equal(d->weight_bytes, m->weight_bytes);
        for (uint32_t i = 0; i < 3; i++) {
                assert_int_equal(d->layers[i].in, dims[i]);
                assert_int_equal(d->layers[i].out, dims[i + 1]);
                assert_int_equal(d->layers[i].act, acts[i]);
                assert_memory_equal(d->layers[i].W, m->layers[i].W,
                                    (size_t)dims[i] * dims[i + 1] * sizeof(float));
                assert_memory_equal(d->layers[i].b, m->layers[i].b, dims[i + 1] * sizeof(float));
        }
        assert_true(signbit(d->layers[0].W[0]));
        assert_true(d->layers[0].W[1] == 1e-45f);
        free(enc);
        model_unref(d);
        model_unref(m);
}

static void test_encode_refused(void **state)
{
        (void)state;
        const uint32_t dims[3] = {2, 2, 1};
        const model_act_t acts[2] = {MODEL_ACT_RELU, MODEL_ACT_IDENTITY};
        char err[256] = "", *enc = NULL;
        size_t elen = 0;
        model_t *m = model_new_mlp("m", 2, dims, acts, err, sizeof(err));

        assert_non_null(m);
        m->layers[1].W[1] = NAN;
        assert_int_equal(model_encode(m, &enc, &elen, err, sizeof(err)), -1);
        assert_null(enc);
        assert_non_null(strstr(err, "layer 1: W[1] is NaN"));
        m->layers[1].W[1] = 0.0f;

        m->layers[0].act = (model_act_t)42;
        assert_int_equal(model_encode(m, &enc, &elen, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "unknown activation 42"));
        m->layers[0].act = MODEL_ACT_RELU;

        m->output_dim = 2;
        assert_int_equal(model_encode(m, &enc, &elen, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "output_dim"));
        m->output_dim = 1;

        strcpy(m->name, "no spaces");
        assert_int_equal(model_encode(m, &enc, &elen, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "bad name"));
        assert_null(enc);
        model_unref(m);
}

/* ---- files ------------------------------------------------------------- */

/* Writes buf to a new temp file; its path goes to path (PATH_MAX bytes). */
static void write_temp(char *path, const void *buf, size_t len)
{
        const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
        int fd;
        assert_true((size_t)snprintf(path, PATH_MAX, "%s/kinfer-model-XXXXXX", dir) < PATH_MAX);
        fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, buf, len), (ssize_t)len);
        close(fd);
}

static void test_load_file(void **state)
{
        (void)state;
        tspec_t s = spec_default();
        size_t len;
        char *buf = build(&s, &len);
        char path[PATH_MAX];
        char err[512];
        model_t *m;

        write_temp(path, buf, len);
        m = model_load_file(path, err, sizeof(err));
        if (!m)
                print_error("%s\n", err);
        assert_non_null(m);
        assert_string_equal(m->name, "digits.v2:test-1");
        assert_memory_equal(m->layers[1].W, W1, sizeof(W1));
        model_unref(m);
        unlink(path);
        free(buf);
}

static void test_load_file_errors(void **state)
{
        (void)state;
        char err[512], want[PATH_MAX + 64];
        char path[PATH_MAX];
        tspec_t s = spec_default();
        size_t len;
        char *buf;
        model_t *m;

        m = model_load_file("/nonexistent-kinfer-dir/model.kfm", err, sizeof(err));
        assert_null(m);
        assert_non_null(strstr(err, "/nonexistent-kinfer-dir/model.kfm"));
        assert_non_null(strstr(err, "No such file"));

        /* a decode error keeps the path in front of the decoder's message */
        s.v = 3;
        buf = build(&s, &len);
        write_temp(path, buf, len);
        m = model_load_file(path, err, sizeof(err));
        assert_null(m);
        snprintf(want, sizeof(want), "%s: unsupported model format v3", path);
        assert_string_equal(err, want);
        unlink(path);

        /* a truncated file on disk */
        write_temp(path, buf, len / 2);
        m = model_load_file(path, err, sizeof(err));
        assert_null(m);
        assert_non_null(strstr(err, path));
        assert_non_null(strstr(err, "not valid msgpack"));
        unlink(path);
        free(buf);

        write_temp(path, "", 0);
        m = model_load_file(path, err, sizeof(err));
        assert_null(m);
        assert_non_null(strstr(err, path));
        assert_non_null(strstr(err, "not valid msgpack"));
        unlink(path);

        m = model_load_file("/", err, sizeof(err));
        assert_null(m);
        assert_non_null(strstr(err, "/: is a directory"));

        /* errstr may be NULL or tiny: never written past its size */
        assert_null(model_load_file("/nonexistent-kinfer-dir/x", NULL, 0));
        memset(err, 'x', sizeof(err));
        assert_null(model_load_file("/nonexistent-kinfer-dir/x", err, 4));
        assert_string_equal(err, "/no");
        assert_int_equal(err[4], 'x');
}

/* ---- reference counting ------------------------------------------------ */

static void test_ref_unref(void **state)
{
        (void)state;
        const uint32_t dims[2] = {1, 1};
        const model_act_t acts[1] = {MODEL_ACT_IDENTITY};
        char err[128];
        model_t *m = model_new_mlp("r", 1, dims, acts, err, sizeof(err));

        assert_non_null(m);
        assert_int_equal(m->refcnt, 1);
        assert_ptr_equal(model_ref(m), m);
        assert_int_equal(m->refcnt, 2);
        model_ref(m);
        assert_int_equal(m->refcnt, 3);
        model_unref(m);
        model_unref(m);
        assert_int_equal(m->refcnt, 1);
        model_unref(NULL);
        model_unref(m); /* frees: valgrind reports a leak otherwise */
}

#define REF_THREADS 4
#define REF_ROUNDS  1000000

static pthread_barrier_t ref_start;

static void *ref_worker(void *arg)
{
        model_t *m = arg; /* this thread owns one reference */
        /* all threads start together so their updates really overlap */
        pthread_barrier_wait(&ref_start);
        for (int i = 0; i < REF_ROUNDS; i++) {
                model_ref(m);
                model_unref(m);
        }
        model_unref(m); /* the last thread to get here frees it */
        return NULL;
}

static void test_ref_threads(void **state)
{
        (void)state;
        const uint32_t dims[2] = {4, 4};
        const model_act_t acts[1] = {MODEL_ACT_RELU};
        char err[128];
        pthread_t th[REF_THREADS];
        model_t *m = model_new_mlp("shared", 1, dims, acts, err, sizeof(err));

        assert_non_null(m);
        assert_int_equal(pthread_barrier_init(&ref_start, NULL, REF_THREADS + 1), 0);
        for (int i = 0; i < REF_THREADS; i++)
                model_ref(m);
        for (int i = 0; i < REF_THREADS; i++)
                assert_int_equal(pthread_create(&th[i], NULL, ref_worker, m), 0);
        pthread_barrier_wait(&ref_start);
        for (int i = 0; i < REF_ROUNDS; i++) {
                model_ref(m);
                model_unref(m);
        }
        for (int i = 0; i < REF_THREADS; i++)
                pthread_join(th[i], NULL);
        pthread_barrier_destroy(&ref_start);
        assert_int_equal(m->refcnt, 1); /* a lost update would leave 0 or 2+ */
        model_unref(m);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_act_names),
            cmocka_unit_test(test_decode_hand_built),
            cmocka_unit_test(test_decode_key_order_free),
            cmocka_unit_test(test_decode_softmax_any_layer),
            cmocka_unit_test(test_decode_name_limits),
            cmocka_unit_test(test_refuse_header),
            cmocka_unit_test(test_refuse_dims),
            cmocka_unit_test(test_refuse_layer_count),
            cmocka_unit_test(test_refuse_sizes),
            cmocka_unit_test(test_refuse_non_finite),
            cmocka_unit_test(test_refuse_activation),
            cmocka_unit_test(test_refuse_types),
            cmocka_unit_test(test_refuse_keys),
            cmocka_unit_test(test_refuse_not_a_model),
            cmocka_unit_test(test_refuse_corrupt_msgpack),
            cmocka_unit_test(test_refuse_huge_declared_inside),
            cmocka_unit_test(test_truncated_every_prefix),
            cmocka_unit_test(test_corrupt_every_byte),
            cmocka_unit_test(test_new_mlp),
            cmocka_unit_test(test_new_mlp_refused),
            cmocka_unit_test(test_encode_matches_hand_built),
            cmocka_unit_test(test_encode_round_trip),
            cmocka_unit_test(test_encode_refused),
            cmocka_unit_test(test_load_file),
            cmocka_unit_test(test_load_file_errors),
            cmocka_unit_test(test_ref_unref),
            cmocka_unit_test(test_ref_threads),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
