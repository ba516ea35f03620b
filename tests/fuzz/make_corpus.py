#!/usr/bin/python3
"""make_corpus.py - writes the fuzzers' seed corpora (tests/fuzz/corpus/{job,model,result}/).

A few valid inputs and one of each kind of edge case the decoders must refuse,
so libFuzzer starts from the interesting shapes instead of from nothing. The
files are committed; run this again only to change them:

    /usr/bin/python3 tests/fuzz/make_corpus.py
"""
import os
import struct

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))


def f32(*vals):
    return struct.pack("<%df" % len(vals), *vals)


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def job(**over):
    j = {"v": 2, "id": "alice-1", "user": "alice", "model": "xor",
         "input": {"dtype": "f32", "shape": [2, 2], "data": f32(0, 1, 1, 0)}}
    for k, v in over.items():
        if v is None:
            j.pop(k, None)
        else:
            j[k] = v
    return pack(j)


JOBS = {
    "ok_f32": job(),
    "ok_rows": job(input=[[0.5, 1, -2], [3, 4, 5.25]]),
    "ok_all_fields": job(version=3, output="softmax", deadline=1795419200519, ttl=60,
                         extra={"nested": [1, 2, {"x": None}]}),
    "ok_argmax_ints": job(output="argmax", input=[[-1, 2**40, -(2**40)], [0, 0, 0]]),
    "ok_limit_64x16": job(input=[[float(c) for c in range(16)] for _ in range(64)]),
    "ok_one_value": job(input={"dtype": "f32", "shape": [1, 1], "data": f32(-0.0)}),
    "nan_f32": job(input={"dtype": "f32", "shape": [1, 2], "data": f32(1, float("nan"))}),
    "inf_rows": job(input=[[1.0, float("inf")]]),
    "f64_over_f32": job(input=[[1e39, 0.0]]),
    "ragged": job(input=[[1, 2], [3]]),
    "empty_rows": job(input=[]),
    "empty_row": job(input=[[]]),
    "shape_1e9_rows": job(input={"dtype": "f32", "shape": [10**9, 2], "data": f32(1, 2)}),
    "shape_short_data": job(input={"dtype": "f32", "shape": [2, 2], "data": f32(1, 2, 3)}),
    "shape_extra_key": job(input={"dtype": "f32", "shape": [1, 1], "data": f32(1), "order": "C"}),
    "dtype_f16": job(input={"dtype": "f16", "shape": [1, 1], "data": b"\0\0"}),
    "missing_id": job(id=None),
    "id_bad_char": job(id="bad id!"),
    "id_129_chars": job(id="a" * 129),
    "user_int": job(user=7),
    "v1": job(v=1),
    "v3": job(v=3),
    "v_str": job(v="2"),
    "inbox": job(inbox="alice-run"),
    "inbox_brace": job(inbox="a}b"),
    "user_brace": job(user="{alice}"),
    "ttl_zero": job(ttl=0),
    "version_neg": job(version=-1),
    "output_bad": job(output="logits"),
    "input_str": job(input="1,2"),
    "top_array": pack([1, "id", "x"]),
    "top_int": pack(42),
    "empty": b"",
    "never_used_c1": b"\xc1",
    "truncated": job()[:-3],
    "trailing_byte": job() + b"\x00",
    "array32_huge": b"\xdd\xff\xff\xff\xff\x01",
    "map32_huge": b"\xdf\xff\xff\xff\xff\xa1v\x01",
    "str32_huge": b"\x81\xa2id\xdb\xff\xff\xff\xffabc",
    "bin32_huge": b"\x81\xa5input\xc6\xff\xff\xff\xff\x00",
    "ext32_huge": b"\x81\xa1x\xc9\xff\xff\xff\xff\x01",
    "deep": b"\x91" * 40 + b"\x01",
    "int_key": b"\x81\x01\x02",
}
# A key twice, which a dict cannot hold: packed by hand.
JOBS["duplicate_id"] = (b"\x86" + pack("v") + pack(2) + pack("id") + pack("a") + pack("id") +
                        pack("b") + pack("user") + pack("u") + pack("model") + pack("m") +
                        pack("input") + pack([[1]]))


def model(layers=None, **over):
    if layers is None:
        layers = [{"W": f32(1, 1, 1, 1), "b": f32(0, -1), "act": "relu"},
                  {"W": f32(1, -2), "b": f32(0), "act": "identity"}]
    m = {"format": "kinfer-model", "v": 1, "name": "xor", "kind": "mlp",
         "input_dim": 2, "output_dim": 1, "layers": layers}
    for k, v in over.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    return pack(m)


