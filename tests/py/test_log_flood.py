#!/usr/bin/python3
"""A hostile producer cannot flood the worker's log (docs/operations.md, "Logs";
docs/security.md): a real redis-server, the dev broker and a real kinfer-worker
with --require-signatures, --log-limit 20 --log-limit-s 10.

One producer sends 20,000 forged jobs (alice's name, signed with a secret that is
not hers) and 20,000 undecodable messages (no readable job id), with 40 honest
jobs of alice, signed with her key, among them.  Checked:
- every forged job is answered `unauthorized` in Redis and counted under
  kinfer_jobs_total{code="unauthorized"}; every undecodable message is copied to
  kinfer.dlq once (read back here, values compared) and counted in
  kinfer_jobs_dead_lettered_total; alice's usage counts her honest jobs only;
- the honest jobs' outputs match a float64 numpy reference;
- the worker's log: per kind of line, at most (LIMIT + 1) * (T / WINDOW + 1)
  lines over the T seconds the worker ran (LIMIT lines and one summary per
  window of WINDOW s, kf_log_limit.h), and everything else a fixed allowance;
  the first refusal lines name topic/partition/offset, and those are the
  offsets the broker gave the forged messages (from delivery reports here);
  lines shown + the counts in the summaries == what was sent, per kind, and the
  total not shown == kinfer_log_lines_suppressed_total.

Run from the repository root:  KINFER_BIN=build /usr/bin/python3 tests/py/test_log_flood.py
"""

import ctypes
import hashlib
import hmac
import json
import math
import os
import re
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
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, os.environ.get("KINFER_BIN", "build"))
REDIS_SERVER = "/usr/bin/redis-server"
PREFIX = "kinfer:"
TOPIC, DLQ_TOPIC = "kinfer.jobs", "kinfer.dlq"
RUN = uuid.uuid4().hex[:8]

LIMIT, WINDOW = 20, 10      # --log-limit, --log-limit-s: the bound is derived from these
SUMMARY_S = 10              # --log-summary-s: the periodic summary line
N_FORGED, N_GARBAGE, N_HONEST = 20000, 20000, 40
# Lines not driven by the producer: start (settings, models, assignment),
# shutdown, one periodic summary per SUMMARY_S.  A fixed allowance.
OTHER_LINES = 30


def _die_with_parent():
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:
        pass


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc):
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


def ukey(user, kind, var=None):
    k = f"{PREFIX}{{{user}}}:{kind}"
    return k if var is None else f"{k}:{var}"


def sign_hmac(secret_hex, value):
    return hmac.new(bytes.fromhex(secret_hex), value, hashlib.sha256).hexdigest()


def headers(key_id, secret_hex, value):
    return [("kinfer-sig", sign_hmac(secret_hex, value).encode()),
            ("kinfer-key-id", key_id.encode()), ("kinfer-sig-alg", b"hmac-sha256")]


class LogFloodTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="kinfer-logflood-")
        cls.redis_proc = cls.broker = cls.worker = None
        try:
            cls._start()
        except BaseException:
            cls._cleanup(print_log=True)
            raise

    @classmethod
    def _start(cls):
        tmp = cls.tmp.name
        port = _free_port()
        cls.redis_proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        cls.r = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                cls.r.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or cls.redis_proc.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
        cls.broker = subprocess.Popen(
            [os.path.join(BIN, "kinfer-devbroker"), "--partitions", "2"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent)
        cls.bootstrap = cls.broker.stdout.readline().decode().strip()
        if not cls.bootstrap:
            raise RuntimeError("devbroker printed no bootstrap list")

        rng = np.random.default_rng(11)
        cls.W = rng.standard_normal((3, 2)).astype(np.float32)
        cls.b = (rng.standard_normal(2) * 0.1).astype(np.float32)
        mdir = os.path.join(tmp, "models")
        os.makedirs(mdir)
        with open(os.path.join(mdir, "lin.kmodel"), "wb") as f:
            f.write(msgpack.packb({
                "format": "kinfer-model", "v": 1, "name": "lin", "kind": "mlp",
                "input_dim": 3, "output_dim": 2,
                "layers": [{"W": cls.W.astype("<f4").tobytes(), "b": cls.b.astype("<f4").tobytes(),
                            "act": "identity"}]}, use_bin_type=True))

        cls.env = dict(os.environ, KINFER_BROKERS=cls.bootstrap,
                       KINFER_REDIS=f"redis://127.0.0.1:{port}/0")
        for k in list(cls.env):
            if k.startswith("KINFER_") and k not in ("KINFER_BROKERS", "KINFER_REDIS"):
                cls.env.pop(k)
        cls.alice = "alice-" + RUN
        p = subprocess.run([os.path.join(BIN, "kinfer"), "key", "create", cls.alice, "--alg",
                            "hmac"], env=cls.env, capture_output=True, text=True, timeout=60)
        if p.returncode:
            raise RuntimeError(f"kinfer key create: {p.stderr}")
        cls.key = json.loads(p.stdout)

        cls.http_port = _free_port()
        cls.log_path = os.path.join(tmp, "worker.log")
        cls.log = open(cls.log_path, "wb")
        cls.t_start = time.monotonic()
        cls.worker = subprocess.Popen(
            [os.path.join(BIN, "kinfer-worker"), "--models", mdir, "--require-signatures",
             "--http", f"127.0.0.1:{cls.http_port}", "--log-limit", str(LIMIT),
             "--log-limit-s", str(WINDOW), "--log-summary-s", str(SUMMARY_S),
             "-X", "session.timeout.ms=6000"],
            env=cls.env, stdin=subprocess.DEVNULL, stdout=cls.log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent)
        cls.producer = Producer({"bootstrap.servers": cls.bootstrap, "linger.ms": 5, "log_level": 3,
                                 "queue.buffering.max.messages": 200000})
        cls.honest = {}
        jid = "warm-" + RUN
        cls.send_honest(jid)
        cls.producer.flush(10)
        cls.wait_result(jid, 60)  # also waits for the group's first join

    @classmethod
    def _cleanup(cls, print_log=False):
        _stop(cls.worker)
        _stop(cls.broker)
        _stop(cls.redis_proc)
        if print_log and getattr(cls, "log_path", None) and os.path.exists(cls.log_path):
            sys.stderr.write(open(cls.log_path, errors="replace").read()[-4000:])
        if os.environ.get("KINFER_KEEP_LOG"):  # where to keep the worker's log
            with open(os.environ["KINFER_KEEP_LOG"], "wb") as f:
                f.write(open(cls.log_path, "rb").read())
        cls.tmp.cleanup()

    @classmethod
    def tearDownClass(cls):
        cls._cleanup()

    @classmethod
    def job(cls, jid, x):
        return msgpack.packb({"v": 2, "id": jid, "user": cls.alice, "model": "lin",
                              "input": {"dtype": "f32", "shape": list(x.shape),
                                        "data": np.ascontiguousarray(x, "<f4").tobytes()}},
                             use_bin_type=True)

    @classmethod
    def send_honest(cls, jid):
        x = np.random.default_rng(len(cls.honest)).standard_normal((2, 3)).astype(np.float32)
        v = cls.job(jid, x)
        cls.producer.produce(TOPIC, key=cls.alice.encode(), value=v,
                             headers=headers(cls.key["key_id"], cls.key["secret"], v))
        cls.honest[jid] = x

    @classmethod
    def wait_result(cls, jid, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = cls.r.get(ukey(cls.alice, "result", jid))
            if v is not None:
                return msgpack.unpackb(v, raw=False)
            time.sleep(0.1)
        raise AssertionError(f"no result for {jid} in {timeout} s")

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as f:
            text = f.read().decode()
        unauth = sum(float(m.group(1)) for m in re.finditer(
            r'^kinfer_jobs_total\{[^}]*code="unauthorized"[^}]*\} (\S+)$', text, re.M))
        dead = re.search(r"^kinfer_jobs_dead_lettered_total (\S+)$", text, re.M)
        supp = re.search(r"^kinfer_log_lines_suppressed_total (\S+)$", text, re.M)
        return unauth, float(dead.group(1)), supp and float(supp.group(1))

    def test_flood(self):
        cls = type(self)
        forged_at = {}  # job id -> "topic/partition/offset" from the delivery report
        garbage = set()
        wrong_secret = os.urandom(32).hex()

        def delivered(jid):
            def cb(err, msg):
                if err is None:
                    forged_at[jid] = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
            return cb

        x1 = np.ones((1, 3), np.float32)
        for i in range(N_FORGED):
            jid = f"forged-{i}"
            v = cls.job(jid, x1)
            cls.producer.produce(TOPIC, key=b"mallory", value=v,
                                 headers=headers(cls.key["key_id"], wrong_secret, v),
                                 on_delivery=delivered(jid))
            g = b"\xc1 not msgpack, no job id " + str(i).encode()
            cls.producer.produce(TOPIC, key=b"mallory", value=g)
            garbage.add(g)
            if i % (N_FORGED // N_HONEST) == 0:
                cls.send_honest(f"honest-{i}")
            cls.producer.poll(0)
        self.assertEqual(cls.producer.flush(60), 0)
        self.assertEqual(len(forged_at), N_FORGED)

        # every message answered or dead-lettered, as counted in /metrics
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            unauth, dead, supp = self.metrics()
            if unauth >= N_FORGED and dead >= N_GARBAGE:
                break
            time.sleep(0.5)
        self.assertEqual((unauth, dead), (N_FORGED, N_GARBAGE))
        self.assertIsNotNone(supp, "no kinfer_log_lines_suppressed_total in /metrics")

        # honest jobs: computed right
        for jid, x in cls.honest.items():
            res = cls.wait_result(jid)
            self.assertEqual(res.get("status"), "ok", res)
            y = np.frombuffer(res["output"], "<f4").reshape(res["shape"])
            ref = x.astype(np.float64) @ cls.W.astype(np.float64) + cls.b
            np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
        # forged jobs: answered unauthorized in Redis, not charged
        pipe = cls.r.pipeline(transaction=False)
        for i in range(N_FORGED):
            pipe.get(ukey(cls.alice, "result", f"forged-{i}"))
        codes = {}
        for v in pipe.execute():
            self.assertIsNotNone(v)
            e = msgpack.unpackb(v, raw=False).get("error")
            codes[e] = codes.get(e, 0) + 1
        self.assertEqual(codes, {"unauthorized": N_FORGED})
        self.assertEqual(int(cls.r.hget(ukey(cls.alice, "usage"), "jobs")), len(cls.honest))

        # the dead-letter topic holds each undecodable message once
        c = Consumer({"bootstrap.servers": cls.bootstrap, "group.id": f"dlq-{RUN}",
                      "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        parts = c.list_topics(DLQ_TOPIC, timeout=10).topics[DLQ_TOPIC].partitions
        c.assign([TopicPartition(DLQ_TOPIC, p, OFFSET_BEGINNING) for p in parts])
        copies = []
        deadline = time.monotonic() + 60
        while len(copies) < N_GARBAGE and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                if not m.error():
                    copies.append(m.value())
        c.close()
        self.assertEqual(len(copies), N_GARBAGE)
        self.assertEqual(set(copies), garbage)

        # the log, after the worker's shutdown flush; the count of lines not
        # shown read last, when nothing more is logged
        supp = self.metrics()[2]
        _stop(cls.worker)
        ran_s = time.monotonic() - cls.t_start
        self.assertEqual(cls.worker.returncode, 0)
        lines = open(cls.log_path, errors="replace").read().splitlines()
        windows = math.floor(ran_s / WINDOW) + 1
        per_kind = (LIMIT + 1) * windows
        # the kinds of line a producer drives (kf_log_limit sites): its lines, its summary
        kinds = {
            "unauthorized job": r"job (forged-\d+) of user \S+ \((\S+/\d+/\d+)\): unauthorized: ",
            "message without a readable job id": r"message (\S+/\d+/\d+) has no readable job id",
            "dead-letter backlog full": r"\d+ dead-letter copies outstanding: no new batches",
            "fetching paused or resumed": r"(paused|resumed) fetching from \d+ partitions",
        }
        bound = len(kinds) * per_kind + OTHER_LINES + math.ceil(ran_s / SUMMARY_S)
        shown, summed, n_sum = {}, {}, {}
        other = 0
        for ln in lines:
            for kind, pat in kinds.items():
                m = re.search(pat, ln)
                if m:
                    shown.setdefault(kind, []).append(m)
                    break
                m = re.search(re.escape(kind) + r": (\d+) more lines like this not logged", ln)
                if m:
                    summed[kind] = summed.get(kind, 0) + int(m.group(1))
                    n_sum[kind] = n_sum.get(kind, 0) + 1
                    break
            else:
                other += 1
        shown_u = shown.get("unauthorized job", [])
        shown_g = shown.get("message without a readable job id", [])
        sum_u = summed.get("unauthorized job", 0)
        sum_g = summed.get("message without a readable job id", 0)
        print(f"\nworker ran {ran_s:.1f} s: {len(lines)} log lines (bound {bound}, "
              f"{per_kind} per kind); shown {dict((k, len(v)) for k, v in shown.items())}, "
              f"not shown {summed} in {n_sum} summaries, {other} other lines",
              file=sys.stderr)

        self.assertLessEqual(len(lines), bound)
        self.assertLessEqual(other, OTHER_LINES + math.ceil(ran_s / SUMMARY_S))
        for kind in kinds:
            self.assertLessEqual(len(shown.get(kind, [])) + n_sum.get(kind, 0), per_kind, kind)
        self.assertGreaterEqual(len(shown_u), LIMIT)  # the first lines of the burst
        self.assertGreaterEqual(len(shown_g), LIMIT)
        self.assertEqual(len(shown_u) + sum_u, N_FORGED)
        self.assertEqual(len(shown_g) + sum_g, N_GARBAGE)
        self.assertEqual(sum(summed.values()), supp)
        # the refusals shown name where each forged message is
        for m in shown_u:
            self.assertEqual(m.group(2), forged_at[m.group(1)], m.group(0))
        for m in shown_g:
            self.assertRegex(m.group(1), r"^kinfer\.jobs/[01]/\d+$")


if __name__ == "__main__":
    unittest.main(verbosity=2)
