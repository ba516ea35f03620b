#!/usr/bin/python3
"""chain_ref.py - the independent reference of the two-stage chain test
(test_real_stream.c): computes both models directly with numpy, in float64,
from the weights and inputs the test wrote (CHAIN.json), and checks every
JSON line `kinfer tail` printed from the second stage's result topic
(TAIL.jsonl): one result per job, id "JOB:cls", the job's user, status ok,
the output within 1e-4 of the reference.

Usage: chain_ref.py CHAIN.json TAIL.jsonl N   (exit 0: all N right)"""
import json
import sys

import numpy as np


def main():
    spec = json.load(open(sys.argv[1]))
    want = int(sys.argv[3])
    d_in, d_hid, d_out, c_hid, c_out = spec["dims"]
    W1 = np.array(spec["W1"]).reshape(d_in, d_hid)
    W2 = np.array(spec["W2"]).reshape(d_hid, d_out)
    cW1 = np.array(spec["cW1"]).reshape(d_out, c_hid)
    cW2 = np.array(spec["cW2"]).reshape(c_hid, c_out)
    b1, b2 = np.array(spec["b1"]), np.array(spec["b2"])
    cb1, cb2 = np.array(spec["cb1"]), np.array(spec["cb2"])
    seen, bad = {}, []
    lines = [l for l in open(sys.argv[2]) if l.strip()]
    for line in lines:
        r = json.loads(line)
        rid = r.get("id", "")
        if not rid.endswith(":cls") or rid[:-4] not in spec["jobs"]:
            bad.append("foreign result %r" % rid)
            continue
        jid = rid[:-4]
        seen[jid] = seen.get(jid, 0) + 1
        job = spec["jobs"][jid]
        if r.get("status") != "ok" or r.get("model") != "cls" or r.get("user") != job["user"]:
            bad.append("%s: %s" % (rid, line.strip()[:300]))
            continue
        x = np.array(job["x"]).reshape(-1, d_in)
        y1 = np.tanh(x @ W1 + b1) @ W2 + b2
        y = np.maximum(y1 @ cW1 + cb1, 0) @ cW2 + cb2
        got = np.array(r["output"], dtype=float)
        if got.shape != y.shape or not np.allclose(got, y, rtol=1e-4, atol=1e-4):
            bad.append("%s: output %s, numpy %s" % (rid, got.tolist(), y.tolist()))
    for jid in spec["jobs"]:
        if seen.get(jid, 0) != 1:
            bad.append("%s:cls: %d results" % (jid, seen.get(jid, 0)))
    if len(lines) != want:
        bad.append("%d lines from kinfer tail, want %d" % (len(lines), want))
    for b in bad[:10]:
        print("chain_ref: " + b, file=sys.stderr)
    print("chain_ref: %d results checked against numpy, %d problems" % (len(lines), len(bad)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