def ensemble(members=None, **over):
    if members is None:
        members = [{"model": "a", "weight": 0.5}, {"model": "b", "version": 3, "weight": 0.5}]
    e = {"format": "kinfer-model", "v": 1, "name": "vote", "kind": "ensemble",
         "input_dim": 2, "output_dim": 3, "members": members}
    e.update(over)
    return pack(e)


MODELS = {
    "ok_xor": model(),
    "ok_three_acts": model(layers=[
        {"W": f32(*[0.5] * 6), "b": f32(0.1, 0.2, 0.3), "act": "tanh"},
        {"W": f32(*[-0.25] * 6), "b": f32(1, 2), "act": "sigmoid"},
        {"W": f32(1, 2, 3, 4), "b": f32(0, 0), "act": "softmax"}], output_dim=2),
    "ok_huge_weights": model(layers=[
        {"W": f32(3e38, 3e38, 3e38, 3e38), "b": f32(3e38, 3e38), "act": "identity"},
        {"W": f32(3e38, -3e38), "b": f32(0), "act": "identity"}]),
    "nan_weight": model(layers=[{"W": f32(float("nan"), 1), "b": f32(0), "act": "relu"}]),
    "W_short": model(layers=[{"W": f32(1), "b": f32(0), "act": "relu"}]),
    "b_odd_bytes": model(layers=[{"W": f32(1, 1), "b": b"\0\0\0", "act": "relu"}]),
    "output_dim_wrong": model(output_dim=3),
    "input_dim_zero": model(input_dim=0),
    "input_dim_huge": model(input_dim=2**21),
    "unknown_act": model(layers=[{"W": f32(1, 1), "b": f32(0), "act": "gelu"}]),
    "layer_extra_key": model(layers=[{"W": f32(1, 1), "b": f32(0), "act": "relu", "x": 1}]),
    "no_layers": model(layers=[]),
    "format_wrong": model(format="onnx"),
    "v2": model(v=2),
    "name_bad": model(name="../etc"),
    "kind_cnn": model(kind="cnn"),
    "extra_key": model(extra=1),
    "not_map": pack([1, 2, 3]),
    "bin32_huge": b"\x81\xa6layers\xc6\xff\xff\xff\xff",
    "truncated": model()[:-5],
    "ens_ok": ensemble(),
    "ens_v2_acts": ensemble([{"model": "a", "weight": 0.25, "act": "softmax"},
                             {"model": "b", "version": 3, "weight": 0.75, "act": "sigmoid"}], v=2),
    "ens_v1_act": ensemble([{"model": "a", "weight": 1, "act": "softmax"}]),
    "ens_unknown_act": ensemble([{"model": "a", "weight": 1, "act": "gelu"}], v=2),
    "ens_act_not_str": ensemble([{"model": "a", "weight": 1, "act": 7}], v=2),
    "ens_v3": ensemble(v=3),
}


def result(**over):
    r = {"v": 2, "status": "ok", "id": "alice-1", "user": "alice", "model": "xor",
         "worker": "vm:1", "source": "kinfer.jobs/0/7", "enqueued": 1795419200519,
         "started": 1795419200520, "done": 1795419200521, "version": 1, "shape": [2, 1],
         "output": f32(0, 1), "window": 1795417200}
    for k, v in over.items():
        if v is None:
            r.pop(k, None)
        else:
            r[k] = v
    return pack(r)


ERR = dict(status="error", version=None, shape=None, output=None, window=None,
           error="shape_mismatch", message="input has 3 columns")
RESULTS = {
    "ok": result(),
    "error": result(**ERR),
    "quota": result(**dict(ERR, error="quota_exceeded", retry_after=5, window=1795417200)),
    "shape_mismatch": result(shape=[3, 3]),
    "shape_huge": result(shape=[2**32 - 1, 2**32 - 1]),
    "shape_neg": result(shape=[-1, 1]),
    "no_user": result(user=None),
    "id_int": result(id=5),
    "status_bad": result(status="maybe"),
    "unknown_field": result(extra={"a": [1, 2, 3]}),
    "not_map": pack([1, 2]),
    "map32_huge": b"\xdf\xff\xff\xff\xff\xa6status",
}


def write(sub, seeds):
    d = os.path.join(HERE, "corpus", sub)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as fp:
            fp.write(data)


if __name__ == "__main__":
    write("job", JOBS)
    write("model", MODELS)
    write("result", RESULTS)
