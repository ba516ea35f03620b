#!/usr/bin/python3
"""`kinfer bench` against a real stack (kinfer_stack.py: redis-server, the
dev broker, a worker reading the registry), its report checked against what
Redis holds, read here with redis-py and msgpack:

- drain --keep: every job has an ok result of the right shape under its own
  user; the users' usage counters rose by the job count; the run's inboxes
  hold exactly the results' ids; service_p50/p99 are the nearest-rank
  percentiles of the results' `done - started`, p50 that of `done -
  enqueued` within 2 ms (the bench times from just before the produce call);
  redis_bytes_per_result_key and _per_charge_record are what MEMORY USAGE
  and HLEN give for the same keys;
- drain without --keep: the run's results, inbox and charge records are
  deleted, the earlier run's results and inboxes stay, the counters rose;
- open with --probes: every job done, every sampled job seen, keys deleted;
- a model no worker has: error results, exit 1, the error named.

    KINFER_BIN=build /usr/bin/python3 tests/py/test_bench.py
"""
import json
import math
import os
import sys
import unittest

import msgpack
import numpy as np
import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kinfer_stack import Stack  # noqa: E402

P = "kinfer:"


def nearest_rank(v, p):
    return float(np.percentile(np.array(v, dtype=float), p, method="inverted_cdf"))


class BenchTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Stack().start()
        cls.s.run(["kinfer", "model", "init", "tiny", "--dims", "16,32,4", "--seed", "1", "-o",
                   "tiny.kmodel"])
        cls.s.run(["kinfer", "model", "push", "tiny.kmodel", "--activate"])
        cls.r = redis.Redis.from_url(cls.s.env["KINFER_REDIS"])

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()
        cls.s.cleanup()

    def keys(self, pattern):
        return {k.decode() for k in self.r.scan_iter(match=pattern, count=1000)}

    def usage_jobs(self):
        return sum(int(self.r.hget(k, "jobs") or 0) for k in self.keys(P + "{*}:usage"))

    def bench(self, *args, rc=0):
        code, out, err = self.s.run(["kinfer", "bench", "-q", "--model-file", "tiny.kmodel"] +
                                    list(args), check=False)
        self.assertEqual(code, rc, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 1, out)
        return json.loads(lines[0]), err

    def test_bench(self):
        # ---- drain, keys kept -------------------------------------------------
        jobs0, results0 = self.usage_jobs(), self.keys(P + "{*}:result:*")
        rep, _ = self.bench("--jobs", "300", "--users", "3", "--sign", "hmac", "--keep")
        for k, v in (("mode", "drain"), ("jobs", 300), ("delivered", 300), ("ok", 300),
                     ("errors", 0), ("missing", 0), ("users", 3), ("partitions", 2)):
            self.assertEqual(rep[k], v, k)
        self.assertEqual(self.usage_jobs() - jobs0, 300)
        results1 = self.keys(P + "{*}:result:*")
        new = results1 - results0
        self.assertEqual(len(new), 300)
        users, ids, svc, lat = set(), set(), [], []
        for key in new:
            user, jid = key[len(P) + 1:].split("}:result:", 1)
            res = msgpack.unpackb(self.r.get(key), raw=False)
            self.assertEqual((res["status"], res["id"], res["user"], res["model"]),
                             ("ok", jid, user, "tiny"), res)
            self.assertEqual(res["shape"], [1, 4])
            out = np.frombuffer(res["output"], dtype="<f4")
            self.assertTrue(len(out) == 4 and np.all(np.isfinite(out)))
            users.add(user)
            ids.add(jid)
            svc.append(res["done"] - res["started"])
            lat.append(res["done"] - res["enqueued"])
        self.assertEqual(len(users), 3)
        self.assertTrue(all(u.startswith("bench-") for u in users), users)
        self.assertEqual(rep["service_p50_ms"], nearest_rank(svc, 50))
        self.assertEqual(rep["service_p99_ms"], nearest_rank(svc, 99))
        self.assertLessEqual(abs(rep["p50_ms"] - nearest_rank(lat, 50)), 2.0,
                             (rep["p50_ms"], nearest_rank(lat, 50)))
        # the run's inboxes: one per user, together every id once
        inboxes = self.keys(P + "{*}:inbox:bench-*")
        self.assertEqual(len(inboxes), 3)
        popped = [i.decode() for k in inboxes for i in self.r.lrange(k, 0, -1)]
        self.assertEqual(sorted(popped), sorted(ids))
        # memory: all 300 result keys are the sample (<= 1000 published)
        mu = [self.r.memory_usage(k, samples=0) for k in new]
        self.assertLessEqual(abs(rep["redis_bytes_per_result_key"] - sum(mu) / len(mu)), 0.0015)
        charged = self.keys(P + "{*}:charged:*")
        fields = [f.decode() for k in charged for f in self.r.hkeys(k)]
        self.assertEqual(sorted(fields), sorted(ids))
        per = (sum(self.r.memory_usage(k, samples=0) for k in charged) /
               sum(self.r.hlen(k) for k in charged))
        self.assertLessEqual(abs(rep["redis_bytes_per_charge_record"] - per), 0.0015)
        self.assertTrue(math.isfinite(rep["redis_bytes_per_result"]))

        # ---- drain, keys deleted ------------------------------------------------
        rep, _ = self.bench("--jobs", "200", "--users", "3", "--sign", "ed25519")
        self.assertEqual((rep["ok"], rep["errors"], rep["missing"]), (200, 0, 0))
        self.assertEqual(self.usage_jobs() - jobs0, 500)
        self.assertEqual(self.keys(P + "{*}:result:*"), results1)
        self.assertEqual(self.keys(P + "{*}:inbox:bench-*"), inboxes)
        # the run's periods' records are gone (the first run's with them: same
        # users, same period); any left (a period boundary) hold no new id
        for k in self.keys(P + "{*}:charged:*"):
            self.assertTrue({f.decode() for f in self.r.hkeys(k)} <= ids, k)

        # ---- open loop, probed --------------------------------------------------
        rep, _ = self.bench("--mode", "open", "--rate", "200", "--duration", "1", "--probes",
                            "20", "--users", "2", "-X", "linger.ms=1")
        self.assertEqual((rep["mode"], rep["jobs"], rep["ok"], rep["missing"]),
                         ("open", 200, 200, 0))
        self.assertEqual((rep["visible_n"], rep["visible_late"]), (20, False))
        self.assertGreater(rep["visible_p50_ms"], 0)
        self.assertEqual(self.usage_jobs() - jobs0, 700)
        self.assertEqual(self.keys(P + "{*}:result:*"), results1)
        self.assertEqual(self.keys(P + "{*}:inbox:bench-*"), inboxes)

        # ---- error results ------------------------------------------------------
        rep, err = self.bench("--model", "nosuch", "--jobs", "4", "--users", "2", "--timeout",
                              "20", rc=1)
        self.assertEqual((rep["ok"], rep["errors"], rep["missing"]), (0, 4, 0))
        self.assertIn("nosuch", rep["first_error"])
        self.assertIn("4 error results", err)


if __name__ == "__main__":
    unittest.main()
