#!/usr/bin/python3
"""The result topic (--results-topic, at least once) from outside, on the dev
broker: docs/protocol.md, "Result topic".

Run from the repository root:

    KINFER_BIN=build /usr/bin/python3 tests/py/test_results_topic.py

A real redis-server, the devbroker and one kinfer-worker with
--results-topic kinfer.results --results-key input. Jobs are msgpack packed
here from the protocol document and produced with confluent-kafka, each with
a message key of its own and two headers (a trace context). Checked: one
result message per job, keyed by the job message's key, carrying its headers
unchanged, whose value is byte for byte the Redis result, with the output of
a numpy reference; an error result too; a job with `results: "stream"` has a
result message but no Redis result (and is charged); `kinfer tail
--from-beginning` prints every one as a JSON line that parses, with the same
ids and outputs.

The worker's /metrics (--http), read with prometheus_client's parser: the
kinfer_results_* counters equal the result messages read back from the topic,
pass `promtool check metrics`, and include every kinfer_results_* name that
deploy/monitoring uses; a delivery the dev broker refuses for real (the next
Produce request answered TOPIC_AUTHORIZATION_FAILED) counts once as failed,
and the result is sent again and counted delivered once.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import re
import time
import unittest
import urllib.request
import uuid

import msgpack
import numpy as np
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, os.environ.get("KINFER_BIN", "build"))
RUN = uuid.uuid4().hex[:8]
TOPIC = "kinfer.results"


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


class ResultTopicTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="kinfer-results-")
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
        cls.broker = subprocess.Popen([os.path.join(BIN, "kinfer-devbroker"), "--partitions", "3"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=open(os.path.join(tmp, "broker.log"), "wb"))
        cls.bootstrap = cls.broker.stdout.readline().decode().strip()
        os.makedirs(os.path.join(tmp, "models"))
        rng = np.random.default_rng(11)
        cls.W = rng.standard_normal((3, 2)).astype(np.float32)
        cls.b = rng.standard_normal(2).astype(np.float32)
        with open(os.path.join(tmp, "models", "lin.kmodel"), "wb") as f:
            f.write(msgpack.packb({"format": "kinfer-model", "v": 1, "name": "lin", "kind": "mlp",
                                   "input_dim": 3, "output_dim": 2,
                                   "layers": [{"W": cls.W.astype("<f4").tobytes(),
                                               "b": cls.b.astype("<f4").tobytes(),
                                               "act": "identity"}]}, use_bin_type=True))
        cls.worker_log = os.path.join(tmp, "worker.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KINFER_")}
        env.update(KINFER_BROKERS=cls.bootstrap,
                   KINFER_REDIS=f"redis://127.0.0.1:{cls.redis_port}/0")
        cls.env = env
        cls.http_port = free_port()
        cls.worker = subprocess.Popen(
            [os.path.join(BIN, "kinfer-worker"), "--models", os.path.join(tmp, "models"),
             "--results-topic", TOPIC, "--results-key", "input", "-X", "session.timeout.ms=6000",
             "--http", f"127.0.0.1:{cls.http_port}"],
            env=env, stdin=subprocess.DEVNULL, stdout=open(cls.worker_log, "wb"),
            stderr=subprocess.STDOUT)

    @classmethod
    def tearDownClass(cls):
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
        # a clean shutdown, and nothing a sanitizer build would report
        if cls.worker.returncode != 0 or "Sanitizer" in log:
            raise AssertionError(f"worker exited {cls.worker.returncode}")

    def scrape(self):
        """The worker's /metrics as text (it may still be starting)."""
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics",
                                            timeout=10) as r:
                    return r.read().decode()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def results_metrics(self, text=None):
        """{name: value} of the kinfer_results_* samples, read by
        prometheus_client's parser (not the worker's own code)."""
        out = {}
        for fam in text_string_to_metric_families(text or self.scrape()):
            for smp in fam.samples:
                if smp.name.startswith("kinfer_results_") and not smp.labels:
                    out[smp.name] = smp.value
        return out

    def read_topic(self, want, timeout=60):
        """{job id: [raw values]} of the result topic, from the beginning,
        until `want` ids are in (then 1 s more, to catch a duplicate)."""
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"read-{uuid.uuid4().hex}",
                      "enable.auto.commit": False})
        # assigned, not subscribed: no group join to wait for
        parts = c.list_topics(TOPIC, timeout=10).topics[TOPIC].partitions
        c.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in parts])
        got, deadline, quiet = {}, time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and not m.error():
                got.setdefault(msgpack.unpackb(m.value(), raw=False)["id"], []).append(m.value())
            if want <= set(got):
                quiet = quiet or time.monotonic() + 1
                if time.monotonic() > quiet:
                    break
        c.close()
        return got

    def test_result_messages(self):
        rng = np.random.default_rng(5)
        jobs = {}
        p = Producer({"bootstrap.servers": self.bootstrap})
        for i in range(40):
            jid, user = f"rt-{RUN}-{i}", f"u{i % 3}"
            job = {"v": 2, "id": jid, "user": user, "model": "lin"}
            if i == 7:  # wrong width: an error result
                x = rng.standard_normal((1, 4)).astype(np.float32)
            else:
                x = rng.standard_normal((1 + i % 3, 3)).astype(np.float32)
            if i in (3, 4):
                job["results"] = "stream"
            job["input"] = {"dtype": "f32", "shape": list(x.shape),
                            "data": x.astype("<f4").tobytes()}
            key = f"key|{user}|{i}"  # separators a key may hold
            headers = [("traceparent", f"00-{i:032x}-{i:016x}-01".encode()),
                       ("kinfer.test", b"\x00\xffbytes")]
            sent = headers
            if i == 9:  # signed (badly): the signature headers stay with the job
                sent = headers + [("kinfer-sig", b"00" * 32),
                                  ("kinfer-key-id", b"k0123456789abcdef"),
                                  ("kinfer-sig-alg", b"hmac-sha256")]
            p.produce("kinfer.jobs", key=key, value=msgpack.packb(job, use_bin_type=True),
                      headers=sent)
            jobs[jid] = (user, x, key, headers, i)
        self.assertEqual(p.flush(30), 0)

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"check-{RUN}",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe([TOPIC])
        got, deadline = {}, time.monotonic() + 60
        while len(got) < len(jobs) and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            v = msgpack.unpackb(m.value(), raw=False)
            self.assertNotIn(v["id"], got, "two result messages for one job")
            got[v["id"]] = (m.key().decode(), m.headers(), m.value(), v)
        c.close()
        self.assertEqual(set(got), set(jobs))
        # Every result message read back is one the worker counts delivered;
        # none failed, none waits for a delivery report, no transactions.
        text = self.scrape()
        self.assertEqual(self.results_metrics(text), {
            "kinfer_results_produced_total": len(got),
            "kinfer_results_delivered_total": len(got),
            "kinfer_results_failed_total": 0,
            "kinfer_results_unacknowledged": 0,
            "kinfer_results_transactions_committed_total": 0,
            "kinfer_results_transactions_aborted_total": 0,
            "kinfer_results_too_large_total": 0,
            "kinfer_results_transaction_seconds_count": 0,
            "kinfer_results_transaction_seconds_sum": 0,
        })
        chk = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                             capture_output=True)
        self.assertEqual(chk.returncode, 0, chk.stdout + chk.stderr)
        self.assertEqual(chk.stdout + chk.stderr, b"", "promtool lint findings")
        # the result-topic metrics that deploy/monitoring names exist
        # (test_metrics_http.py checks the others, on a worker without one)
        mon = os.path.join(REPO, "deploy", "monitoring")
        used = set(re.findall(r"\bkinfer_results_[a-z_]+",
                              open(os.path.join(mon, "kinfer-alerts.yml")).read() +
                              open(os.path.join(mon, "kinfer-dashboard.json")).read()))
        self.assertTrue(used, "deploy/monitoring names no kinfer_results_ metric")
        exported = {smp.name for fam in text_string_to_metric_families(text)
                    for smp in fam.samples}
        self.assertEqual(sorted(u for u in used if u not in exported
                                and u + "_bucket" not in exported), [])
        for jid, (user, x, key, headers, i) in jobs.items():
            mkey, mheaders, raw, v = got[jid]
            self.assertEqual(mkey, key)
            self.assertEqual(mheaders, headers)
            self.assertEqual(v["user"], user)
            stored = self.r.get(f"kinfer:{{{user}}}:result:{jid}")
            if i in (3, 4):
                self.assertIsNone(stored, "a stream-only job has no Redis result")
            else:
                self.assertEqual(stored, raw, "result message differs from the Redis result")
            if i == 7:
                self.assertEqual((v["status"], v["error"]), ("error", "shape_mismatch"))
                continue
            if i == 9:
                self.assertEqual((v["status"], v["error"]), ("error", "unauthorized"))
                continue
            self.assertEqual(v["status"], "ok")
            out = np.frombuffer(v["output"], dtype="<f4").reshape(v["shape"])
            np.testing.assert_allclose(out, x.astype(np.float64) @ self.W + self.b,
                                       rtol=1e-5, atol=1e-5)
        # the stream-only jobs are charged like any other
        charged = sum(int(self.r.hget(f"kinfer:{{u{u}}}:usage", "jobs") or 0) for u in range(3))
        self.assertEqual(charged, len(jobs) - 2)  # the shape error, the unauthorized job

        tail = subprocess.run(
            [os.path.join(BIN, "kinfer"), "tail", "--topic", TOPIC, "--from-beginning",
             "--max", str(len(jobs)), "--timeout", "30"],
            env=self.env, capture_output=True, text=True, timeout=60)
        self.assertEqual(tail.returncode, 0, tail.stderr)
        lines = [json.loads(line) for line in tail.stdout.splitlines()]
        self.assertEqual(sorted(o["id"] for o in lines), sorted(jobs))
        for o in lines:
            v = got[o["id"]][3]
            self.assertEqual(o["status"], v["status"])
            if o["status"] == "ok":
                np.testing.assert_allclose(
                    np.array(o["output"]),
                    np.frombuffer(v["output"], dtype="<f4").reshape(v["shape"]), rtol=1e-6)

    def test_z_delivery_refused(self):
        """Runs after test_result_messages (its counts are the baseline).
        The worker frozen, one job produced, then the dev broker told to
        answer the next Produce request with TOPIC_AUTHORIZATION_FAILED (a
        permanent error: no retry inside librdkafka), the worker thawed:
        its first result message fails, the batch is sent again until it
        is delivered; every failed attempt counts, as the log tells them."""
        before = self.results_metrics()
        jid, user = f"rt-{RUN}-refused", "u1"
        p = Producer({"bootstrap.servers": self.bootstrap})
        self.worker.send_signal(signal.SIGSTOP)
        try:
            p.produce("kinfer.jobs", key=user, value=msgpack.packb(
                {"v": 2, "id": jid, "user": user, "model": "lin", "input": [[1.0, 2.0, 3.0]]},
                use_bin_type=True))
            self.assertEqual(p.flush(30), 0)
            # the job is in; from here on only the worker produces
            self.broker.stdin.write(b"request-errors Produce TOPIC_AUTHORIZATION_FAILED\n")
            self.broker.stdin.flush()
            self.assertEqual(self.broker.stdout.readline(), b"ok\n")
        finally:
            self.worker.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 60
        while True:
            now = self.results_metrics()
            if now["kinfer_results_delivered_total"] > before["kinfer_results_delivered_total"]:
                break
            self.assertLess(time.monotonic(), deadline, f"not delivered: {now}")
            time.sleep(0.1)
        delta = {k: now[k] - before[k] for k in now}
        # Each failed attempt is one line of the log: "1 of 1 messages" when
        # the broker refused the message produced, "0 of 1" when librdkafka
        # refused it at once (it remembers the topic as unauthorized until
        # its next metadata refresh; how often depends on timing).
        log = open(self.worker_log).read()
        refused = log.count("results of 1 jobs not sent yet: result topic kinfer.results: "
                            "1 of 1 messages: Broker: Topic authorization failed")
        local = log.count("results of 1 jobs not sent yet: result topic kinfer.results: "
                          "0 of 1 messages: Broker: Topic authorization failed")
        self.assertEqual(refused, 1, log[-3000:])
        self.assertEqual(delta["kinfer_results_failed_total"], refused + local, delta)
        self.assertEqual(delta["kinfer_results_produced_total"], refused + 1, delta)
        self.assertEqual(delta["kinfer_results_delivered_total"], 1, delta)
        self.assertEqual(now["kinfer_results_unacknowledged"], 0)
        # at least once: the refused message was not written, the retry was
        got = self.read_topic({jid})
        self.assertEqual(len(got[jid]), 1)
        self.assertEqual(got[jid][0], self.r.get(f"kinfer:{{{user}}}:result:{jid}"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
