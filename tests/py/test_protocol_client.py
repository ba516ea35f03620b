#!/usr/bin/python3
"""A kinfer client written from docs/protocol.md alone, run against the real
worker, a real Redis and the devbroker (docs/devbroker.md).

Run from the repository root:

    KINFER_BIN=build /usr/bin/python3 tests/py/test_protocol_client.py

Jobs are encoded here with Python's msgpack (and, where msgpack-python cannot
express it -- float32 numbers in a row, a key given twice -- with a few bytes
of hand-written msgpack), results are read with redis-py, model files are
written here with msgpack. Expected values come from a float64 numpy reference.
Nothing is taken from the C sources.
"""

import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import uuid
import zlib

import msgpack
import numpy as np
import redis
from confluent_kafka import Producer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, os.environ.get("KINFER_BIN", "build"))
REDIS_SERVER = "/usr/bin/redis-server"

TOPIC = "kinfer.jobs"
PREFIX = "kinfer:"
RTOL = 1e-5
FIRST_WAIT_S = 40     # the first job waits for the worker's first group join (~3 s + startup)
WAIT_S = 15           # later jobs
MAX_ROWS = 65536      # documented default row limit

RUN = uuid.uuid4().hex[:8]   # job ids stay unique if a Redis were ever reused


# --------------------------------------------------------------------------
# processes

def _die_with_parent():
    """Child processes get SIGKILL if this test process dies, however it dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc, sig=signal.SIGTERM, timeout=10.0):
    """Stops one process we started, by its pid; returns its exit status."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


# --------------------------------------------------------------------------
# msgpack helpers

class F32(float):
    """A number to be encoded as a msgpack float32."""


class Raw(bytes):
    """Bytes that are already msgpack."""


def mp(obj):
    """msgpack with float32 for F32, raw splicing for Raw, lists of (k, v) pairs
    for maps that need an order or a repeated key (wrapped in MapPairs)."""
    if isinstance(obj, Raw):
        return bytes(obj)
    if isinstance(obj, F32):
        return b"\xca" + struct.pack(">f", float(obj))
    if isinstance(obj, MapPairs):
        n = len(obj)
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
        return head + b"".join(mp(k) + mp(v) for k, v in obj)
    if isinstance(obj, (list, tuple)):
        n = len(obj)
        head = bytes([0x90 | n]) if n < 16 else (
            b"\xdc" + struct.pack(">H", n) if n < 65536 else b"\xdd" + struct.pack(">I", n))
        return head + b"".join(mp(x) for x in obj)
    if isinstance(obj, dict):
        return mp(MapPairs(obj.items()))
    return msgpack.packb(obj, use_bin_type=True)


class MapPairs(list):
    """A msgpack map given as (key, value) pairs: keeps order, allows a repeated key."""


DROP = object()   # in expect_error(): leave this key out of the job


def f32_input(x):
    x = np.ascontiguousarray(x, dtype="<f4")
    return {"dtype": "f32", "shape": [int(x.shape[0]), int(x.shape[1])], "data": x.tobytes()}


# --------------------------------------------------------------------------
# models: written here, following "Model file"

ACTS = {
    "identity": lambda z: z,
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "softmax": lambda z: softmax(z),
}


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Model:
    def __init__(self, name, dims, acts, rng=None, weights=None):
        self.name, self.dims, self.acts = name, list(dims), list(acts)
        if weights is None:
            weights = []
            for i, o in zip(dims[:-1], dims[1:]):
                weights.append(((rng.standard_normal((i, o)) / np.sqrt(i)).astype(np.float32),
                                (rng.standard_normal(o) * 0.1).astype(np.float32)))
        self.weights = weights

    def file_bytes(self):
        return msgpack.packb({
            "format": "kinfer-model", "v": 1, "name": self.name, "kind": "mlp",
            "input_dim": self.dims[0], "output_dim": self.dims[-1],
            "layers": [{"W": W.astype("<f4").tobytes(), "b": b.astype("<f4").tobytes(), "act": a}
                       for (W, b), a in zip(self.weights, self.acts)],
        }, use_bin_type=True)

    def forward(self, x):
        """float64 reference of the model on float32 inputs."""
        y = np.asarray(x, dtype=np.float32).astype(np.float64)
        for (W, b), a in zip(self.weights, self.acts):
            y = ACTS[a](y @ W.astype(np.float64) + b.astype(np.float64))
        return y

    @property
    def flops_per_row(self):
        return 2 * sum(i * o for i, o in zip(self.dims[:-1], self.dims[1:]))


