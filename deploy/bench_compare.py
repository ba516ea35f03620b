#!/usr/bin/python3
"""bench_compare.py - the side-by-side table of two bench.sh runs per workload
(old against new builds, or the dev broker against a genuine Kafka): medians
of each run's JSON lines (kinfer bench), drain and open loop.

  bench_compare.py AB "W1 W2" "10 25 50" A:PROC B:PROC [C:PROC...] HEADING

AB holds A/W*/ and B/W*/ (the runs' BENCH_OUT); PROC is the process whose
CPU is the broker's on that side (kinfer-devbroke, java); HEADING opens the
table.  Written for bench.sh, which calls it for both of its comparisons."""
import json
import os
import statistics
import sys

ab, only, pcts = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
sides = [s.split(":", 1) for s in sys.argv[4:-1]]  # two or more runs
broker = dict(sides)
heading = sys.argv[-1]
W, R = "kinfer-worker", "redis-server"


def lines(side, w, kind):
    f = os.path.join(ab, side, w, "%s.%s.json" % (w, kind))
    return [json.loads(l) for l in open(f) if l.strip()] if os.path.exists(f) else []


def med(js, *path):
    v = []
    for j in js:
        for p in path:
            j = j.get(p) if isinstance(j, dict) else None
        if isinstance(j, (int, float)):
            v.append(j)
    return round(statistics.median(v), 2) if v else "-"


def errors(js):
    return sum(j.get("errors", 0) + j.get("missing", 0) for j in js) if js else "-"


def row(*cells):
    print("| " + " | ".join(str(c) for c in cells) + " |")


print("\n" + heading)
print("\n| workload | run | drain jobs/s | write lag ms | worker µs/job | broker µs/job | "
      "redis µs/job | redis B/result | B/charge record | machine cores | other cores | "
      "errors |")
print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for w in only:
    for side, _ in sides:
        d = lines(side, w, "drain")
        row(w, side, med(d, "jobs_per_s"), med(d, "write_lag_ms"),
            med(d, "cpu", W, "us_per_job"), med(d, "cpu", broker[side], "us_per_job"),
            med(d, "cpu", R, "us_per_job"), med(d, "redis_bytes_per_result"),
            med(d, "redis_bytes_per_charge_record"), med(d, "cpu", "machine", "cores"),
            med(d, "cpu", "other", "cores"), errors(d))
print("\nOpen loop, both at the %s run's rates:" % sides[0][0])
print("\n| workload | run | rate jobs/s | achieved | p50 ms | p99 ms | visible p50 | "
      "visible p99 | redis µs/job | machine cores | other cores | errors |")
print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for w in only:
    for pct in pcts:
        for side, _ in sides:
            o = lines(side, w, "open" + pct)
            row("%s @%s%%" % (w, pct), side, med(o, "rate"), med(o, "jobs_per_s"),
                med(o, "p50_ms"), med(o, "p99_ms"), med(o, "visible_p50_ms"),
                med(o, "visible_p99_ms"), med(o, "cpu", R, "us_per_job"),
                med(o, "cpu", "machine", "cores"), med(o, "cpu", "other", "cores"), errors(o))
