#!/usr/bin/python3
"""A result too large for the result topic does not stall its partition
(docs/protocol.md, "Result topic"; docs/operations.md, "The result topic
and exactly once"), on the dev broker, at least once.

Run from the repository root:

    KINFER_BIN=build /usr/bin/python3 tests/py/test_results_too_large.py

A real redis-server, the devbroker with one partition per topic (every job
and every result on the same partition) and one kinfer-worker with
--results-topic and `-X results.message.max.bytes=200000`. A wide model
(8 inputs -> 20,000 outputs, 80,000 bytes of float32 per row): jobs of one
user with 1 to 5 rows, so that results of 3 rows and more are over the
producer's limit, interleaved with small jobs of another user.

Checked: every job gets exactly one result message within a bounded time;
the small ones and the wide ones that fit are byte for byte the Redis result
(outputs against a numpy reference); each oversize one is a `too_large` error
result with the same id, user, model, worker, source and times as the Redis
result, the same key and headers as its job, naming the result's size and
the limit; the Redis result stays (ok, outputs right) unless the job asked
for the stream only; every job charged once; the kinfer_results_* counters
exact (read with prometheus_client's parser).

Then the brokers' side: the dev broker told to answer Produce requests with
MSG_SIZE_TOO_LARGE. Once: the result message is sent again alone and
delivered as it is (a refusal of a request with several messages says
nothing of one of them). Twice (refused alone too): a too_large result
naming the brokers' limit stands for it.

Against the code before the fix, the first test fails in its bounded wait:
the oversize job's batch is retried forever and the small jobs behind it on
the partition never get their result messages.
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
import uuid

import msgpack
import numpy as np
import redis
from confluent_kafka import Consumer, Producer
from prometheus_client.parser import text_string_to_metric_families

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, os.environ.get("KINFER_BIN", "build"))
RUN = uuid.uuid4().hex[:8]
TOPIC = "kinfer.results"
LIMIT = 200000  # the result producer's message.max.bytes
OUT = 20000     # the wide model's outputs


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc, sig=signal.SIGTERM):
    if proc and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def model_file(path, name, W, b):
    with open(path, "wb") as f:
        f.write(msgpack.packb({"format": "kinfer-model", "v": 1, "name": name, "kind": "mlp",
                               "input_dim": W.shape[0], "output_dim": W.shape[1],
                               "layers": [{"W": W.astype("<f4").tobytes(),
                                           "b": b.astype("<f4").tobytes(),
                                           "act": "identity"}]}, use_bin_type=True))


class ResultTooLargeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="kinfer-rtsize-")
        tmp = cls.tmp.name
        cls.redis_port = free_port()
        cls.redis_proc = subprocess.Popen(
            ["/usr/bin/redis-server", "--port", str(cls.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cls.r = redis.Redis(port=cls.redis_port)
        deadline = time.monotonic() + 10
        while True:
            try:
                cls.r.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        cls.broker = subprocess.Popen([os.path.join(BIN, "kinfer-devbroker"), "--partitions", "1"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=open(os.path.join(tmp, "broker.log"), "wb"))
        cls.bootstrap = cls.broker.stdout.readline().decode().strip()
        os.makedirs(os.path.join(tmp, "models"))
        rng = np.random.default_rng(17)
        cls.Ww = rng.standard_normal((8, OUT)).astype(np.float32)
        cls.bw = rng.standard_normal(OUT).astype(np.float32)
        cls.Wl = rng.standard_normal((3, 2)).astype(np.float32)
        cls.bl = rng.standard_normal(2).astype(np.float32)
        model_file(os.path.join(tmp, "models", "wide.kmodel"), "wide", cls.Ww, cls.bw)
        model_file(os.path.join(tmp, "models", "lin.kmodel"), "lin", cls.Wl, cls.bl)
        cls.worker_log = os.path.join(tmp, "worker.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KINFER_")}
        env.update(KINFER_BROKERS=cls.bootstrap,
                   KINFER_REDIS=f"redis://127.0.0.1:{cls.redis_port}/0")
        cls.http_port = free_port()
        cls.worker = subprocess.Popen(
            [os.path.join(BIN, "kinfer-worker"), "--models", os.path.join(tmp, "models"),
             "--results-topic", TOPIC, "--results-key", "input",
             "-X", f"results.message.max.bytes={LIMIT}", "-X", "session.timeout.ms=6000",
             "--http", f"127.0.0.1:{cls.http_port}"],
            env=env, stdin=subprocess.DEVNULL, stdout=open(cls.worker_log, "wb"),
            stderr=subprocess.STDOUT)
        cls.reader = Consumer({"bootstrap.servers": cls.bootstrap,
                               "group.id": f"read-{RUN}", "auto.offset.reset": "earliest",
                               "enable.auto.commit": False})
        cls.reader.subscribe([TOPIC])

    @classmethod
    def tearDownClass(cls):
        cls.reader.close()
        stop(cls.worker)
        log = open(cls.worker_log).read()
        if os.environ.get("KEEP"):
            open(os.environ["KEEP"], "w").write(log)
        if cls.worker.returncode != 0:
            sys.stderr.write(log[-5000:])
        cls.broker.stdin.close()
        stop(cls.broker)
        cls.broker.stdout.close()
        stop(cls.redis_proc)
        cls.tmp.cleanup()
        if cls.worker.returncode != 0 or "Sanitizer" in log:
            raise AssertionError(f"worker exited {cls.worker.returncode}")

    def metrics(self):
        """{name: value} of the kinfer_results_* samples, by prometheus_client."""
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics",
                                            timeout=10) as r:
                    text = r.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        return {smp.name: smp.value for fam in text_string_to_metric_families(text)
                for smp in fam.samples
                if smp.name.startswith("kinfer_results_") and not smp.labels}

    def read(self, want, timeout):
        """{job id: [(key, headers, raw value)]} until every id of want is
        in (then 1 s more, to catch a second message), or timeout s."""
        got, deadline, quiet = {}, time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            m = self.reader.poll(0.2)
            if m is not None and not m.error():
                v = msgpack.unpackb(m.value(), raw=False)
                got.setdefault(v["id"], []).append((m.key(), m.headers(), m.value()))
            if want <= set(got):
                quiet = quiet or time.monotonic() + 1
                if time.monotonic() > quiet:
                    break
        return got

    def produce(self, jobs):
        p = Producer({"bootstrap.servers": self.bootstrap, "message.max.bytes": 2000000})
        for jid, (user, model, x, key, headers, stream) in jobs.items():
            job = {"v": 2, "id": jid, "user": user, "model": model,
                   "input": {"dtype": "f32", "shape": list(x.shape),
                             "data": x.astype("<f4").tobytes()}}
            if stream:
                job["results"] = "stream"
            p.produce("kinfer.jobs", key=key, value=msgpack.packb(job, use_bin_type=True),
                      headers=headers)
        self.assertEqual(p.flush(30), 0)

    def check_ok(self, raw, model, x):
        v = msgpack.unpackb(raw, raw=False)
        self.assertEqual(v["status"], "ok", v.get("message"))
        W, b = (self.Ww, self.bw) if model == "wide" else (self.Wl, self.bl)
        out = np.frombuffer(v["output"], dtype="<f4").reshape(v["shape"])
        np.testing.assert_allclose(out, x.astype(np.float64) @ W + b, rtol=1e-4, atol=1e-4)

    def test_a_oversize_results(self):
        rng = np.random.default_rng(3)
        jobs, big = {}, {}
        for i in range(24):
            if i % 2:  # the other user's small jobs, between the wide ones
                user, model, x = "small.u", "lin", rng.standard_normal((2, 3))
            else:
                user, model = "wide:u", "wide"
                x = rng.standard_normal((1 + (i // 2) % 5, 8))
            jid = f"tl-{RUN}-{i}"
            stream = i == 8  # 5 rows, stream only
            key = f"key|{user}|{i}".encode()
            headers = [("traceparent", f"00-{i:032x}-{i:016x}-01".encode())]
            jobs[jid] = (user, model, x.astype(np.float32), key, headers, stream)
            if model == "wide" and x.shape[0] * OUT * 4 > LIMIT:
                big[jid] = x.shape[0]
        self.assertEqual(len(big), 6)  # 3, 4 and 5 rows, twice
        t0 = time.monotonic()
        self.produce(jobs)
        got = self.read(set(jobs), 30)
        took = time.monotonic() - t0
        self.assertEqual(sorted(set(jobs) - set(got)), [],
                         f"no result message after {took:.1f} s (stalled partition?)")
        for jid, (user, model, x, key, headers, stream) in jobs.items():
            self.assertEqual(len(got[jid]), 1, f"{jid}: {len(got[jid])} result messages")
            mkey, mheaders, raw = got[jid][0]
            self.assertEqual(mkey, key)
            self.assertEqual(mheaders, headers)
            stored = self.r.get(f"kinfer:{{{user}}}:result:{jid}")
            self.bucket(user, jid)  # it has a charge record
            if jid not in big:
                self.assertEqual(raw, stored, f"{jid}: result message differs from Redis")
                self.check_ok(raw, model, x)
                continue
            v = msgpack.unpackb(raw, raw=False)
            self.assertEqual((v["status"], v["error"]), ("error", "too_large"))
            size = x.shape[0] * OUT * 4  # the output's bytes
            if stream:
                self.assertIsNone(stored, "a stream-only job has no Redis result")
                self.assertIn('results: "stream"', v["message"])
                ref = {"id": jid, "user": user, "model": "wide"}
            else:
                self.check_ok(stored, model, x)  # the result itself stays in Redis
                ref = msgpack.unpackb(stored, raw=False)
                self.assertIn("in Redis", v["message"])
                self.assertIn(f"value {len(stored)} bytes", v["message"])
            for k in ("id", "user", "model", "worker", "source", "enqueued", "started", "done"):
                if k in ref:
                    self.assertEqual(v[k], ref[k], k)
            self.assertEqual(v["v"], 2)
            self.assertIn(f"message.max.bytes {LIMIT}", v["message"])
            # the message's size: the output, the rest of the map, key and header
            n = int(v["message"].split(" result message of ")[1].split(" bytes")[0])
            self.assertGreater(n, size)
            self.assertLess(n, size + 1000)
            self.assertLess(len(raw), 2000)
        # charged once each: jobs and rows of both users (the wide user's
        # oversize ones included)
        for user in ("small.u", "wide:u"):
            mine = [j for j in jobs.values() if j[0] == user]
            usage = self.r.hgetall(f"kinfer:{{{user}}}:usage")
            self.assertEqual(int(usage[b"jobs"]), len(mine))
            self.assertEqual(int(usage[b"rows"]), sum(j[2].shape[0] for j in mine))
        m = self.metrics()
        self.assertEqual(m["kinfer_results_too_large_total"], len(big))
        self.assertEqual(m["kinfer_results_produced_total"], len(jobs))
        self.assertEqual(m["kinfer_results_delivered_total"], len(jobs))
        self.assertEqual(m["kinfer_results_failed_total"], 0)
        self.assertEqual(m["kinfer_results_unacknowledged"], 0)
        log = open(self.worker_log).read()
        self.assertEqual(log.count("a too_large error result is sent in its place"), len(big))

    def bucket(self, user, jid):
        """The charge record's bucket: whichever P{U}:charged:B holds jid."""
        for k in self.r.scan_iter(f"kinfer:{{{user}}}:charged:*"):
            if self.r.hexists(k, jid):
                return k.decode().rsplit(":", 1)[1]
        self.fail(f"{jid} has no charge record")

    def broker_cmd(self, line):
        self.broker.stdin.write(line.encode() + b"\n")
        self.broker.stdin.flush()
        self.assertEqual(self.broker.stdout.readline(), b"ok\n")

    def refused(self, times):
        """One small job; the broker answers the next `times` Produce
        requests with MSG_SIZE_TOO_LARGE. Returns its result message's value
        and the metrics' change."""
        before = self.metrics()
        jid, user = f"tl-{RUN}-refused{times}", "small.u"
        x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
        self.worker.send_signal(signal.SIGSTOP)
        try:
            self.produce({jid: (user, "lin", x, b"k", [], False)})
            self.broker_cmd("request-errors Produce" + " MSG_SIZE_TOO_LARGE" * times)
        finally:
            self.worker.send_signal(signal.SIGCONT)
        got = self.read({jid}, 20)
        self.assertIn(jid, got, "no result message (stalled?)")
        self.assertEqual(len(got[jid]), 1)
        after = self.metrics()
        return got[jid][0][2], {k: after[k] - before[k] for k in after}, x, jid, user

    def test_b_broker_refuses_once(self):
        raw, delta, x, jid, user = self.refused(1)
        self.assertEqual(raw, self.r.get(f"kinfer:{{{user}}}:result:{jid}"))
        self.check_ok(raw, "lin", x)
        self.assertEqual((delta["kinfer_results_produced_total"],
                          delta["kinfer_results_failed_total"],
                          delta["kinfer_results_delivered_total"],
                          delta["kinfer_results_too_large_total"]), (2, 1, 1, 0))

    def test_c_broker_refuses_alone(self):
        raw, delta, x, jid, user = self.refused(2)
        v = msgpack.unpackb(raw, raw=False)
        self.assertEqual((v["status"], v["error"], v["id"]), ("error", "too_large", jid))
        self.assertIn("the brokers' limit (MSG_SIZE_TOO_LARGE", v["message"])
        self.check_ok(self.r.get(f"kinfer:{{{user}}}:result:{jid}"), "lin", x)
        self.assertEqual((delta["kinfer_results_produced_total"],
                          delta["kinfer_results_failed_total"],
                          delta["kinfer_results_delivered_total"],
                          delta["kinfer_results_too_large_total"]), (3, 2, 1, 1))

    def test_d_huge_headers_and_key(self):
        """A job's own headers or key can be as large as the limit (a
        hostile producer's): the too_large result goes without the headers,
        then keyed by the job id, rather than never."""
        before = self.metrics()
        x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
        big = b"h" * (LIMIT + 10000)
        jobs = {f"tl-{RUN}-hdr": ("small.u", "lin", x, b"k-hdr", [("trace", big)], False),
                f"tl-{RUN}-key": ("small.u", "lin", x, b"K" * (LIMIT + 10000), [], False)}
        self.produce(jobs)
        got = self.read(set(jobs), 20)
        for jid, (user, _, _, key, _, _) in jobs.items():
            self.assertEqual(len(got.get(jid, [])), 1, f"{jid}: {len(got.get(jid, []))} messages")
            mkey, mheaders, raw = got[jid][0]
            v = msgpack.unpackb(raw, raw=False)
            self.assertEqual((v["status"], v["error"], v["id"], v["user"]),
                             ("error", "too_large", jid, user))
            self.assertIn(f"message.max.bytes {LIMIT}", v["message"])
            self.assertIn("carries none of the job's headers", v["message"])
            self.assertFalse(mheaders)
            self.check_ok(self.r.get(f"kinfer:{{{user}}}:result:{jid}"), "lin", x)
            if jid.endswith("hdr"):
                self.assertEqual(mkey, key)
            else:  # keyed by the job id: the job's key alone is over the limit
                self.assertEqual(mkey, jid.encode())
                self.assertIn("keyed by the job id", v["message"])
        after = self.metrics()
        self.assertEqual(after["kinfer_results_too_large_total"]
                         - before["kinfer_results_too_large_total"], 2)
        self.assertEqual(after["kinfer_results_delivered_total"]
                         - before["kinfer_results_delivered_total"], 2)
        self.assertEqual(after["kinfer_results_failed_total"]
                         - before["kinfer_results_failed_total"], 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