# --------------------------------------------------------------------------

class ProtocolClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="kinfer-py-")
        cls.redis_proc = cls.broker = cls.worker = None
        cls.producer = None
        try:
            cls._start()
        except BaseException:
            cls._cleanup(print_log=True)
            raise

    @classmethod
    def _start(cls):
        tmp = cls.tmp.name
        for b in ("kinfer-worker", "kinfer-devbroker"):
            if not os.access(os.path.join(BIN, b), os.X_OK):
                raise RuntimeError(f"{BIN}/{b} missing: build it first (make BUILD=...)")

        # Redis
        for _ in range(5):
            port = _free_port()
            cls.redis_log = open(os.path.join(tmp, "redis.log"), "wb")
            cls.redis_proc = subprocess.Popen(
                [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", tmp],
                stdin=subprocess.DEVNULL, stdout=cls.redis_log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent)
            cls.r = redis.Redis(host="127.0.0.1", port=port, db=0)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and cls.redis_proc.poll() is None:
                try:
                    if cls.r.ping():
                        break
                except redis.exceptions.ConnectionError:
                    time.sleep(0.05)
            if cls.redis_proc.poll() is None:
                break
            cls.redis_proc = None   # port taken by someone else: try another one
        else:
            raise RuntimeError("redis-server did not start")
        cls.r.ping()
        cls.redis_port = port

        # Kafka: the devbroker; stdin stays open (a pipe), first stdout line = bootstrap list
        cls.broker_log = open(os.path.join(tmp, "broker.log"), "wb")
        cls.broker = subprocess.Popen(
            [os.path.join(BIN, "kinfer-devbroker"), "--partitions", "2"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=cls.broker_log,
            preexec_fn=_die_with_parent)
        line = cls.broker.stdout.readline().decode().strip()
        if not line or cls.broker.poll() is not None:
            raise RuntimeError("devbroker printed no bootstrap list")
        cls.bootstrap = line

        # models, written with msgpack from "Model file"
        rng = np.random.default_rng(20240607)
        mdir = os.path.join(tmp, "models")
        os.makedirs(os.path.join(mdir, "soft"))
        cls.mlp = Model("mlp", [5, 7, 3], ["relu", "identity"], rng)
        cls.soft1 = Model("soft", [5, 4, 3], ["tanh", "softmax"], rng)
        cls.soft3 = Model("soft", [5, 6, 4], ["sigmoid", "softmax"], rng)
        cls.tie = Model("tie", [5, 3], ["identity"], weights=[
            (np.zeros((5, 3), np.float32), np.array([0.5, 2.0, 2.0], np.float32))])
        # files that break "Model file" rules: jobs for them get `internal`
        with open(os.path.join(mdir, "broken.kmodel"), "wb") as f:
            f.write(cls.mlp.file_bytes()[:-10])            # truncated msgpack
        with open(os.path.join(mdir, "misnamed.kmodel"), "wb") as f:
            f.write(Model("other", [5, 3], ["identity"], rng).file_bytes())   # name != file name
        for path, m in ((os.path.join(mdir, "mlp.kmodel"), cls.mlp),
                        (os.path.join(mdir, "soft", "1.kmodel"), cls.soft1),
                        (os.path.join(mdir, "soft", "3.kmodel"), cls.soft3),
                        (os.path.join(mdir, "tie.kmodel"), cls.tie)):
            with open(path, "wb") as f:
                f.write(m.file_bytes())

        # one worker
        cls.worker_log_path = os.path.join(tmp, "worker.log")
        cls.worker_log = open(cls.worker_log_path, "wb")
        env = dict(os.environ, KINFER_BROKERS=cls.bootstrap,
                   KINFER_REDIS=f"redis://127.0.0.1:{port}/0")
        for k in ("KINFER_TOPIC", "KINFER_PREFIX", "KINFER_GROUP", "KINFER_WORKER_ID",
                  "KINFER_MODELS"):
            env.pop(k, None)
        cls.worker = subprocess.Popen(
            [os.path.join(BIN, "kinfer-worker"), "--models", mdir,
             "-X", "session.timeout.ms=6000"],
            env=env, stdin=subprocess.DEVNULL, stdout=cls.worker_log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent)

        cls.producer = Producer({"bootstrap.servers": cls.bootstrap,
                                 "enable.idempotence": True, "linger.ms": 2})

        # warm-up: the first job also waits for the consumer group's first join
        cls.jobs_seen = 0
        jid = cls.new_id("warmup")
        cls.produce_jobs([("warm", {"v": 1, "id": jid, "user": "warm-" + RUN, "model": "mlp",
                                    "input": [[1, 2, 3, 4, 5]]})])
        h = cls.wait_result(jid, FIRST_WAIT_S)
        if h is None or h.get("status") != "ok":
            raise RuntimeError(f"warm-up job failed: {h}")

    @classmethod
    def _cleanup(cls, print_log=False):
        try:
            if cls.producer is not None:
                cls.producer.flush(5)
        finally:
            cls.producer = None
        cls.worker_rc, cls.worker_stop_s = None, 0.0
        if cls.worker is not None:
            t0 = time.monotonic()
            rc = _stop(cls.worker, timeout=20)
            cls.worker_rc, cls.worker_stop_s = rc, time.monotonic() - t0
        if cls.broker is not None:
            try:
                cls.broker.stdin.close()
            except Exception:
                pass
            _stop(cls.broker)
            cls.broker.stdout.close()
        if cls.redis_proc is not None:
            _stop(cls.redis_proc)
        if print_log or (cls.worker is not None and cls.worker_rc != 0):
            cls.print_worker_log()
        for f in ("worker_log", "broker_log", "redis_log"):
            if getattr(cls, f, None):
                getattr(cls, f).close()
        cls.tmp.cleanup()

    @classmethod
    def print_worker_log(cls):
        path = getattr(cls, "worker_log_path", None)
        if path and os.path.exists(path):
            with open(path, "rb") as f:
                sys.stderr.write("----- worker log -----\n" + f.read().decode(errors="replace")
                                 + "----- end of worker log -----\n")

    @classmethod
    def tearDownClass(cls):
        cls._cleanup(print_log=not cls.result_ok)
        if not (cls.worker_rc == 0 and cls.worker_stop_s < 20):
            raise AssertionError(f"worker did not exit 0 within 20 s of SIGTERM: "
                                 f"status {cls.worker_rc} after {cls.worker_stop_s:.1f} s")

    result_ok = True

    def run(self, result=None):
        r = super().run(result)
        res = result if result is not None else r
        if res is not None and not res.wasSuccessful():
            type(self).result_ok = False
        return r

    # ---------------------------------------------------------------- client

    @classmethod
    def new_id(cls, tag):
        return f"{tag}-{RUN}-{uuid.uuid4().hex[:10]}"

    @classmethod
    def produce_jobs(cls, msgs):
        """msgs: [(key, job)], job a dict/MapPairs (msgpack'd here) or raw bytes.
        Produces them in order and returns one delivery record per message."""
        reports = [None] * len(msgs)

        def cb(i):
            def on_delivery(err, msg):
                reports[i] = {"err": err, "partition": msg.partition(), "offset": msg.offset(),
                              "timestamp": msg.timestamp()}
            return on_delivery

        sent = []
        for i, (key, job) in enumerate(msgs):
            value = job if isinstance(job, bytes) else mp(job)
            ts = int(time.time() * 1000)
            cls.producer.produce(TOPIC, key=key.encode() if isinstance(key, str) else key,
                                 value=value, timestamp=ts, on_delivery=cb(i))
            sent.append(ts)
            cls.producer.poll(0)
        left = cls.producer.flush(30)
        if left:
            raise AssertionError(f"{left} messages not delivered")
        for i, rep in enumerate(reports):
            if rep is None or rep["err"] is not None:
                raise AssertionError(f"delivery of message {i} failed: {rep}")
            rep["sent_ts"] = sent[i]
        return reports

    @classmethod
    def wait_result(cls, jid, timeout=WAIT_S):
        """"Done notification": HGETALL; else BLPOP the done list, then HGETALL."""
        h = cls.r.hgetall(f"{PREFIX}result:{jid}")
        if not h:
            cls.r.blpop([f"{PREFIX}done:{jid}"], timeout=int(timeout))
            h = cls.r.hgetall(f"{PREFIX}result:{jid}")
        if not h:
            return None
        return {k.decode(): (v if k == b"output" else v.decode()) for k, v in h.items()}

    def result(self, jid, timeout=WAIT_S):
        h = self.wait_result(jid, timeout)
        self.assertIsNotNone(h, f"no result for job {jid} within {timeout} s")
        return h

    def usage(self, user):
        h = self.r.hgetall(f"{PREFIX}usage:{user}")
        return {k.decode(): int(v) for k, v in h.items()}

    def stats(self):
        h = self.r.hgetall(f"{PREFIX}stats")
        return {k.decode(): int(v) for k, v in h.items()}

    def output(self, h):
        rows, cols = (int(x) for x in h["shape"].split(","))
        self.assertEqual(len(h["output"]), rows * cols * 4, "output length vs shape")
        return np.frombuffer(h["output"], dtype="<f4").reshape(rows, cols).astype(np.float64)

    def assert_close(self, got, ref, what=""):
        self.assertEqual(got.shape, ref.shape, what)
        err = np.abs(got - ref) / np.maximum(np.abs(ref), 1.0)
        self.assertLessEqual(float(err.max()), RTOL,
                             f"{what}: max scaled error {err.max():.3g}\n got {got}\n ref {ref}")

    def assert_common_fields(self, h, jid, rep, user=None, model=None):
        """Fields "always present", checked against what we produced."""
        for f in ("status", "id", "worker", "source", "enqueued", "started", "done"):
            self.assertIn(f, h, f"result field {f!r} missing: {h}")
        self.assertIn(h["status"], ("ok", "error"))
        self.assertEqual(h["id"], jid)
        self.assertEqual(h["worker"], f"{socket.gethostname()}:{self.worker.pid}",
                         "worker is host:pid")
        self.assertEqual(h["source"], f"{TOPIC}/{rep['partition']}/{rep['offset']}")
        enq, st, dn = int(h["enqueued"]), int(h["started"]), int(h["done"])
        self.assertEqual(enq, rep["sent_ts"], "enqueued is the Kafka message timestamp")
        self.assertLessEqual(enq, st)
        self.assertLessEqual(st, dn)
        now = int(time.time() * 1000)
        self.assertLessEqual(dn, now + 1000)
        self.assertGreater(enq, now - 600_000, "enqueued is not Unix ms")
        if user is not None:
            self.assertEqual(h.get("user"), user)
        if model is not None:
            self.assertEqual(h.get("model"), model)

    def assert_ok(self, h, jid, rep, user, model, version):
        self.assert_common_fields(h, jid, rep, user, model)
        self.assertEqual(h["status"], "ok", f"job {jid}: {h}")
        self.assertEqual(h["version"], str(version))
        self.assertNotIn("error", h)
        return self.output(h)

    def job(self, jid, user, model, inp, **kw):
        j = {"v": 1, "id": jid, "user": user, "model": model, "input": inp}
        j.update(kw)
        return j

    # ----------------------------------------------------------- ok results

    def rng(self):
        return np.random.default_rng(zlib.crc32(self.id().encode()))

    def test_raw_both_input_forms_fields_and_usage(self):
        rng = self.rng()
        user = "raw-" + RUN
        m = self.mlp
        # form 1: rows with fixint, negative int, uint8/16/32, int16, float32, float64
        rows = [[0, 1, -3, 200, F32(0.5)],
                [-200, 70000, 0.1, F32(-2.75), 3],
                [F32(0.125), -1.5, 2**33, -100000, 16]]
        x_rows = np.array([[float(v) for v in r] for r in rows], dtype=np.float32)
        # form 2: packed f32, several sizes (the worker may batch them together)
        xs = [rng.standard_normal((n, 5)).astype(np.float32) for n in (1, 4, 33)]
        jobs = [(self.new_id("rows"), rows, x_rows)] + \
               [(self.new_id("f32"), f32_input(x), x) for x in xs]
        reps = self.produce_jobs([(user, self.job(j, user, "mlp", inp)) for j, inp, _ in jobs])
        total_rows = 0
        for (jid, _, x), rep in zip(jobs, reps):
            h = self.result(jid)
            out = self.assert_ok(h, jid, rep, user, "mlp", 1)
            self.assertEqual(h["shape"], f"{x.shape[0]},3")
            self.assert_close(out, m.forward(x), f"raw {jid}")
            total_rows += x.shape[0]
        u = self.usage(user)
        # the counters the doc lists; the hash may hold more (window_start...)
        self.assertEqual({k: v for k, v in u.items() if k in ("jobs", "rows", "flops")},
                         {"jobs": len(jobs), "rows": total_rows,
                          "flops": total_rows * 2 * (5 * 7 + 7 * 3)}, u)
        self.assertEqual(u.get("errors", 0), 0)
        self.assertEqual(self.r.ttl(f"{PREFIX}usage:{user}"), -1, "usage hash has no TTL")

    def test_softmax_argmax_outputs(self):
        rng = self.rng()
        user = "sm-" + RUN
        x = rng.standard_normal((16, 5)).astype(np.float32) * 2
        ref = self.mlp.forward(x)
        top2 = np.sort(ref, axis=1)[:, -2:]
        self.assertTrue(np.all(top2[:, 1] - top2[:, 0] > 1e-3), "test data has near ties")
        ids = {o: self.new_id(o) for o in ("raw", "softmax", "argmax")}
        reps = self.produce_jobs([(user, self.job(ids[o], user, "mlp", f32_input(x), output=o))
                                  for o in ids])
        outs = {}
        for (o, jid), rep in zip(ids.items(), reps):
            outs[o] = self.assert_ok(self.result(jid), jid, rep, user, "mlp", 1)
        self.assert_close(outs["raw"], ref, "raw")
        self.assert_close(outs["softmax"], softmax(ref), "softmax")
        np.testing.assert_allclose(outs["softmax"].sum(axis=1), 1.0, rtol=0, atol=1e-5)
        self.assertEqual(outs["argmax"].shape, (16, 1))
        np.testing.assert_array_equal(outs["argmax"][:, 0], np.argmax(ref, axis=1))
        # 3 ok jobs of 16 rows
        u = self.usage(user)
        self.assertEqual((u["jobs"], u["rows"], u["flops"]), (3, 48, 48 * self.mlp.flops_per_row))

    def test_argmax_first_of_ties(self):
        user = "tie-" + RUN
        x = np.arange(15, dtype=np.float32).reshape(3, 5)
        jr, ja = self.new_id("tie-raw"), self.new_id("tie-argmax")
        reps = self.produce_jobs([(user, self.job(jr, user, "tie", [[1, 2, 3, 4, 5]])),
                                  (user, self.job(ja, user, "tie", f32_input(x), output="argmax"))])
        raw = self.assert_ok(self.result(jr), jr, reps[0], user, "tie", 1)
        np.testing.assert_array_equal(raw, [[0.5, 2.0, 2.0]])
        am = self.assert_ok(self.result(ja), ja, reps[1], user, "tie", 1)
        np.testing.assert_array_equal(am, [[1.0], [1.0], [1.0]])

    def test_model_versions_and_softmax_layer(self):
        rng = self.rng()
        user = "ver-" + RUN
        x = rng.standard_normal((6, 5)).astype(np.float32)
        cases = [("none", {}, self.soft3, 3), ("zero", {"version": 0}, self.soft3, 3),
                 ("pin1", {"version": 1}, self.soft1, 1), ("pin3", {"version": 3}, self.soft3, 3)]
        ids = [self.new_id("ver-" + c[0]) for c in cases]
        reps = self.produce_jobs([(user, self.job(jid, user, "soft", f32_input(x), **kw))
                                  for jid, (_, kw, _, _) in zip(ids, cases)])
        for jid, rep, (tag, _, m, ver) in zip(ids, reps, cases):
            out = self.assert_ok(self.result(jid), jid, rep, user, "soft", ver)
            self.assert_close(out, m.forward(x), f"soft {tag}")
            np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=0, atol=1e-5)
        # output=softmax on a model whose last layer is already a softmax: softmax of it
        js = self.new_id("ver-sm")
        rep = self.produce_jobs([(user, self.job(js, user, "soft", f32_input(x),
                                                 version=1, output="softmax"))])[0]
        out = self.assert_ok(self.result(js), js, rep, user, "soft", 1)
        self.assert_close(out, softmax(self.soft1.forward(x)), "softmax of softmax layer")

    def test_ttl_and_done_list(self):
        user = "ttl-" + RUN
        j120, jdef, jerr = self.new_id("ttl120"), self.new_id("ttldef"), self.new_id("ttlerr")
        self.produce_jobs([(user, self.job(j120, user, "mlp", [[1, 2, 3, 4, 5]], ttl=120)),
                           (user, self.job(jdef, user, "mlp", [[1, 2, 3, 4, 5]])),
                           (user, self.job(jerr, user, "nosuchmodel", [[1]], ttl=60))])
        cases = ((j120, 120, b"ok"), (jdef, 86400, b"ok"), (jerr, 60, b"error"))
        # read the hash "whenever it likes": poll, so that the done list stays untouched
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not all(
                self.r.exists(f"{PREFIX}result:{c[0]}") for c in cases):
            time.sleep(0.02)
        for jid, ttl, status in cases:
            rk, dk = f"{PREFIX}result:{jid}", f"{PREFIX}done:{jid}"
            self.assertTrue(self.r.exists(rk), f"no result for {jid}")
            for k in (rk, dk):
                t = self.r.ttl(k)
                self.assertTrue(ttl - 60 < t <= ttl, f"TTL of {k} is {t}, want ~{ttl}")
            self.assertEqual(self.r.lrange(dk, 0, -1), [status], "done list: one element, the status")
            self.assertEqual(self.r.blpop([dk], timeout=1), (dk.encode(), status))
            self.assertEqual(self.r.blpop([dk], timeout=1), None, "only one BLPOP returns it")
            self.assertEqual(self.result(jid, timeout=1)["status"], status.decode())

    def test_deadline_in_future_is_computed(self):
        user = "dlok-" + RUN
        jid = self.new_id("dl-future")
        rep = self.produce_jobs([(user, self.job(jid, user, "mlp", [[1, 2, 3, 4, 5]],
                                                 deadline=int(time.time() * 1000) + 600_000))])[0]
        out = self.assert_ok(self.result(jid), jid, rep, user, "mlp", 1)
        self.assert_close(out, self.mlp.forward([[1, 2, 3, 4, 5]]))

    def test_unknown_keys_ignored(self):
        user = "extra-" + RUN
        jid = self.new_id("extra")
        rep = self.produce_jobs([(user, self.job(jid, user, "mlp", [[1, 2, 3, 4, 5]],
                                                 future_field={"x": [1, 2]}, z=b"\x00"))])[0]
        self.assert_ok(self.result(jid), jid, rep, user, "mlp", 1)

    # ---------------------------------------------------------------- errors

    def expect_error(self, tag, fields, code, words, model="mlp", key=None):
        """Submits one job, returns its result after checking the error contract.
        fields: the job map (dict or MapPairs) without id/user if they are given.
        words: each a str or a tuple of alternatives; the message must contain it."""
        user = f"{tag}-{RUN}"
        jid = self.new_id(tag)
        if isinstance(fields, MapPairs):
            job = MapPairs([("v", 1), ("id", jid), ("user", user)] + list(fields))
        else:
            job = {"v": 1, "id": jid, "user": user, "model": model, "input": [[1, 2, 3, 4, 5]]}
            job.update(fields)
            job = {k: v for k, v in job.items() if v is not DROP}
        before = self.usage(user)
        rep = self.produce_jobs([(key or user, job)])[0]
        h = self.result(jid)
        self.assert_common_fields(h, jid, rep, user=user)
        self.assertEqual(h["status"], "error", f"{tag}: {h}")
        self.assertEqual(h.get("error"), code, f"{tag}: {h}")
        self.assertNotIn("output", h)
        msg = h.get("message", "")
        self.assertTrue(msg, f"{tag}: no message")
        for w in words:
            alts = w if isinstance(w, tuple) else (w,)
            self.assertTrue(any(a.lower() in msg.lower() for a in alts),
                            f"{tag}: message {msg!r} does not name {alts}")
        after = self.usage(user)
        self.assertEqual(after.get("errors", 0), before.get("errors", 0) + 1, f"{tag}: {after}")
        for f in ("jobs", "rows", "flops"):
            self.assertEqual(after.get(f, 0), before.get(f, 0), f"{tag}: error charged {f}")
        return h

    def test_error_missing_model(self):
        h = self.expect_error("nomodel", {"model": DROP}, "bad_request", ["model"])
        self.assertNotIn("model", h)

    def test_error_ragged_rows(self):
        self.expect_error("ragged", {"input": [[1, 2, 3, 4, 5], [1, 2, 3, 4], [1, 2, 3, 4, 5]]},
                          "bad_request", ["row 1", "4"])

    def test_error_nan_value(self):
        self.expect_error("nan", {"input": [[1, 2, float("nan"), 4, 5]]},
                          "bad_request", [("finite", "nan")])

    def test_error_inf_in_f32_data(self):
        x = np.ones((2, 5), np.float32)
        x[1, 3] = np.inf
        self.expect_error("inf", {"input": f32_input(x)}, "bad_request", [("finite", "inf")])

    def test_error_float64_overflows_float32(self):
        self.expect_error("f64big", {"input": [[1, 2, 1e300, 4, 5]]},
                          "bad_request", [("finite", "float32", "range", "overflow")])

    def test_error_f32_data_wrong_length(self):
        inp = f32_input(np.ones((2, 5), np.float32))
        inp["data"] = inp["data"][:-4]
        self.expect_error("f32len", {"input": inp}, "bad_request", ["data", ("36", "40")])

    def test_error_unsupported_version(self):
        self.expect_error("v2", {"v": 2}, "bad_request", [("'v'", "\"v\"", "version", " v "), "2"])

    def test_error_duplicate_key(self):
        self.expect_error("dupkey", MapPairs([("model", "mlp"), ("input", [[1, 2, 3, 4, 5]]),
                                              ("model", "mlp")]),
                          "bad_request", ["model"])

    def test_error_unknown_model(self):
        self.expect_error("nosuch", {"model": "nosuchmodel"}, "unknown_model", ["nosuchmodel"])

    def test_error_shape_mismatch(self):
        self.expect_error("cols", {"input": f32_input(np.ones((3, 4), np.float32))},
                          "shape_mismatch", ["4", "5"])

    def test_error_pinned_version_missing(self):
        h = self.expect_error("pin2", {"model": "soft", "version": 2}, "unknown_model",
                              ["soft", "2"])
        # "the message lists the versions that do": 1 and 3
        rest = h["message"].replace("soft", "")
        self.assertRegex(rest, r"\b1\b", h["message"])
        self.assertRegex(rest, r"\b3\b", h["message"])

    def test_error_expired_not_charged(self):
        deadline = int(time.time() * 1000) - 1000
        h = self.expect_error("expired", {"deadline": deadline}, "expired",
                              [("deadline", "expired")])
        self.assertGreater(int(h["started"]), deadline, "picked up after the deadline")

    def test_error_internal_bad_model_file(self):
        self.expect_error("corrupt", {"model": "broken"}, "internal", ["broken"])
        self.expect_error("misnamed", {"model": "misnamed"}, "internal", [("other", "name")])

    def test_error_too_many_rows(self):
        rows = [[1, 2, 3, 4, 5]] * (MAX_ROWS + 1)   # ~393 KB of msgpack, under Kafka's 1 MB
        self.expect_error("toolarge", {"input": rows}, "too_large",
                          [("rows", "row"), (str(MAX_ROWS), str(MAX_ROWS + 1))])

    def test_error_without_user_counts_in_stats(self):
        jid = self.new_id("nouser")
        before = self.stats()
        rep = self.produce_jobs([("nouser", {"v": 1, "id": jid, "model": "mlp",
                                             "input": [[1, 2, 3, 4, 5]]})])[0]
        h = self.result(jid)
        self.assert_common_fields(h, jid, rep)
        self.assertEqual((h["status"], h.get("error")), ("error", "bad_request"), h)
        self.assertIn("user", h["message"])
        self.assertNotIn("user", h)
        self.assertEqual(self.stats().get("errors", 0), before.get("errors", 0) + 1)

    def test_undecodable_messages_counted_worker_survives(self):
        user = "undec-" + RUN
        before = self.stats()
        bad = [b"\x93\x01",                                     # truncated array
               b"\xc1\xc1 not msgpack",                         # 0xc1 is never used
               b"",                                             # empty value
               mp({"v": 1, "user": user, "model": "mlp", "input": [[1, 2, 3, 4, 5]]}),  # no id
               mp({"v": 1, "id": 42, "user": user, "model": "mlp"}),   # id not a str
               mp({"v": 1, "id": "has space", "user": user, "model": "mlp"}),
               mp({"v": 1, "id": "x" * 129, "user": user, "model": "mlp"})]
        good = self.new_id("after-undec")
        reps = self.produce_jobs([(user, b) for b in bad] +
                                 [(user, self.job(good, user, "mlp", [[1, 2, 3, 4, 5]]))])
        self.assertEqual(len({r["partition"] for r in reps}), 1)
        h = self.result(good)
        self.assert_ok(h, good, reps[-1], user, "mlp", 1)
        # Counted once the broker has the dead-letter copy, which the worker
        # makes beside the results: the good job's result may come first.
        want = before.get("undecodable", 0) + len(bad)
        deadline = time.monotonic() + WAIT_S
        while self.stats().get("undecodable", 0) < want and time.monotonic() < deadline:
            time.sleep(0.05)
        after = self.stats()
        self.assertEqual(after.get("undecodable", 0), want, f"{before} -> {after}")
        self.assertFalse(self.r.exists(f"{PREFIX}result:has space"))
        self.assertIsNone(self.worker.poll(), "worker died")
        u = self.usage(user)
        self.assertEqual((u.get("jobs"), u.get("errors", 0)), (1, 0), u)

    # ----------------------------------------------------------- idempotence

    def test_same_id_twice_one_result_charged_once(self):
        user = "dup-" + RUN
        jid = self.new_id("dup")
        x1 = np.full((2, 5), 0.5, np.float32)
        x2 = np.full((3, 5), -1.0, np.float32)
        sentinel = self.new_id("dup-sentinel")
        reps = self.produce_jobs([(user, self.job(jid, user, "mlp", f32_input(x1))),
                                  (user, self.job(jid, user, "mlp", f32_input(x2))),
                                  (user, self.job(sentinel, user, "mlp", [[0, 0, 0, 0, 0]]))])
        self.assertEqual(len({r["partition"] for r in reps}), 1)
        self.assertEqual(self.result(sentinel)["status"], "ok")
        # the sentinel follows both on the same partition: both copies were handled
        dk = f"{PREFIX}done:{jid}"
        self.assertEqual(self.r.lrange(dk, 0, -1), [b"ok"], "one done element for one result")
        h = self.result(jid)
        out = self.assert_ok(h, jid, reps[0], user, "mlp", 1)   # the first one stands
        self.assertEqual(h["shape"], "2,3")
        self.assert_close(out, self.mlp.forward(x1), "first result stands")
        u = self.usage(user)
        self.assertEqual((u["jobs"], u["rows"], u["flops"]),
                         (2, 3, 3 * self.mlp.flops_per_row), u)   # dup (2 rows) + sentinel (1)



if __name__ == "__main__":
    prog = unittest.main(exit=False, verbosity=2)
    sys.exit(0 if prog.result.wasSuccessful() else 1)
