#!/usr/bin/python3
"""The worker's HTTP endpoint (--http), scraped from outside while it works.

Run from the repository root:

    KINFER_BIN=build /usr/bin/python3 tests/py/test_metrics_http.py

A real redis-server, the devbroker and one kinfer-worker with --http. Jobs
are produced here with confluent-kafka (msgpack by hand from docs/protocol.md):
ok jobs, jobs with the wrong number of columns, jobs for a model that does
not exist, and jobs sent twice. /metrics is parsed with prometheus_client's
own parser (Debian's python3-prometheus-client) and checked by promtool; the
counters must equal what was submitted, per code. /readyz must go 503 while
redis-server is down and 200 when it is back, /healthz stay 200. The worker
logs in JSON (--log-format json): every line must parse, and its summary
lines (--log-summary-s 1) must add up to the jobs it consumed.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
import uuid

import msgpack
import numpy as np
import redis
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, os.environ.get("KINFER_BIN", "build"))
RUN = uuid.uuid4().hex[:8]
N_OK, N_SHAPE, N_UNKNOWN, N_DUP = 600, 100, 50, 40


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


def get(url):
    """(status, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def model_file(name, W, b):
    return msgpack.packb({"format": "kinfer-model", "v": 1, "name": name, "kind": "mlp",
                          "input_dim": W.shape[0], "output_dim": W.shape[1],
                          "layers": [{"W": W.astype("<f4").tobytes(),
                                      "b": b.astype("<f4").tobytes(), "act": "identity"}]},
                         use_bin_type=True)


class MetricsEndpointTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="kinfer-metrics-")
        tmp = cls.tmp.name
        cls.procs = []
        cls.redis_port = free_port()
        cls.start_redis()
        cls.r = redis.Redis(port=cls.redis_port)
        cls.broker = subprocess.Popen([os.path.join(BIN, "kinfer-devbroker"), "--partitions", "2"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=open(os.path.join(tmp, "broker.log"), "wb"))
        cls.procs.append(cls.broker)
        cls.bootstrap = cls.broker.stdout.readline().decode().strip()
        os.makedirs(os.path.join(tmp, "models"))
        rng = np.random.default_rng(7)
        cls.W = rng.standard_normal((4, 3)).astype(np.float32)
        cls.b = rng.standard_normal(3).astype(np.float32)
        with open(os.path.join(tmp, "models", "lin.kmodel"), "wb") as f:
            f.write(model_file("lin", cls.W, cls.b))
        cls.http_port = free_port()
        cls.base = f"http://127.0.0.1:{cls.http_port}"
        cls.worker_log = os.path.join(tmp, "worker.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KINFER_")}
        env.update(KINFER_BROKERS=cls.bootstrap, KINFER_REDIS=f"redis://127.0.0.1:{cls.redis_port}/0")
        cls.worker = subprocess.Popen(
            [os.path.join(BIN, "kinfer-worker"), "--models", os.path.join(tmp, "models"),
             "--http", f"127.0.0.1:{cls.http_port}", "-X", "session.timeout.ms=6000",
             "--log-format", "json", "--log-summary-s", "1",
             "-X", "statistics.interval.ms=300", "-X", "auto.commit.interval.ms=300"],
            env=env, stdin=subprocess.DEVNULL, stdout=open(cls.worker_log, "wb"),
            stderr=subprocess.STDOUT)
        cls.procs.append(cls.worker)

    @classmethod
    def start_redis(cls):
        cls.redis_proc = subprocess.Popen(
            ["/usr/bin/redis-server", "--port", str(cls.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=cls.redis_port).ping():
                    return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    @classmethod
    def tearDownClass(cls):
        stop(cls.worker)
        if cls.worker.returncode not in (0, None):
            sys.stderr.write(open(cls.worker_log).read()[-5000:])
        cls.broker.stdin.close()
        stop(cls.broker)
        stop(cls.redis_proc)
        cls.tmp.cleanup()

    def scrape(self):
        status, body = get(self.base + "/metrics")
        self.assertEqual(status, 200, body)
        return body

    def samples(self, body):
        """{(name, frozenset(labels)): value}, read by prometheus_client's parser."""
        out = {}
        for fam in text_string_to_metric_families(body):
            for s in fam.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def wait_ready(self, want, timeout=40):
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, body = get(self.base + "/readyz")
            except (urllib.error.URLError, ConnectionError):
                status, body = None, "no answer"
            if status == want:
                return body
            if time.monotonic() > deadline:
                self.fail(f"/readyz is {status} ({body!r}), not {want}, after {timeout} s")
            time.sleep(0.2)

    def test_1_counts_match_what_was_submitted(self):
        self.wait_ready(200)
        p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        user = "m-" + RUN
        sent = 0
        ids = []

        def job(jid, cols, model="lin"):
            nonlocal sent
            p.produce("kinfer.jobs", key=user, value=msgpack.packb(
                {"v": 2, "id": jid, "user": user, "model": model,
                 "input": [[0.5] * cols]}, use_bin_type=True))
            sent += 1

        for i in range(N_OK):
            ids.append(f"ok-{i}")
            job(ids[-1], 4)
        for i in range(N_SHAPE):
            ids.append(f"shape-{i}")
            job(ids[-1], 5)
        for i in range(N_UNKNOWN):
            ids.append(f"unk-{i}")
            job(ids[-1], 4, model="nosuch")
        p.flush(30)
        self.wait_results(user, ids)
        for i in range(N_DUP):   # the same ids again: duplicates, after their results exist
            job(f"ok-{i}", 4)
        p.flush(30)
        deadline = time.monotonic() + 30
        while True:
            s = self.samples(self.scrape())
            if s.get(("kinfer_messages_consumed_total", frozenset()), 0) >= sent and \
               s.get(("kinfer_jobs_duplicate_total", frozenset()), 0) >= N_DUP:
                break
            if time.monotonic() > deadline:
                self.fail(f"consumed {s.get(('kinfer_messages_consumed_total', frozenset()))} "
                          f"of {sent}")
            time.sleep(0.2)

        def jobs(model, version, code):
            return s.get(("kinfer_jobs_total", frozenset(
                {"model": model, "version": version, "code": code}.items())), 0)

        self.assertEqual(s[("kinfer_messages_consumed_total", frozenset())], sent)
        self.assertEqual(jobs("lin", "1", "ok"), N_OK)
        self.assertEqual(jobs("lin", "1", "shape_mismatch"), N_SHAPE)
        self.assertEqual(jobs("", "", "unknown_model"), N_UNKNOWN)
        self.assertEqual(s[("kinfer_jobs_duplicate_total", frozenset())], N_DUP)
        total = sum(v for (n, _), v in s.items() if n == "kinfer_jobs_total")
        self.assertEqual(total, N_OK + N_SHAPE + N_UNKNOWN)
        # every job's step (result or duplicate) has its end-to-end time, every
        # consumed message its queue wait, every batch its size
        self.assertEqual(s[("kinfer_end_to_end_seconds_count", frozenset())], total + N_DUP)
        self.assertEqual(s[("kinfer_queue_wait_seconds_count", frozenset())], sent)
        self.assertEqual(s[("kinfer_batch_jobs_sum", frozenset())], sent)
        self.assertGreater(s[("kinfer_redis_round_trips_total", frozenset())], 0)
        self.assertGreater(s[("process_resident_memory_bytes", frozenset())], 0)
        # Prometheus' own checker
        chk = subprocess.run(["promtool", "check", "metrics"], input=self.scrape().encode(),
                             capture_output=True)
        self.assertEqual(chk.returncode, 0, chk.stdout + chk.stderr)
        self.assertEqual(chk.stdout + chk.stderr, b"", "promtool lint findings")

    def wait_results(self, user, ids, timeout=60):
        keys = [f"kinfer:{{{user}}}:result:{i}" for i in ids]
        deadline = time.monotonic() + timeout
        while True:
            have = sum(self.r.exists(*keys[i:i + 500]) for i in range(0, len(keys), 500))
            if have == len(keys):
                return
            if time.monotonic() > deadline:
                self.fail(f"{have} of {len(keys)} results after {timeout} s")
            time.sleep(0.2)

    def test_2_readyz_follows_redis(self):
        self.wait_ready(200)
        self.assertEqual(get(self.base + "/healthz")[0], 200)
        stop(self.redis_proc)
        body = self.wait_ready(503, timeout=15)
        self.assertIn("redis", body)
        self.assertEqual(get(self.base + "/healthz")[0], 200, "alive while Redis is away")
        type(self).start_redis()
        self.wait_ready(200, timeout=30)
        self.assertEqual(get(self.base + "/healthz")[0], 200)

    def test_4_json_log_and_summaries(self):
        import json
        import re
        deadline = time.monotonic() + 10
        while True:   # the last summary covers every job once a period passed
            consumed = self.samples(self.scrape())[("kinfer_messages_consumed_total", frozenset())]
            lines = open(self.worker_log, encoding="utf-8").read().splitlines()
            recs = [json.loads(l) for l in lines]   # every line is one JSON object
            total = 0
            for r in recs:
                self.assertEqual(set(r), {"ts", "level", "prog", "pid", "msg"}, r)
                self.assertEqual(r["prog"], "kinfer-worker")
                self.assertIn(r["level"], ("error", "warn", "info", "debug"))
                m = re.match(r"last \d+ s: (\d+) jobs \(", r["msg"])
                if m:
                    total += int(m.group(1))
            if total == consumed or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.assertEqual(total, consumed, "the summary lines add up to the jobs consumed")
        self.assertGreater(consumed, 0)

    def test_5_lag_and_work_remaining(self):
        """With Redis frozen nothing is committed: the lag of the jobs' partition
        grows to exactly what was produced, and the work remaining is that many
        times the model's cost (lin: 1 row x 2 x 4 x 3 = 24 flops). Thawed, both
        go back to 0."""
        self.wait_ready(200)

        def lag_and_work():
            s = self.samples(self.scrape())
            lag = {dict(k)["partition"]: v for (n, k), v in s.items()
                   if n == "kinfer_consumer_lag"}
            return lag, s.get(("kinfer_work_remaining_flops", frozenset()))

        def wait_for(pred, what, timeout=30):
            deadline = time.monotonic() + timeout
            while True:
                lag, work = lag_and_work()
                if pred(lag, work):
                    return lag, work
                if time.monotonic() > deadline:
                    self.fail(f"{what}: lag {lag}, work remaining {work}")
                time.sleep(0.2)

        # a partition nothing was ever committed on has no lag yet (librdkafka: -1)
        wait_for(lambda lag, work: len(lag) >= 1 and sum(lag.values()) == 0 and work == 0,
                 "the partitions at lag 0 before")
        user, n = "lag-" + RUN, 200
        self.redis_proc.send_signal(signal.SIGSTOP)
        try:
            p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
            for i in range(n):   # to both partitions (one never committed on, maybe)
                p.produce("kinfer.jobs", partition=i % 2, value=msgpack.packb(
                    {"v": 2, "id": f"lag-{i}", "user": user, "model": "lin",
                     "input": [[1.0, 2.0, 3.0, 4.0]]}, use_bin_type=True))
            p.flush(30)
            lag, work = wait_for(lambda lag, work: len(lag) == 2 and sum(lag.values()) == n,
                                 f"a lag of {n} while Redis is frozen")
            self.assertEqual(lag, {"0": n / 2, "1": n / 2})
            self.assertEqual(work, n * 24)
        finally:
            self.redis_proc.send_signal(signal.SIGCONT)
        wait_for(lambda lag, work: sum(lag.values()) == 0 and work == 0,
                 "lag and work back to 0 after Redis thawed", timeout=60)

    def test_6_dashboard_and_alerts_use_real_metrics(self):
        """deploy/monitoring: every metric the dashboard and the alert rules
        name is one this worker exports; every dashboard query is PromQL that
        Prometheus parses (promtool, as recording rules); the alert rules pass
        promtool's check and their unit tests."""
        import json
        import re
        mon = os.path.join(REPO, "deploy", "monitoring")
        exported = {s_name for (s_name, _) in self.samples(self.scrape())}
        dash = json.load(open(os.path.join(mon, "kinfer-dashboard.json")))
        exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
        self.assertGreater(len(exprs), 10)
        rules_text = open(os.path.join(mon, "kinfer-alerts.yml")).read()
        used = set(re.findall(r"\b((?:kinfer|process)_[a-z_]+)", " ".join(exprs) + rules_text))
        self.assertTrue(used)
        # only a worker with a result topic exports these: test_results_topic.py
        used = {u for u in used if not u.startswith("kinfer_results_")}
        missing = sorted(u for u in used if u not in exported and u + "_bucket" not in exported)
        self.assertEqual(missing, [], "metrics named in deploy/monitoring that no worker exports")
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
            f.write("groups:\n  - name: dashboard\n    rules:\n")
            for i, e in enumerate(exprs):
                f.write(f"      - record: dashboard:q{i}\n        expr: {json.dumps(e)}\n")
        try:
            chk = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True)
            self.assertEqual(chk.returncode, 0, chk.stdout + chk.stderr)
        finally:
            os.unlink(f.name)
        for args in (["check", "rules", "kinfer-alerts.yml"],
                     ["test", "rules", "kinfer-alerts.test.yml"]):
            chk = subprocess.run(["promtool"] + args, cwd=mon, capture_output=True)
            self.assertEqual(chk.returncode, 0, chk.stdout + chk.stderr)

    def test_3_unknown_routes_and_methods(self):
        self.assertEqual(get(self.base + "/nope")[0], 404)
        req = urllib.request.Request(self.base + "/metrics", data=b"x", method="POST")
        try:
            urllib.request.urlopen(req, timeout=10)
            self.fail("POST /metrics was answered")
        except urllib.error.HTTPError as e:
            self.assertEqual(e.code, 405)


if __name__ == "__main__":
    unittest.main(verbosity=2)
