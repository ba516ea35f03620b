#!/usr/bin/python3
"""A kinfer client of protocol version 2, written from docs/protocol.md alone,
run against the real worker, a real Redis and the devbroker (docs/devbroker.md).

Run from the repository root:

    KINFER_BIN=build /usr/bin/python3 tests/py/test_protocol_client.py

Jobs are encoded here with Python's msgpack (and, where msgpack-python cannot
express it -- float32 numbers in a row, a key given twice -- with a few bytes
of hand-written msgpack). Results are read as the document says: GET of
P{user}:result:ID, one msgpack map, waited for with BLPOP on the job's inbox
P{user}:inbox:NAME. Counters, quotas and charge records are read and written
with redis-py under the user's keys; the dead-letter topic is read with
confluent-kafka. Model files are written here with msgpack. Expected values
come from a float64 numpy reference. Nothing is taken from the C sources.

Where the document leaves a choice open, the suite records what the worker
did (printed at the end, "observations") instead of asserting one reading.
"""

import collections
import ctypes
import os
import re
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
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, os.environ.get("KINFER_BIN", "build"))
REDIS_SERVER = "/usr/bin/redis-server"

TOPIC = "kinfer.jobs"
DLQ_TOPIC = "kinfer.dlq"
PREFIX = "kinfer:"
RTOL = 1e-5
FIRST_WAIT_S = 40     # the first job waits for the worker's first group join (~3 s + startup)
WAIT_S = 15           # later jobs
MAX_ROWS = 65536      # documented default row limit
MAX_ELEMENTS = 16777216   # documented default rows x columns limit
MAX_MESSAGE_BYTES = 500_000   # set with the documented --max-message-bytes (default 8 MiB,
                              # which Kafka's 1 MB message.max.bytes would bind first)
MAX_OUTPUT_ELEMENTS = 3000    # set with --max-output-elements (default 16777216)
MAX_SCRATCH_ELEMENTS = 8000   # set with --max-scratch-elements (default 67108864)
DEFAULT_TTL = 86400
MAX_TTL = 2592000
CHARGE_HORIZON = 3600  # the documented default H
DEFAULT_WINDOW = 3600  # the documented default --quota-window
LONG_WINDOW = 31622400  # the longest quota window: no window boundary during a test

NAME_RE = re.compile(r"[A-Za-z0-9._:-]+")

RUN = uuid.uuid4().hex[:8]   # job ids stay unique if a Redis were ever reused

OBSERVATIONS = []   # what the worker did where the document leaves a choice open


def observe(text):
    OBSERVATIONS.append(text)


def valid_name(s, maxlen):
    """`id`, `user`, `model`, `inbox`: a str of 1..maxlen chars of A-Z a-z 0-9 . _ : -"""
    return (isinstance(s, str) and 1 <= len(s) <= maxlen
            and NAME_RE.fullmatch(s) is not None)


# --------------------------------------------------------------------------
# Redis keys ("Redis keys": prefix, {user}, ':' kind word, at most one variable part)

def ukey(user, kind, var=None):
    k = f"{PREFIX}{{{user}}}:{kind}"
    return k if var is None else f"{k}:{var}"


def k_result(user, jid):
    return ukey(user, "result", jid)


def k_inbox(user, name):
    return ukey(user, "inbox", name)


def k_usage(user):
    return ukey(user, "usage")


def k_window(user, start):
    return ukey(user, "usage:window", start)


def k_models(user):
    return ukey(user, "usage:models")


def k_quota(user):
    return ukey(user, "quota")


K_STATS = f"{PREFIX}stats"

RESULT_FIELDS = {"v", "status", "id", "user", "worker", "source", "enqueued", "started", "done",
                 "model"}
OK_FIELDS = {"version", "shape", "output", "window", "nonfinite"}
ERROR_FIELDS = {"error", "message", "retry_after", "window"}


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


class MapPairs(list):
    """A msgpack map given as (key, value) pairs: keeps order, allows a repeated key."""


def mp(obj):
    """msgpack with float32 for F32, raw splicing for Raw, MapPairs for maps
    that need an order or a repeated key."""
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


DROP = object()   # in expect_error(): leave this key out of the job
NULL = object()   # in produce_jobs(): a message with a null value


def f32_input(x):
    x = np.ascontiguousarray(x, dtype="<f4")
    return {"dtype": "f32", "shape": [int(x.shape[0]), int(x.shape[1])], "data": x.tobytes()}


def is_uint(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


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


def topk_ref(ref, k):
    """"topk": indices of the k largest, largest first, lower index first on ties."""
    idx = np.argsort(-ref, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(ref, idx, axis=1)


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
        """"flops": rows x 2 x sum over layers of in*out"""
        return 2 * sum(i * o for i, o in zip(self.dims[:-1], self.dims[1:]))


# --------------------------------------------------------------------------

class ProtocolClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="kinfer-py-")
        cls.redis_proc = cls.broker = cls.worker = None
        cls.producer = cls.dlq = None
        cls.dlq_seen = collections.defaultdict(list)   # kinfer.source -> [copies]
        cls.popped = collections.defaultdict(list)     # inbox key -> ids this client BLPOPped
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

        # Kafka: the devbroker (creates kinfer.jobs and kinfer.dlq); stdin stays open
        # (a pipe), first stdout line = bootstrap list
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
        # a model name with ':' (the id character set allows it): its per-model
        # counters are "jobs:mlp:rows", never "rows:mlp"
        cls.colon = Model("mlp:rows", [5, 2], ["identity"], rng)
        # a wide hidden layer and one output: for the scratch limit (rows x widest layer)
        cls.wide = Model("wide", [5, 40, 1], ["relu", "identity"], rng)
        # finite weights whose forward pass overflows float32: nonfinite outputs
        cls.huge = Model("huge", [5, 1], ["identity"], weights=[
            (np.full((5, 1), 3e38, np.float32), np.zeros(1, np.float32))])
        # overflows even in float64 (3e38^8 > 1.8e308), then +inf - inf: raw output
        # [NaN, +inf, NaN] for an input of 3e38s, [0, 0, 0] for zeros
        big = np.float32(3e38)
        cls.nan = Model("nan", [5] + [1] * 7 + [2, 3], ["identity"] * 9, weights=(
            [(np.full((5, 1), big, np.float32), np.zeros(1, np.float32))] +
            [(np.full((1, 1), big, np.float32), np.zeros(1, np.float32))] * 6 +
            [(np.array([[big, -big]], np.float32), np.zeros(2, np.float32)),
             (np.array([[1, 1, 1], [1, -1, 1]], np.float32), np.zeros(3, np.float32))]))
        # files that break "Model file" rules: jobs for them get `internal`
        with open(os.path.join(mdir, "broken.kmodel"), "wb") as f:
            f.write(cls.mlp.file_bytes()[:-10])            # truncated msgpack
        with open(os.path.join(mdir, "misnamed.kmodel"), "wb") as f:
            f.write(Model("other", [5, 3], ["identity"], rng).file_bytes())   # name != file name
        for path, m in ((os.path.join(mdir, "mlp.kmodel"), cls.mlp),
                        (os.path.join(mdir, "soft", "1.kmodel"), cls.soft1),
                        (os.path.join(mdir, "soft", "3.kmodel"), cls.soft3),
                        (os.path.join(mdir, "tie.kmodel"), cls.tie),
                        (os.path.join(mdir, "mlp:rows.kmodel"), cls.colon),
                        (os.path.join(mdir, "wide.kmodel"), cls.wide),
                        (os.path.join(mdir, "huge.kmodel"), cls.huge),
                        (os.path.join(mdir, "nan.kmodel"), cls.nan)):
            with open(path, "wb") as f:
                f.write(m.file_bytes())

        # one worker, documented defaults except three limits (documented flags)
        cls.worker_log_path = os.path.join(tmp, "worker.log")
        cls.worker_log = open(cls.worker_log_path, "wb")
        env = dict(os.environ, KINFER_BROKERS=cls.bootstrap,
                   KINFER_REDIS=f"redis://127.0.0.1:{port}/0")
        for k in ("KINFER_TOPIC", "KINFER_PREFIX", "KINFER_GROUP", "KINFER_WORKER_ID",
                  "KINFER_MODELS", "KINFER_DLQ_TOPIC"):
            env.pop(k, None)
        cls.worker = subprocess.Popen(
            [os.path.join(BIN, "kinfer-worker"), "--models", mdir,
             "--max-message-bytes", str(MAX_MESSAGE_BYTES),
             "--max-output-elements", str(MAX_OUTPUT_ELEMENTS),
             "--max-scratch-elements", str(MAX_SCRATCH_ELEMENTS),
             "-X", "session.timeout.ms=6000"],
            env=env, stdin=subprocess.DEVNULL, stdout=cls.worker_log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent)

        cls.producer = Producer({"bootstrap.servers": cls.bootstrap,
                                 "enable.idempotence": True, "linger.ms": 2})

        # warm-up: the first job also waits for the consumer group's first join
        jid = cls.new_id("warmup")
        user = "warm-" + RUN
        cls.produce_jobs([(user, {"v": 2, "id": jid, "user": user, "model": "mlp",
                                  "inbox": "warm", "input": [[1, 2, 3, 4, 5]]})])
        h = cls.wait_result(user, jid, "warm", FIRST_WAIT_S)
        if h is None or h.get("status") != "ok":
            raise RuntimeError(f"warm-up job failed: {h}")

    @classmethod
    def _cleanup(cls, print_log=False):
        try:
            if cls.producer is not None:
                cls.producer.flush(5)
        finally:
            cls.producer = None
        if cls.dlq is not None:
            try:
                cls.dlq.close()
            except Exception:
                pass
            cls.dlq = None
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
        if OBSERVATIONS:
            sys.stderr.write("----- observations (where docs/protocol.md leaves a choice) -----\n"
                             + "".join(f"- {o}\n" for o in OBSERVATIONS)
                             + "----- end of observations -----\n")
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
        """msgs: [(key, job)], job a dict/MapPairs (msgpack'd here), raw bytes or NULL.
        Produces them in order and returns one delivery record per message."""
        reports = [None] * len(msgs)

        def cb(i):
            def on_delivery(err, msg):
                reports[i] = {"err": err, "partition": msg.partition(), "offset": msg.offset(),
                              "timestamp": msg.timestamp()}
            return on_delivery

        sent = []
        for i, (key, job) in enumerate(msgs):
            value = None if job is NULL else job if isinstance(job, bytes) else mp(job)
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
            rep["source"] = f"{TOPIC}/{rep['partition']}/{rep['offset']}"
        return reports

    @classmethod
    def get_result(cls, user, jid):
        """"Result": GET P{U}:result:ID, one msgpack map with string keys."""
        raw = cls.r.get(k_result(user, jid))
        if raw is None:
            return None
        h = msgpack.unpackb(raw, raw=False)   # str -> str, bin -> bytes; trailing bytes raise
        if not isinstance(h, dict) or not all(isinstance(k, str) for k in h):
            raise AssertionError(f"result of {user}/{jid} is not a map with string keys: {h!r}")
        return h

    @classmethod
    def wait_result(cls, user, jid, inbox=None, timeout=WAIT_S):
        """"Waiting for results": GET; else BLPOP the inbox (any id, or a timeout),
        then GET again. Without an inbox the result can only be read with GET."""
        deadline = time.monotonic() + timeout
        h = cls.get_result(user, jid)
        while h is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if inbox is not None:
                ik = k_inbox(user, inbox)
                got = cls.r.blpop([ik], timeout=max(1, min(int(left), 5)))
                if got is not None:
                    cls.popped[ik].append(got[1].decode())
            else:
                time.sleep(0.02)
            h = cls.get_result(user, jid)
        return h

    def result(self, user, jid, inbox=None, timeout=WAIT_S):
        h = self.wait_result(user, jid, inbox, timeout)
        self.assertIsNotNone(h, f"no result for job {user}/{jid} within {timeout} s")
        return h

    def wait_all(self, pairs, timeout=WAIT_S):
        """Reads results "whenever it likes": polls GET for [(user, id)], leaving inboxes
        untouched. Returns {(user, id): result}."""
        deadline = time.monotonic() + timeout
        while True:
            got = {p: self.get_result(*p) for p in pairs}
            if all(v is not None for v in got.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        missing = [p for p, v in got.items() if v is None]
        self.assertFalse(missing, f"no result within {timeout} s for {missing}")
        return got

    def announced(self, user, inbox):
        """Ids announced on an inbox so far: those this client popped, then those still there."""
        ik = k_inbox(user, inbox)
        return self.popped[ik] + [x.decode() for x in self.r.lrange(ik, 0, -1)]

    def wait_announced(self, user, inbox, want, timeout=WAIT_S):
        """Polls (LRANGE, without popping) until the inbox holds every id of the list want
        (with multiplicity); returns what it holds."""
        deadline = time.monotonic() + timeout
        while True:
            have = self.announced(user, inbox)
            c = collections.Counter(have)
            if all(c[x] >= n for x, n in collections.Counter(want).items()) \
                    or time.monotonic() > deadline:
                return have
            time.sleep(0.05)

    def hash_ints(self, key):
        return {k.decode(): int(v) for k, v in self.r.hgetall(key).items()}

    def usage(self, user):
        return self.hash_ints(k_usage(user))

    def usage_models(self, user):
        """P{U}:usage:models, fields COUNTER:MODEL: the model is everything after the
        first ':'. Returns {(counter, model): value}."""
        out = {}
        for k, v in self.r.hgetall(k_models(user)).items():
            counter, sep, model = k.decode().partition(":")
            self.assertEqual(sep, ":", f"usage:models field {k!r} has no ':'")
            self.assertNotIn(":", counter)
            out[(counter, model)] = int(v)
        return out

    def usage_windows(self, user):
        """{S: counters} of every P{U}:usage:window:S."""
        out = {}
        for k in self.r.scan_iter(match=k_window(user, "*"), count=1000):
            s = k.decode()[len(k_window(user, "")):]
            self.assertRegex(s, r"^[0-9]+$", f"window key {k!r}")
            out[int(s)] = self.hash_ints(k)
        return out

    def window_sums(self, user):
        tot = collections.Counter()
        for h in self.usage_windows(user).values():
            for c in ("jobs", "rows", "flops", "errors"):
                tot[c] += h.get(c, 0)
        return dict(tot)

    def stats(self):
        return self.hash_ints(K_STATS)

    def redis_now(self):
        s, us = self.r.time()
        return s + us / 1e6

    def user_keys(self, user):
        return sorted(k.decode() for k in self.r.scan_iter(match=ukey(user, "*"), count=1000))

    def charged(self, user):
        """{B: {id: status}} of every P{U}:charged:B."""
        out = {}
        for k in self.r.scan_iter(match=ukey(user, "charged", "*"), count=1000):
            b = k.decode()[len(ukey(user, "charged", "")):]
            self.assertRegex(b, r"^[0-9]+$", f"charge record key {k!r}")
            out[int(b)] = {f.decode(): v.decode() for f, v in self.r.hgetall(k).items()}
        return out

    def assert_charged(self, user, jid, status):
        """"Duplicates and the charge-once record": the id is a field of the current or
        the previous period's record, valued with the result's status; the record
        lives until B + 2H."""
        recs = self.charged(user)
        now = self.redis_now()
        found = [b for b, h in recs.items() if jid in h]
        self.assertEqual(len(found), 1, f"charge records of {user} for {jid}: {recs}")
        b = found[0]
        self.assertEqual(recs[b][jid], status, f"charge record value of {jid}")
        self.assertEqual(b % CHARGE_HORIZON, 0, f"B={b} is not a multiple of H")
        self.assertTrue(b <= now + 1 and now < b + 2 * CHARGE_HORIZON,
                        f"B={b} is not the current or previous period at {now}")
        ttl = self.r.ttl(ukey(user, "charged", b))
        expect = b + 2 * CHARGE_HORIZON - now
        self.assertTrue(0 < ttl and abs(ttl - expect) <= 3,
                        f"charge record TTL {ttl}, want about {expect:.0f} (until B + 2H)")

    def output(self, h):
        shape = h["shape"]
        self.assertIsInstance(shape, list, "shape is an array")
        self.assertEqual(len(shape), 2, "shape is [rows, cols]")
        self.assertTrue(all(is_uint(x) for x in shape), f"shape of uints: {shape!r}")
        rows, cols = shape
        self.assertIsInstance(h["output"], bytes, "output is a msgpack bin")
        self.assertEqual(len(h["output"]), rows * cols * 4, "output length vs shape")
        return np.frombuffer(h["output"], dtype="<f4").reshape(rows, cols).astype(np.float64)

    def assert_close(self, got, ref, what=""):
        self.assertEqual(got.shape, ref.shape, what)
        err = np.abs(got - ref) / np.maximum(np.abs(ref), 1.0)
        self.assertLessEqual(float(err.max()), RTOL,
                             f"{what}: max scaled error {err.max():.3g}\n got {got}\n ref {ref}")

    def assert_common_fields(self, h, jid, rep, user, model=None):
        """Fields "always present", with their types, checked against what we produced."""
        for f in ("v", "status", "id", "user", "worker", "source", "enqueued", "started", "done"):
            self.assertIn(f, h, f"result field {f!r} missing: {h}")
        self.assertTrue(is_uint(h["v"]) and h["v"] == 2, f"v: {h['v']!r}")
        for f in ("status", "id", "user", "worker", "source"):
            self.assertIsInstance(h[f], str, f"{f} is a msgpack str: {h[f]!r}")
        for f in ("enqueued", "started", "done"):
            self.assertTrue(is_uint(h[f]), f"{f} is a uint: {h[f]!r}")
        self.assertIn(h["status"], ("ok", "error"))
        self.assertEqual(h["id"], jid)
        self.assertEqual(h["user"], user)
        self.assertEqual(h["worker"], f"{socket.gethostname()}:{self.worker.pid}",
                         "worker is host:pid")
        self.assertEqual(h["source"], rep["source"])
        enq, st, dn = h["enqueued"], h["started"], h["done"]
        self.assertEqual(enq, rep["sent_ts"], "enqueued is the Kafka message timestamp")
        self.assertLessEqual(enq, st)
        self.assertLessEqual(st, dn)
        now = int(time.time() * 1000)
        self.assertLessEqual(dn, now + 1000)
        self.assertGreater(enq, now - 600_000, "enqueued is not Unix ms")
        if "model" in h:
            self.assertIsInstance(h["model"], str)
        if model is not None:
            self.assertEqual(h.get("model"), model)
        extra = set(h) - RESULT_FIELDS - (OK_FIELDS if h["status"] == "ok" else ERROR_FIELDS)
        if h["status"] == "error" and "window" in h and h.get("error") != "quota_exceeded":
            extra.add("window")
        if extra:
            observe(f"{h['status']} result {h.get('error', '')} carries fields the document does "
                    f"not list for it: {sorted(extra)}")

    def assert_ok(self, h, jid, rep, user, model, version, nonfinite=None):
        self.assert_common_fields(h, jid, rep, user, model)
        self.assertEqual(h["status"], "ok", f"job {jid}: {h}")
        if nonfinite is None:
            self.assertNotIn("nonfinite", h, "nonfinite on a finite output")
        else:
            self.assertTrue(is_uint(h.get("nonfinite")), f"nonfinite: {h.get('nonfinite')!r}")
            self.assertEqual(h["nonfinite"], nonfinite)
        self.assertTrue(is_uint(h.get("version")), f"version is a uint: {h.get('version')!r}")
        self.assertEqual(h["version"], version)
        self.assertTrue(is_uint(h.get("window")), f"window is a uint: {h.get('window')!r}")
        self.assertLessEqual(h["window"], h["started"] // 1000 + 2,
                             "window starts before the job was picked up")
        self.assertNotIn("error", h)
        return self.output(h)

    def assert_quota_exceeded(self, h, window_len, never_fits=False):
        self.assertEqual((h["status"], h.get("error")), ("error", "quota_exceeded"), h)
        self.assertNotIn("output", h)
        self.assertTrue(is_uint(h.get("window")), f"window of quota_exceeded: {h}")
        self.assertEqual(h["window"] % window_len, 0, "windows are aligned to Unix time")
        if never_fits:
            self.assertNotIn("retry_after", h, "a job no window can take has no retry_after")
        else:
            self.assertTrue(is_uint(h.get("retry_after")), f"retry_after: {h}")
            expect = h["window"] + window_len - self.redis_now()
            self.assertTrue(0 <= h["retry_after"] <= window_len
                            and abs(h["retry_after"] - expect) <= 3 + WAIT_S,
                            f"retry_after {h['retry_after']}, window resets in {expect:.0f} s")

    def assert_usage_consistent(self, user):
        """Lifetime counters = sum of the window counters; jobs/rows/flops = sum of the
        per-model counters (errors too, when every error had a readable model)."""
        u = self.usage(user)
        w = self.window_sums(user)
        m = collections.Counter()
        for (c, _), v in self.usage_models(user).items():
            m[c] += v
        for c in ("jobs", "rows", "flops", "errors"):
            self.assertEqual(u.get(c, 0), w.get(c, 0), f"{user}: usage {c} vs its windows")
        for c in ("jobs", "rows", "flops"):
            self.assertEqual(u.get(c, 0), m.get(c, 0), f"{user}: usage {c} vs usage:models")
        self.assertLessEqual(m.get("errors", 0), u.get("errors", 0))

    def job(self, jid, user, model, inp, **kw):
        j = {"v": 2, "id": jid, "user": user, "model": model, "input": inp}
        j.update(kw)
        return j

    def rng(self):
        return np.random.default_rng(zlib.crc32(self.id().encode()))

    # ----------------------------------------------------------- ok results

    def test_raw_both_input_forms_fields_and_usage(self):
        rng = self.rng()
        user = "raw-" + RUN
        box = "raw"
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
        reps = self.produce_jobs([(user, self.job(j, user, "mlp", inp, inbox=box))
                                  for j, inp, _ in jobs])
        total_rows = 0
        windows = set()
        for (jid, _, x), rep in zip(jobs, reps):
            h = self.result(user, jid, box)
            out = self.assert_ok(h, jid, rep, user, "mlp", 1)
            self.assertEqual(h["shape"], [x.shape[0], 3])
            self.assert_close(out, m.forward(x), f"raw {jid}")
            total_rows += x.shape[0]
            windows.add(h["window"])
            self.assertEqual(h["window"] % DEFAULT_WINDOW, 0, "default window: 3600 s, aligned")
        # every id announced once on the inbox
        self.assertEqual(sorted(self.announced(user, box)), sorted(j for j, _, _ in jobs))
        flops = total_rows * m.flops_per_row
        self.assertEqual(flops, total_rows * 2 * (5 * 7 + 7 * 3))
        u = self.usage(user)
        # the counters the doc lists; the hash also holds window_start, window_s
        self.assertEqual({k: v for k, v in u.items() if k in ("jobs", "rows", "flops")},
                         {"jobs": len(jobs), "rows": total_rows, "flops": flops}, u)
        self.assertEqual(u.get("errors", 0), 0)
        self.assertEqual(u.get("window_s"), DEFAULT_WINDOW, u)
        self.assertIn(u.get("window_start"), windows, u)
        self.assertEqual(self.r.ttl(k_usage(user)), -1, "usage hash has no TTL")
        # per-window counters
        uw = self.usage_windows(user)
        self.assertEqual(set(uw), windows)
        self.assertEqual(self.window_sums(user), {"jobs": len(jobs), "rows": total_rows,
                                                  "flops": flops, "errors": 0})
        now = self.redis_now()
        for s in uw:
            ttl = self.r.ttl(k_window(user, s))
            expect = s + 2 * DEFAULT_WINDOW - now   # one window length after the window ends
            self.assertTrue(abs(ttl - expect) <= 3, f"TTL of window {s}: {ttl}, want {expect:.0f}")
        # per-model counters
        self.assertEqual(self.usage_models(user),
                         {("jobs", "mlp"): len(jobs), ("rows", "mlp"): total_rows,
                          ("flops", "mlp"): flops})
        self.assertEqual(self.r.ttl(k_models(user)), -1, "usage:models has no TTL")
        # charge records
        for jid, _, _ in jobs:
            self.assert_charged(user, jid, "ok")
        self.assert_usage_consistent(user)

    def test_softmax_argmax_outputs(self):
        rng = self.rng()
        user = "sm-" + RUN
        x = rng.standard_normal((16, 5)).astype(np.float32) * 2
        ref = self.mlp.forward(x)
        top2 = np.sort(ref, axis=1)[:, -2:]
        self.assertTrue(np.all(top2[:, 1] - top2[:, 0] > 1e-3), "test data has near ties")
        ids = {o: self.new_id(o) for o in ("raw", "softmax", "argmax")}
        reps = self.produce_jobs([(user, self.job(ids[o], user, "mlp", f32_input(x), output=o,
                                                  inbox="sm"))
                                  for o in ids])
        outs = {}
        for (o, jid), rep in zip(ids.items(), reps):
            outs[o] = self.assert_ok(self.result(user, jid, "sm"), jid, rep, user, "mlp", 1)
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
        reps = self.produce_jobs([(user, self.job(jr, user, "tie", [[1, 2, 3, 4, 5]],
                                                  inbox="t")),
                                  (user, self.job(ja, user, "tie", f32_input(x), output="argmax",
                                                  inbox="t"))])
        raw = self.assert_ok(self.result(user, jr, "t"), jr, reps[0], user, "tie", 1)
        np.testing.assert_array_equal(raw, [[0.5, 2.0, 2.0]])
        am = self.assert_ok(self.result(user, ja, "t"), ja, reps[1], user, "tie", 1)
        np.testing.assert_array_equal(am, [[1.0], [1.0], [1.0]])

    def test_topk_outputs(self):
        rng = self.rng()
        user = "topk-" + RUN
        x = rng.standard_normal((12, 5)).astype(np.float32) * 2
        ref = self.mlp.forward(x)
        srt = np.sort(ref, axis=1)
        self.assertTrue(np.all(np.diff(srt, axis=1) > 1e-3), "test data has near ties")
        cases = [("k1", "mlp", x, 1), ("k2", "mlp", x, 2), ("k3", "mlp", x, 3),
                 ("tie2", "tie", x[:2], 2), ("tie3", "tie", x[:2], 3)]
        ids = [self.new_id("topk-" + c[0]) for c in cases]
        # k given with output raw: ignored (but type-checked)
        jraw = self.new_id("topk-rawk")
        reps = self.produce_jobs(
            [(user, self.job(jid, user, mname, f32_input(xx), output="topk", k=k, inbox="k"))
             for jid, (_, mname, xx, k) in zip(ids, cases)] +
            [(user, self.job(jraw, user, "mlp", f32_input(x), output="raw", k=2, inbox="k"))])
        for jid, rep, (tag, mname, xx, k) in zip(ids, reps, cases):
            out = self.assert_ok(self.result(user, jid, "k"), jid, rep, user, mname, 1)
            self.assertEqual(out.shape, (xx.shape[0], 2 * k), tag)
            model = self.mlp if mname == "mlp" else self.tie
            idx, val = topk_ref(model.forward(xx), k)
            np.testing.assert_array_equal(out[:, :k], idx, f"{tag}: indices")
            self.assert_close(out[:, k:], val, f"{tag}: values")
        # the tie model's raw output is [0.5, 2, 2] for every row
        out = self.output(self.get_result(user, ids[4]))
        np.testing.assert_array_equal(out, [[1, 2, 0, 2.0, 2.0, 0.5]] * 2)
        out = self.assert_ok(self.result(user, jraw, "k"), jraw, reps[-1], user, "mlp", 1)
        self.assert_close(out, ref, "k ignored with output raw")

    def test_model_versions_and_softmax_layer(self):
        rng = self.rng()
        user = "ver-" + RUN
        x = rng.standard_normal((6, 5)).astype(np.float32)
        cases = [("none", {}, self.soft3, 3), ("zero", {"version": 0}, self.soft3, 3),
                 ("pin1", {"version": 1}, self.soft1, 1), ("pin3", {"version": 3}, self.soft3, 3)]
        ids = [self.new_id("ver-" + c[0]) for c in cases]
        reps = self.produce_jobs([(user, self.job(jid, user, "soft", f32_input(x), inbox="v", **kw))
                                  for jid, (_, kw, _, _) in zip(ids, cases)])
        for jid, rep, (tag, _, m, ver) in zip(ids, reps, cases):
            out = self.assert_ok(self.result(user, jid, "v"), jid, rep, user, "soft", ver)
            self.assert_close(out, m.forward(x), f"soft {tag}")
            np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=0, atol=1e-5)
        # flops are those of the version that computed the job
        u = self.usage(user)
        self.assertEqual(u["flops"], 6 * (3 * self.soft3.flops_per_row + self.soft1.flops_per_row))
        # output=softmax on a model whose last layer is already a softmax: refused
        # ("Result": a second softmax would flatten the probabilities)
        self.expect_error("smsm", {"version": 1, "output": "softmax", "input": f32_input(x)},
                          "bad_request", ["softmax", "probabilities"], model="soft")

    def test_ttl_and_inbox(self):
        user = "ttl-" + RUN
        cases = [  # tag, job fields, expected result TTL, status
            ("ttl120", {"ttl": 120}, 120, "ok"),
            ("ttldef", {}, DEFAULT_TTL, "ok"),
            ("ttlmax", {"ttl": MAX_TTL}, MAX_TTL, "ok"),
            ("ttlerr", {"ttl": 60, "model": "nosuchmodel", "input": [[1]]}, 60, "error"),
            # an invalid ttl: bad_request, the result lives the default 86400 s,
            # and is announced on the (valid) inbox
            ("ttlbad", {"ttl": 0}, DEFAULT_TTL, "error"),
        ]
        ids = {c[0]: self.new_id(c[0]) for c in cases}
        msgs = []
        for tag, kw, _, _ in cases:
            j = self.job(ids[tag], user, "mlp", [[1, 2, 3, 4, 5]], inbox="box-" + tag)
            j.update(kw)
            msgs.append((user, j))
        self.produce_jobs(msgs)
        # read the results "whenever it likes": poll GET, so that the inboxes stay untouched
        got = self.wait_all([(user, ids[c[0]]) for c in cases])
        for tag, kw, ttl, status in cases:
            jid = ids[tag]
            h = got[(user, jid)]
            self.assertEqual(h["status"], status, h)
            rk, ik = k_result(user, jid), k_inbox(user, "box-" + tag)
            t = self.r.ttl(rk)
            self.assertTrue(ttl - 60 < t <= ttl, f"TTL of {rk} is {t}, want ~{ttl}")
            self.assertEqual(self.r.type(rk), b"string")
            self.assertEqual(self.r.lrange(ik, 0, -1), [jid.encode()],
                             "inbox: one element, the job id")
            t = self.r.ttl(ik)
            if "ttl" in kw and kw["ttl"] == 0:
                self.assertGreater(t, 0, f"inbox {ik} has a TTL")
                observe(f"inbox TTL after a job with the invalid ttl 0 (result lives {DEFAULT_TTL} s): {t} s")
            else:
                self.assertTrue(ttl - 60 < t <= ttl, f"TTL of {ik} is {t}, want ~{ttl}")
        # BLPOP returns the id once
        ik = k_inbox(user, "box-ttl120")
        self.assertEqual(self.r.blpop([ik], timeout=1), (ik.encode(), ids["ttl120"].encode()))
        self.assertEqual(self.r.blpop([ik], timeout=1), None, "only one BLPOP returns it")
        self.assertEqual(self.result(user, ids["ttl120"], timeout=1)["status"], "ok")

    def test_inbox_ttl_is_the_longest_from_the_latest_push(self):
        user = "ibttl-" + RUN
        # one batch of three ttls on one inbox: the longest
        ids = [self.new_id("ib3") for _ in range(3)]
        self.produce_jobs([(user, self.job(jid, user, "mlp", [[1, 2, 3, 4, 5]], ttl=t,
                                           inbox="three"))
                           for jid, t in zip(ids, (100, 300, 200))])
        self.wait_all([(user, j) for j in ids])
        self.assertEqual(sorted(self.announced(user, "three")), sorted(ids))
        t = self.r.ttl(k_inbox(user, "three"))
        self.assertTrue(240 < t <= 300, f"inbox TTL {t}, want ~300 (the longest ttl)")
        # a later push with a shorter ttl does not shorten the list's life ("at least")
        ja, jb = self.new_id("iblong"), self.new_id("ibshort")
        self.produce_jobs([(user, self.job(ja, user, "mlp", [[1, 2, 3, 4, 5]], inbox="ls"))])
        self.wait_all([(user, ja)])
        self.produce_jobs([(user, self.job(jb, user, "mlp", [[1, 2, 3, 4, 5]], ttl=120,
                                           inbox="ls"))])
        self.wait_all([(user, jb)])
        t = self.r.ttl(k_inbox(user, "ls"))
        self.assertTrue(DEFAULT_TTL - 60 < t <= DEFAULT_TTL, f"inbox TTL {t}, want ~{DEFAULT_TTL}")
        # a later push with a longer ttl extends it
        jc, jd = self.new_id("ibshort2"), self.new_id("iblonger")
        self.produce_jobs([(user, self.job(jc, user, "mlp", [[1, 2, 3, 4, 5]], ttl=60,
                                           inbox="sl"))])
        self.wait_all([(user, jc)])
        self.produce_jobs([(user, self.job(jd, user, "mlp", [[1, 2, 3, 4, 5]], ttl=600,
                                           inbox="sl"))])
        self.wait_all([(user, jd)])
        t = self.r.ttl(k_inbox(user, "sl"))
        self.assertTrue(540 < t <= 600, f"inbox TTL {t}, want ~600")
        self.assertEqual(self.announced(user, "sl"), [jc, jd])

    def test_nonfinite_output_flagged_and_charged(self):
        user = "nonfin-" + RUN
        x = np.array([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [-1, -1, -1, -1, -1], [1e-30] * 5],
                     np.float32)
        jid, jfin = self.new_id("nonfin"), self.new_id("fin")
        reps = self.produce_jobs([
            (user, self.job(jid, user, "huge", f32_input(x), inbox="n")),
            (user, self.job(jfin, user, "huge", f32_input(x[[0, 3]]), inbox="n"))])
        h = self.result(user, jid, "n")
        out = self.assert_ok(h, jid, reps[0], user, "huge", 1, nonfinite=2)
        self.assertEqual(out[0, 0], 0.0)
        self.assertEqual(out[1, 0], np.inf)
        self.assertEqual(out[2, 0], -np.inf)
        self.assertTrue(np.isfinite(out[3, 0]))
        out = self.assert_ok(self.result(user, jfin, "n"), jfin, reps[1], user, "huge", 1)
        self.assertTrue(np.all(np.isfinite(out)))
        u = self.usage(user)
        self.assertEqual((u["jobs"], u["rows"], u.get("errors", 0)), (2, 6, 0),
                         "a nonfinite job is computed and charged")

    def test_topk_nan_ranks_below_every_number(self):
        user = "nanrank-" + RUN
        x = np.array([[3e38] * 5, [0] * 5], np.float32)
        with np.errstate(all="ignore"):
            ref = self.nan.forward(x)
        self.assertTrue(np.isnan(ref[0, 0]) and ref[0, 1] == np.inf and np.isnan(ref[0, 2]), ref)
        jr, jt, ja = self.new_id("nan-raw"), self.new_id("nan-topk"), self.new_id("nan-argmax")
        reps = self.produce_jobs([
            (user, self.job(jr, user, "nan", f32_input(x), inbox="n")),
            (user, self.job(jt, user, "nan", f32_input(x), output="topk", k=3, inbox="n")),
            (user, self.job(ja, user, "nan", f32_input(x), output="argmax", inbox="n"))])
        raw = self.assert_ok(self.result(user, jr, "n"), jr, reps[0], user, "nan", 1, nonfinite=3)
        np.testing.assert_array_equal(raw, ref)     # NaN == NaN for assert_array_equal
        # largest first, NaN below every number, the lower index first among the NaNs
        top = self.assert_ok(self.result(user, jt, "n"), jt, reps[1], user, "nan", 1,
                             nonfinite=3)
        np.testing.assert_array_equal(top, [[1, 0, 2, np.inf, np.nan, np.nan],
                                            [0, 1, 2, 0, 0, 0]])
        h = self.result(user, ja, "n")
        self.assertEqual(h["status"], "ok", h)
        observe(f"argmax of the row [NaN, +inf, NaN] (the document gives the NaN rule for topk "
                f"only): {self.output(h)[0, 0]}, nonfinite {h.get('nonfinite')}")
        self.assertEqual(self.usage(user)["jobs"], 3)

    def test_no_inbox_not_announced(self):
        user = "noib-" + RUN
        jid = self.new_id("noib")
        rep = self.produce_jobs([(user, self.job(jid, user, "mlp", [[1, 2, 3, 4, 5]]))])[0]
        h = self.result(user, jid)   # GET only
        self.assert_ok(h, jid, rep, user, "mlp", 1)
        self.assertEqual([k for k in self.user_keys(user) if k.startswith(k_inbox(user, ""))], [],
                         "a job without inbox is not announced")

    def test_deadline_in_future_or_zero_is_computed(self):
        user = "dlok-" + RUN
        jf, jz = self.new_id("dl-future"), self.new_id("dl-zero")
        reps = self.produce_jobs([
            (user, self.job(jf, user, "mlp", [[1, 2, 3, 4, 5]], inbox="d",
                            deadline=int(time.time() * 1000) + 600_000)),
            (user, self.job(jz, user, "mlp", [[1, 2, 3, 4, 5]], inbox="d", deadline=0))])
        for jid, rep in zip((jf, jz), reps):
            out = self.assert_ok(self.result(user, jid, "d"), jid, rep, user, "mlp", 1)
            self.assert_close(out, self.mlp.forward([[1, 2, 3, 4, 5]]))

    def test_unknown_keys_ignored_and_message_key_not_interpreted(self):
        user = "extra-" + RUN
        j1, j2, j3 = self.new_id("extra"), self.new_id("otherkey"), self.new_id("nokey")
        reps = self.produce_jobs([
            (user, self.job(j1, user, "mlp", [[1, 2, 3, 4, 5]], inbox="e",
                            future_field={"x": [1, 2]}, z=b"\x00")),
            ("somebody-else", self.job(j2, user, "mlp", [[1, 2, 3, 4, 5]], inbox="e")),
            (None, self.job(j3, user, "mlp", [[1, 2, 3, 4, 5]], inbox="e"))])
        for jid, rep in zip((j1, j2, j3), reps):
            self.assert_ok(self.result(user, jid, "e"), jid, rep, user, "mlp", 1)
        self.assertEqual(self.user_keys("somebody-else"), [])
        self.assertEqual(self.usage(user)["jobs"], 3)

    # ---------------------------------------------------------------- errors

    def expect_error(self, tag, fields, code, words, model="mlp", key=None, user=None):
        """Submits one job, returns its result after checking the error contract.
        fields: the job map (dict, or MapPairs without v/id/user/inbox) to merge in.
        words: each a str or a tuple of alternatives; the message must contain it."""
        user = user or f"{tag}-{RUN}"
        jid = self.new_id(tag)
        box = f"{tag}-box"
        if isinstance(fields, MapPairs):
            job = MapPairs([("v", 2), ("id", jid), ("user", user), ("inbox", box)] + list(fields))
            last = dict(job)
        else:
            job = {"v": 2, "id": jid, "user": user, "inbox": box, "model": model,
                   "input": [[1, 2, 3, 4, 5]]}
            job.update(fields)
            job = {k: v for k, v in job.items() if v is not DROP}
            last = job
        inbox = last.get("inbox")
        inbox_ok = valid_name(inbox, 64)
        ttl = last.get("ttl")
        ttl_expect = ttl if (is_uint(ttl) and 1 <= ttl <= MAX_TTL) else DEFAULT_TTL
        before = (self.usage(user), self.window_sums(user), self.usage_models(user))
        rep = self.produce_jobs([(key or user, job)])[0]
        h = self.result(user, jid, inbox if inbox_ok else None)
        self.assert_common_fields(h, jid, rep, user=user)
        if "model" in last and not valid_name(last["model"], 64):
            observe(f"{tag}: invalid model {last['model']!r}: result "
                    f"{'has model ' + repr(h['model']) if 'model' in h else 'has no model'}")
        self.assertEqual(h["status"], "error", f"{tag}: {h}")
        self.assertEqual(h.get("error"), code, f"{tag}: {h}")
        self.assertNotIn("output", h)
        msg = h.get("message", "")
        self.assertIsInstance(msg, str)
        self.assertTrue(msg, f"{tag}: no message")
        for w in words:
            alts = w if isinstance(w, tuple) else (w,)
            self.assertTrue(any(a.lower() in msg.lower() for a in alts),
                            f"{tag}: message {msg!r} does not name {alts}")
        # lifetime: the job's ttl when valid, else the default
        t = self.r.ttl(k_result(user, jid))
        self.assertTrue(ttl_expect - 60 < t <= ttl_expect,
                        f"{tag}: result TTL {t}, want ~{ttl_expect}")
        # announced on its inbox when that field is valid
        if inbox_ok:
            self.assertIn(jid, self.announced(user, inbox), f"{tag}: not announced")
        else:
            self.assertEqual([k for k in self.user_keys(user) if k.startswith(k_inbox(user, ""))],
                             [], f"{tag}: announced on an invalid inbox")
        # an error result only adds one to errors
        u0, w0, m0 = before
        after = self.usage(user)
        self.assertEqual(after.get("errors", 0), u0.get("errors", 0) + 1, f"{tag}: {after}")
        for f in ("jobs", "rows", "flops"):
            self.assertEqual(after.get(f, 0), u0.get(f, 0), f"{tag}: error charged {f}")
        w1 = self.window_sums(user)
        self.assertEqual(w1.get("errors", 0), w0.get("errors", 0) + 1, f"{tag}: window {w1}")
        for f in ("jobs", "rows", "flops"):
            self.assertEqual(w1.get(f, 0), w0.get(f, 0), f"{tag}: window charged {f}")
        m1 = self.usage_models(user)
        changed = {k: (m0.get(k, 0), v) for k, v in m1.items() if m0.get(k, 0) != v}
        hm = h.get("model")
        if hm is None:
            self.assertEqual(changed, {}, f"{tag}: per-model counters of a job without model")
        elif code == "unknown_model" or not valid_name(hm, 64):
            observe(f"{tag}: {code} for model {hm!r}: usage:models changed {changed}")
        else:   # "errors:xor": the error results of jobs for model xor
            e0 = m0.get(("errors", hm), 0)
            self.assertEqual(changed, {("errors", hm): (e0, e0 + 1)}, f"{tag}: per-model counters")
        self.assert_charged(user, jid, "error")
        return h

    def test_error_missing_model(self):
        h = self.expect_error("nomodel", {"model": DROP}, "bad_request", ["model"])
        self.assertNotIn("model", h)

    def test_error_ragged_rows(self):
        self.expect_error("ragged", {"input": [[1, 2, 3, 4, 5], [1, 2, 3, 4], [1, 2, 3, 4, 5]]},
                          "bad_request", ["row 1", "4"])

    def test_error_empty_input(self):
        self.expect_error("norows", {"input": []}, "bad_request", ["input"])
        self.expect_error("emptyrow", {"input": [[]]}, "bad_request", ["input"])

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

    def test_error_f32_bad_dtype(self):
        inp = f32_input(np.ones((2, 5), np.float32))
        inp["dtype"] = "f16"
        self.expect_error("f16", {"input": inp}, "bad_request", ["dtype"])

    def test_error_unsupported_version(self):
        self.expect_error("v3", {"v": 3}, "bad_request", [("'v'", "\"v\"", "version", " v "), "3"])
        self.expect_error("vmissing", {"v": DROP}, "bad_request",
                          [("'v'", "\"v\"", "version", " v ")])
        self.expect_error("vstr", {"v": "2"}, "bad_request", [("'v'", "\"v\"", "version", " v ")])

    def test_v1_job_refused_at_the_v2_location(self):
        # "a job with v: 1 gets a bad_request result (in the version 2 layout, under its
        # user) saying that version 1 is no longer accepted". A v1 job names no inbox.
        user = "v1-" + RUN
        jid = self.new_id("v1")
        before = self.usage(user)
        rep = self.produce_jobs([(user, {"v": 1, "id": jid, "user": user, "model": "mlp",
                                         "input": [[1, 2, 3, 4, 5]]})])[0]
        h = self.result(user, jid)     # GET of P{U}:result:ID
        self.assert_common_fields(h, jid, rep, user)
        self.assertEqual((h["status"], h.get("error")), ("error", "bad_request"), h)
        self.assertRegex(h["message"], r"(?i)version", h["message"])
        self.assertRegex(h["message"], r"\b1\b", h["message"])
        self.assertNotIn("output", h)
        observe(f"v1 job result: model {'present' if 'model' in h else 'absent'}, "
                f"message {h['message']!r}")
        self.assertEqual(self.usage(user).get("errors", 0), before.get("errors", 0) + 1)
        self.assertEqual(self.usage(user).get("jobs", 0), 0)
        # nothing at the version 1 locations
        for k in (f"{PREFIX}result:{jid}", f"{PREFIX}done:{jid}", f"{PREFIX}usage:{user}"):
            self.assertFalse(self.r.exists(k), f"{k} written")
        self.assertGreater(self.r.ttl(k_result(user, jid)), DEFAULT_TTL - 60)

    def test_error_duplicate_key(self):
        self.expect_error("dupkey", MapPairs([("model", "mlp"), ("input", [[1, 2, 3, 4, 5]]),
                                              ("model", "mlp")]),
                          "bad_request", ["model"])

    def test_error_mistyped_fields(self):
        self.expect_error("modelint", {"model": 7}, "bad_request", ["model"])
        self.expect_error("modelbad", {"model": "a{b}"}, "bad_request", ["model"])
        self.expect_error("modellong", {"model": "m" * 65}, "bad_request", ["model"])
        self.expect_error("verneg", {"version": -1}, "bad_request", ["version"])
        self.expect_error("verbig", {"version": 2**32}, "bad_request", ["version"])
        self.expect_error("outbogus", {"output": "bogus"}, "bad_request", ["output"])
        self.expect_error("dlneg", {"deadline": -5}, "bad_request", ["deadline"])
        self.expect_error("ttlstr", {"ttl": "60"}, "bad_request", ["ttl"])

    def test_error_bad_ttl_and_inbox(self):
        self.expect_error("ttl0", {"ttl": 0}, "bad_request", ["ttl"])
        self.expect_error("ttlbig", {"ttl": MAX_TTL + 1}, "bad_request", ["ttl"])
        # an invalid inbox: bad_request, and not announced anywhere
        self.expect_error("ibspace", {"inbox": "has space"}, "bad_request", ["inbox"])
        self.expect_error("iblong", {"inbox": "i" * 65}, "bad_request", ["inbox"])
        self.expect_error("ibbrace", {"inbox": "x}:usage"}, "bad_request", ["inbox"])
        self.expect_error("ibempty", {"inbox": ""}, "bad_request", ["inbox"])

    def test_error_topk_k(self):
        self.expect_error("topknok", {"output": "topk"}, "bad_request", ["k"])
        self.expect_error("topk0", {"output": "topk", "k": 0}, "bad_request", ["k"])
        # found once the model is known: mlp has output_dim 3
        self.expect_error("topk4", {"output": "topk", "k": 4}, "bad_request", ["k", ("3", "4")])
        # ignored, but type-checked, with another output
        self.expect_error("rawkstr", {"output": "raw", "k": "2"}, "bad_request", ["k"])
        # is the range 1..output_dim checked when k is ignored? not stated: observed
        user = "rawk0-" + RUN
        ids = [self.new_id("rawk0"), self.new_id("rawk9")]
        self.produce_jobs([(user, self.job(ids[0], user, "mlp", [[1, 2, 3, 4, 5]], k=0, inbox="k")),
                           (user, self.job(ids[1], user, "mlp", [[1, 2, 3, 4, 5]], k=9, inbox="k"))])
        got = self.wait_all([(user, j) for j in ids])
        observe(f"output raw with k=0: {got[(user, ids[0])].get('error', 'ok')}; "
                f"with k=9: {got[(user, ids[1])].get('error', 'ok')}")

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
        self.assertGreater(h["started"], deadline, "picked up after the deadline")

    def test_error_internal_bad_model_file(self):
        self.expect_error("corrupt", {"model": "broken"}, "internal", ["broken"])
        self.expect_error("misnamed", {"model": "misnamed"}, "internal", [("other", "name")])

    def test_error_too_many_rows(self):
        rows = [[1, 2, 3, 4, 5]] * (MAX_ROWS + 1)   # ~393 KB of msgpack, under the size limit
        self.expect_error("toolarge", {"input": rows}, "too_large",
                          [("rows", "row"), (str(MAX_ROWS), str(MAX_ROWS + 1))])

    def test_error_declared_shape_over_limits_before_data(self):
        # "input, whose declared shape is checked against the limits, too_large, before
        # its data": no data at all, still too_large, not bad_request
        self.expect_error("shaperows", {"input": {"dtype": "f32", "shape": [MAX_ROWS + 1, 5],
                                                  "data": b""}},
                          "too_large", [("rows", "row")])
        self.expect_error("shapeelems", {"input": {"dtype": "f32", "shape": [MAX_ROWS, 257],
                                                   "data": b""}},
                          "too_large", [("element", str(MAX_ELEMENTS), str(MAX_ROWS * 257))])

    def test_error_output_and_scratch_limits(self):
        # "the last two once its model is known, before computing it"
        n_out = MAX_OUTPUT_ELEMENTS // 3 + 1            # mlp: 3 outputs a row, widest layer 7
        self.assertLessEqual(n_out * 7, MAX_SCRATCH_ELEMENTS)
        self.expect_error("outlimit", {"input": f32_input(np.ones((n_out, 5), np.float32))},
                          "too_large", [("output",), (str(MAX_OUTPUT_ELEMENTS), str(n_out * 3))])
        n_scr = MAX_SCRATCH_ELEMENTS // 40 + 1          # wide: widest layer 40, 1 output a row
        self.assertLessEqual(n_scr, MAX_OUTPUT_ELEMENTS)
        self.expect_error("scrlimit", {"model": "wide",
                                       "input": f32_input(np.ones((n_scr, 5), np.float32))},
                          "too_large", [(str(MAX_SCRATCH_ELEMENTS), str(n_scr * 40))])
        # the document does not place these two checks in the error order: observed
        ouser = "limord-" + RUN
        self.r.hset(k_quota(ouser), mapping={"jobs": "0"})
        big = np.ones((n_out, 5), np.float32)
        cases = [("cols", dict(input=f32_input(np.ones((n_out, 4), np.float32)))),
                 ("expired", dict(input=f32_input(big), deadline=int(time.time() * 1000) - 1000)),
                 ("topk9", dict(input=f32_input(big), output="topk", k=9)),
                 ("quota0", dict(input=f32_input(big)))]
        oids = [self.new_id("limord") for _ in cases]
        self.produce_jobs([(ouser, dict(self.job(j, ouser, "mlp", None, inbox="o"), **kw))
                           for j, (_, kw) in zip(oids, cases)])
        got = self.wait_all([(ouser, j) for j in oids])
        observe("output limit combined with another fault -> " + ", ".join(
            f"{t}: {got[(ouser, j)].get('error')}" for j, (t, _) in zip(oids, cases)))
        # at the limits: computed
        user = "atlimit-" + RUN
        ja, jb = self.new_id("atout"), self.new_id("atscr")
        xa = np.ones((MAX_OUTPUT_ELEMENTS // 3, 5), np.float32)
        xb = np.ones((MAX_SCRATCH_ELEMENTS // 40, 5), np.float32)
        reps = self.produce_jobs([(user, self.job(ja, user, "mlp", f32_input(xa), inbox="l")),
                                  (user, self.job(jb, user, "wide", f32_input(xb), inbox="l"))])
        out = self.assert_ok(self.result(user, ja, "l"), ja, reps[0], user, "mlp", 1)
        self.assert_close(out, self.mlp.forward(xa))
        out = self.assert_ok(self.result(user, jb, "l"), jb, reps[1], user, "wide", 1)
        self.assert_close(out, self.wide.forward(xb))

    def test_error_order(self):
        """"When a job has several faults, the first check that fails names it"."""
        past = int(time.time() * 1000) - 1000
        cols4 = f32_input(np.ones((2, 4), np.float32))
        # v before model
        self.expect_error("ord-v-model", {"v": 3, "model": DROP}, "bad_request",
                          [("'v'", "\"v\"", "version", " v ")])
        # ttl before input
        self.expect_error("ord-ttl-input", {"ttl": 0, "input": [[1, 2], [1]]}, "bad_request",
                          ["ttl"])
        # inbox before version
        self.expect_error("ord-inbox-ver", {"inbox": "a b", "version": -1}, "bad_request",
                          ["inbox"])
        # expired before unknown_model
        self.expect_error("ord-exp-model", {"model": "nosuchmodel", "deadline": past},
                          "expired", [("deadline", "expired")])
        # unknown_model before shape_mismatch
        self.expect_error("ord-model-cols", {"model": "nosuchmodel", "input": cols4},
                          "unknown_model", ["nosuchmodel"])
        # shape_mismatch before k over output_dim
        self.expect_error("ord-cols-k", {"input": cols4, "output": "topk", "k": 9},
                          "shape_mismatch", ["4", "5"])
        # everything before quota_exceeded: a user whose quota is 0 jobs
        blocked = "ord-blocked-" + RUN
        self.r.hset(k_quota(blocked), mapping={"jobs": "0"})
        self.expect_error("ord-cols-quota", {"input": cols4}, "shape_mismatch", ["4", "5"],
                          user=blocked)
        self.expect_error("ord-k-quota", {"output": "topk", "k": 4}, "bad_request", ["k"],
                          user=blocked)
        self.expect_error("ord-model-quota", {"model": "nosuchmodel"}, "unknown_model",
                          ["nosuchmodel"], user=blocked)
        h = self.expect_error("ord-quota", {}, "quota_exceeded", [], user=blocked)
        self.assert_quota_exceeded(h, DEFAULT_WINDOW, never_fits=("retry_after" not in h))
        observe(f"quota jobs=0 (blocked user): retry_after "
                f"{'present' if 'retry_after' in h else 'absent'}: {h.get('message')!r}")

    # ----------------------------------------------------------- dead letters

    def dlq_read(self, sources, timeout=WAIT_S):
        """Reads kinfer.dlq from its beginning until a copy of each message of sources
        ('topic/partition/offset' strings) is found; returns {source: [copies]}."""
        cls = type(self)
        if cls.dlq is None:
            cls.dlq = Consumer({"bootstrap.servers": cls.bootstrap, "group.id": f"py-dlq-{RUN}",
                                "enable.auto.commit": False, "auto.offset.reset": "earliest"})
            md = cls.dlq.list_topics(DLQ_TOPIC, timeout=10)
            parts = md.topics[DLQ_TOPIC].partitions
            self.assertTrue(parts, "kinfer.dlq has no partitions")
            cls.dlq.assign([TopicPartition(DLQ_TOPIC, p, OFFSET_BEGINNING) for p in parts])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(s in cls.dlq_seen for s in sources):
            m = cls.dlq.poll(0.2)
            if m is None or m.error():
                continue
            hdrs = {}
            for k, v in (m.headers() or []):
                hdrs.setdefault(k, []).append(v.decode() if v is not None else None)
            src = (hdrs.get("kinfer.source") or [None])[0]
            cls.dlq_seen[src].append({"key": m.key(), "value": m.value(), "headers": hdrs})
        return {s: cls.dlq_seen.get(s, []) for s in sources}

    def assert_dead_lettered(self, msgs, reps, code="bad_request", reason_words=None):
        """Each message of msgs [(key, value bytes)] was copied to the dead-letter topic
        with its key, value and the documented headers."""
        copies = self.dlq_read([rep["source"] for rep in reps])
        for i, ((key, value), rep) in enumerate(zip(msgs, reps)):
            cs = copies[rep["source"]]
            self.assertEqual(len(cs), 1, f"message {i} ({value[:60]!r}): {len(cs)} DLQ copies")
            c = cs[0]
            self.assertEqual(c["key"], key.encode() if isinstance(key, str) else key, f"message {i}")
            self.assertEqual(c["value"] or b"", value, f"message {i}: value changed")
            if c["value"] is None and value == b"":
                observe("an empty message value was dead-lettered as a null value")
            h = c["headers"]
            for name in ("kinfer.source", "kinfer.error", "kinfer.reason", "kinfer.worker"):
                self.assertEqual(len(h.get(name, [])), 1, f"message {i}: header {name}: {h}")
            self.assertEqual(h["kinfer.error"][0], code, f"message {i}: {h}")
            self.assertTrue(h["kinfer.reason"][0], f"message {i}: empty reason")
            self.assertEqual(h["kinfer.worker"][0], f"{socket.gethostname()}:{self.worker.pid}")
            if reason_words and reason_words[i]:
                alts = reason_words[i]
                self.assertTrue(any(a.lower() in h["kinfer.reason"][0].lower() for a in alts),
                                f"message {i}: reason {h['kinfer.reason'][0]!r} does not name {alts}")

    def assert_no_key_mentions(self, jid):
        found = [k for k in self.r.scan_iter(match=f"*{jid}*", count=1000)]
        self.assertEqual(found, [], f"keys naming {jid}")
        for k in self.r.scan_iter(match=f"{PREFIX}{{*}}:inbox:*", count=1000):
            self.assertNotIn(jid.encode(), self.r.lrange(k, 0, -1), f"{jid} announced on {k!r}")

    def test_undecodable_messages_dead_lettered_worker_survives(self):
        user = "undec-" + RUN
        good_job = {"v": 2, "user": user, "model": "mlp", "input": [[1, 2, 3, 4, 5]]}
        rid = self.new_id("undec-rep")
        bad = [(b"\x93\x01", None),                                       # truncated array
               (b"\xc1\xc1 not msgpack", None),                           # 0xc1 is never used
               (b"", None),                                               # empty value
               (mp([1, 2, 3]), None),                                     # not a map
               (mp(good_job), ("id",)),                                   # no id
               (mp(dict(good_job, id=42)), ("id",)),                      # id not a str
               (mp(dict(good_job, id=b"bin-id")), ("id",)),               # id a bin, not a str
               (mp(dict(good_job, id="has space")), ("id",)),
               (mp(dict(good_job, id="x" * 129)), ("id",)),
               (mp(dict(good_job, id="")), ("id",)),
               (mp(dict(good_job, id="a{b}")), ("id",)),
               (mp(MapPairs([("v", 2), ("id", rid), ("id", rid), ("user", user),
                             ("model", "mlp"), ("input", [[1, 2, 3, 4, 5]])])), ("id",))]
        good = self.new_id("after-undec")
        before = self.stats()
        reps = self.produce_jobs([(user, b) for b, _ in bad] +
                                 [(user, self.job(good, user, "mlp", [[1, 2, 3, 4, 5]],
                                                  inbox="u"))])
        self.assertEqual(len({r["partition"] for r in reps}), 1)
        h = self.result(user, good, "u")
        self.assert_ok(h, good, reps[-1], user, "mlp", 1)
        self.assert_dead_lettered([(user, b) for b, _ in bad], reps[:-1],
                                  reason_words=[w for _, w in bad])
        # Counted once the broker has the dead-letter copy, which the worker
        # makes beside the results: the good job's result may come first.
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and \
                self.stats().get("undecodable", 0) < before.get("undecodable", 0) + len(bad):
            time.sleep(0.05)
        after = self.stats()
        self.assertEqual(after.get("undecodable", 0), before.get("undecodable", 0) + len(bad),
                         f"{before} -> {after}")
        for k in ("has space", "a{b}", rid):
            self.assertFalse(self.r.exists(k_result(user, k)))
        self.assert_no_key_mentions(rid)
        self.assertIsNone(self.worker.poll(), "worker died")
        u = self.usage(user)
        self.assertEqual((u.get("jobs"), u.get("errors", 0)), (1, 0), u)

    def test_trailing_bytes_and_null_value(self):
        """Not stated by the document: a valid map followed by more bytes, and a message
        with a null value. Either a result or a dead letter is acceptable; observed."""
        user = "trail-" + RUN
        jid = self.new_id("trail")
        value = mp(self.job(jid, user, "mlp", [[1, 2, 3, 4, 5]], inbox="t")) + b"\xc0"
        good = self.new_id("after-trail")
        before = self.stats().get("undecodable", 0)
        reps = self.produce_jobs([(user, value), (user, NULL),
                                  (user, self.job(good, user, "mlp", [[1, 2, 3, 4, 5]],
                                                  inbox="t"))])
        self.assert_ok(self.result(user, good, "t"), good, reps[-1], user, "mlp", 1)
        time.sleep(0.5)
        h = self.get_result(user, jid)
        copies = self.dlq_read([r["source"] for r in reps[:2]], timeout=3)
        self.assertTrue(h is not None or copies[reps[0]["source"]],
                        "a message with trailing bytes has neither a result nor a dead letter")
        observe(f"trailing bytes after the job map: result {h and (h['status'], h.get('error'), h.get('message'))}, "
                f"DLQ copies {len(copies[reps[0]['source']])}; null value: DLQ copies "
                f"{len(copies[reps[1]['source']])} "
                f"(value {copies[reps[1]['source']][0]['value'] if copies[reps[1]['source']] else '-'!r}); "
                f"undecodable +{self.stats().get('undecodable', 0) - before}")
        self.assertIsNone(self.worker.poll(), "worker died")

    def test_valid_id_without_valid_user_dead_lettered(self):
        """"A job needs a readable user as well as an id to have a result": no result
        anywhere, a copy in the dead-letter topic, counted in Pstats."""
        victim = "a-" + RUN
        base = {"v": 2, "model": "mlp", "input": [[1, 2, 3, 4, 5]], "inbox": "box"}
        users = [DROP, 42, b"bin-user", "", "u" * 65, "has space",
                 victim + "}:usage",        # braces are not allowed: no way into {victim}
                 victim + "{x", "{" + victim + "}", "\u00e9t\u00e9"]
        msgs, ids = [], []
        for u in users:
            jid = self.new_id("baduser")
            ids.append(jid)
            j = dict(base, id=jid)
            if u is not DROP:
                j["user"] = u
            msgs.append((victim, mp(j)))
        # the user key given twice, with the same value
        jid = self.new_id("dupuser")
        ids.append(jid)
        msgs.append((victim, mp(MapPairs([("v", 2), ("id", jid), ("user", victim),
                                          ("user", victim), ("model", "mlp"),
                                          ("input", [[1, 2, 3, 4, 5]]), ("inbox", "box")]))))
        # the victim's own job, after them on the same partition
        good = self.new_id("victim")
        before = self.stats()
        reps = self.produce_jobs(msgs + [(victim, self.job(good, victim, "mlp", [[1, 2, 3, 4, 5]],
                                                           inbox="box"))])
        self.assertEqual(len({r["partition"] for r in reps}), 1)
        self.assert_ok(self.result(victim, good, "box"), good, reps[-1], victim, "mlp", 1)
        self.assert_dead_lettered(msgs, reps[:-1], reason_words=[("user",)] * len(msgs))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and \
                self.stats().get("undecodable", 0) < before.get("undecodable", 0) + len(msgs):
            time.sleep(0.05)
        self.assertEqual(self.stats().get("undecodable", 0),
                         before.get("undecodable", 0) + len(msgs))
        for jid in ids:
            self.assert_no_key_mentions(jid)
        # the victim was charged for its own job only, and announced only it
        u = self.usage(victim)
        self.assertEqual((u.get("jobs"), u.get("rows"), u.get("errors", 0)), (1, 1, 0), u)
        self.assertEqual(self.announced(victim, "box"), [good])

    def test_oversize_message_dead_lettered_too_large(self):
        user = "big-" + RUN
        jid = self.new_id("big")
        rows = (MAX_MESSAGE_BYTES // 20) + 10        # 5 float32 per row: 20 bytes a row
        value = mp(self.job(jid, user, "mlp", f32_input(np.ones((rows, 5), np.float32)),
                            inbox="b"))
        self.assertGreater(len(value), MAX_MESSAGE_BYTES)
        good = self.new_id("after-big")
        before = self.stats()
        reps = self.produce_jobs([(user, value),
                                  (user, self.job(good, user, "mlp", [[1, 2, 3, 4, 5]],
                                                  inbox="b"))])
        self.assert_ok(self.result(user, good, "b"), good, reps[1], user, "mlp", 1)
        self.assert_dead_lettered([(user, value)], reps[:1], code="too_large")
        self.assertEqual(self.stats().get("undecodable", 0), before.get("undecodable", 0) + 1)
        self.assertIsNone(self.get_result(user, jid), "an oversize message has no result")
        self.assertEqual(self.announced(user, "b"), [good])
        self.assertEqual(self.usage(user).get("errors", 0), 0)

    # ----------------------------------------------------------- idempotence

    def test_same_id_twice_one_result_charged_once_announced_again(self):
        user = "dup-" + RUN
        jid = self.new_id("dup")
        x1 = np.full((2, 5), 0.5, np.float32)
        x2 = np.full((3, 5), -1.0, np.float32)
        sentinel = self.new_id("dup-sentinel")
        reps = self.produce_jobs([(user, self.job(jid, user, "mlp", f32_input(x1), inbox="i1")),
                                  (user, self.job(jid, user, "mlp", f32_input(x2), inbox="i1")),
                                  (user, self.job(jid, user, "mlp", f32_input(x2), inbox="i2")),
                                  (user, self.job(sentinel, user, "mlp", [[0, 0, 0, 0, 0]],
                                                  inbox="i1"))])
        self.assertEqual(len({r["partition"] for r in reps}), 1)
        self.wait_all([(user, sentinel), (user, jid)])
        # "Its id is pushed onto its inbox again": the first and the second copy on i1,
        # the third on i2
        i1 = self.wait_announced(user, "i1", [jid, jid, sentinel])
        i2 = self.wait_announced(user, "i2", [jid])
        self.assertEqual(sorted(i1), sorted([jid, jid, sentinel]), "inbox i1")
        self.assertEqual(i2, [jid], "inbox i2")
        h = self.get_result(user, jid)
        out = self.assert_ok(h, jid, reps[0], user, "mlp", 1)   # the first one stands
        self.assertEqual(h["shape"], [2, 3])
        self.assert_close(out, self.mlp.forward(x1), "first result stands")
        u = self.usage(user)
        self.assertEqual((u["jobs"], u["rows"], u["flops"], u.get("errors", 0)),
                         (2, 3, 3 * self.mlp.flops_per_row, 0), u)   # first (2 rows) + sentinel (1)
        self.assert_charged(user, jid, "ok")
        self.assert_charged(user, sentinel, "ok")
        # later, in its own batch: still a duplicate, announced on its own inbox
        rep = self.produce_jobs([(user, self.job(jid, user, "mlp", f32_input(x2), inbox="i3"))])[0]
        self.assertEqual(self.wait_announced(user, "i3", [jid]), [jid])
        self.assertEqual(self.get_result(user, jid), h, "the first result stays as it was")
        self.assertEqual(self.usage(user), u)
        # without the charge record, an existing result still makes it a duplicate
        for b in self.charged(user):
            self.r.delete(ukey(user, "charged", b))
        self.produce_jobs([(user, self.job(jid, user, "mlp", f32_input(x2), inbox="i4"))])
        self.assertEqual(self.wait_announced(user, "i4", [jid]), [jid])
        self.assertEqual(self.get_result(user, jid), h, "the first result stays as it was")
        self.assertEqual(self.usage(user), u)
        # duplicates that would be errors on their own: still duplicates of the first
        # result; no counter changes at all ("exactly once per (user, id)")
        models_before = self.usage_models(user)
        bad = [("i5", {"input": [[1, 2, 3, 4, 5], [1]]}),          # ragged: bad_request
               ("i6", {"model": "nosuchmodel"}),                     # unknown_model
               ("i7", {"deadline": int(time.time() * 1000) - 1000})]  # expired
        self.produce_jobs([(user, dict(self.job(jid, user, "mlp", f32_input(x2), inbox=ib), **kw))
                           for ib, kw in bad])
        for ib, _ in bad:
            have = self.wait_announced(user, ib, [jid], timeout=5)
            if have != [jid]:
                observe(f"a duplicate of an ok job sent to {ib} was announced as {have}")
        self.assertEqual(self.get_result(user, jid), h, "the first result stays as it was")
        self.assertEqual(self.usage(user), u, "a malformed duplicate changed a counter")
        self.assertEqual(self.usage_models(user), models_before)
        self.assert_usage_consistent(user)

    def test_result_deleted_or_expired_resubmitted_not_charged(self):
        user = "gone-" + RUN
        x1 = np.full((2, 5), 0.25, np.float32)
        x2 = np.full((4, 5), 2.0, np.float32)
        jok, jerr, jshort = self.new_id("gone-ok"), self.new_id("gone-err"), self.new_id("gone-ttl")
        reps = self.produce_jobs([
            (user, self.job(jok, user, "mlp", f32_input(x1), inbox="g")),
            (user, self.job(jerr, user, "nosuchmodel", f32_input(x1), inbox="g")),
            (user, self.job(jshort, user, "mlp", f32_input(x1), inbox="g", ttl=1))])
        self.assert_ok(self.result(user, jok, "g"), jok, reps[0], user, "mlp", 1)
        self.assertEqual(self.result(user, jerr, "g")["error"], "unknown_model")
        u0 = self.usage(user)
        self.assertEqual((u0["jobs"], u0["rows"], u0["errors"]), (2, 4, 1), u0)
        # the client deletes two results; the third expires
        self.assertEqual(self.r.delete(k_result(user, jok), k_result(user, jerr)), 2)
        deadline = time.monotonic() + 10
        while self.r.exists(k_result(user, jshort)) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertFalse(self.r.exists(k_result(user, jshort)), "ttl 1 result did not expire")
        # resubmitted with the same ids (other inputs, a good model for jerr)
        self.r.delete(k_inbox(user, "g"))
        self.produce_jobs([
            (user, self.job(jok, user, "mlp", f32_input(x2), inbox="g2")),
            (user, self.job(jerr, user, "mlp", f32_input(x2), inbox="g2")),
            (user, self.job(jshort, user, "mlp", f32_input(x2), inbox="g2", ttl=60))])
        # announced again; GET returns nothing: the duplicates have no result
        have = self.wait_announced(user, "g2", [jok, jerr, jshort])
        self.assertEqual(sorted(have), sorted([jok, jerr, jshort]))
        for j in (jok, jerr, jshort):
            self.assertIsNone(self.get_result(user, j), f"{j}: a duplicate got a result")
        self.assertEqual(self.usage(user), u0, "charged again")
        self.assert_charged(user, jok, "ok")
        self.assert_charged(user, jerr, "error")
        self.assert_charged(user, jshort, "ok")
        self.assert_usage_consistent(user)

    def test_same_id_two_users_each_own_result_charged_once(self):
        jid = self.new_id("shared")
        users = ["alice-" + RUN, "bob-" + RUN, "alice-" + RUN + ":x"]
        xs = [np.full((n, 5), float(n), np.float32) for n in (1, 2, 3)]
        reps = self.produce_jobs([(u, self.job(jid, u, "mlp", f32_input(x), inbox="s"))
                                  for u, x in zip(users, xs)])
        for u, x, rep in zip(users, xs, reps):
            h = self.result(u, jid, "s")
            out = self.assert_ok(h, jid, rep, u, "mlp", 1)
            self.assert_close(out, self.mlp.forward(x), f"{u}'s own result")
            uu = self.usage(u)
            self.assertEqual((uu["jobs"], uu["rows"], uu.get("errors", 0)), (1, x.shape[0], 0), uu)
            self.assert_charged(u, jid, "ok")
            self.assertEqual(self.announced(u, "s"), [jid])
        # bob resubmits: a duplicate for bob only
        self.produce_jobs([(users[1], self.job(jid, users[1], "mlp", f32_input(xs[0]),
                                               inbox="s2"))])
        self.assertEqual(self.wait_announced(users[1], "s2", [jid]), [jid])
        for u, x in zip(users, xs):
            self.assertEqual(self.usage(u)["jobs"], 1)
            self.assertEqual(self.get_result(u, jid)["shape"], [x.shape[0], 3])

    def test_names_with_colons_stay_in_their_keys(self):
        """No choice of user, id, model or inbox name reaches another user's keys or a key
        of another kind; braces are refused."""
        a = "ten-" + RUN
        rng = self.rng()

        def x(n):
            return rng.standard_normal((n, 5)).astype(np.float32)

        jobs = [  # user, id, model, input, inbox
            (a, "x:y", "mlp", x(1), "in"),
            (a + ":x", "y", "mlp", x(2), "in"),          # a naive "a:x:y" would collide
            (a, "usage", "mlp", x(3), "usage"),          # id and inbox named like a kind word
            (a, "r1", "mlp", x(1), "result:r1"),         # an inbox named like a result key
            (a, "m", "mlp:rows", x(2), "in"),            # a model name with ':'
            (a + ":result", "x", "mlp", x(1), "in"),
            (a + ":usage", "models", "mlp", x(1), "in"),
            ("model", "mlp:1", "mlp", x(1), "mlp:1"),    # a naive layout: kinfer:model:mlp:1
            ("stats", "undecodable", "mlp", x(1), "x"),  # a naive layout: kinfer:stats
        ]
        users = sorted({j[0] for j in jobs})
        before_stats = self.r.hgetall(K_STATS)
        evil = self.new_id("evil")
        evil_value = mp({"v": 2, "id": evil, "user": a + "}:usage", "model": "mlp",
                         "input": [[1, 2, 3, 4, 5]]})
        reps = self.produce_jobs(
            [(u, self.job(jid, u, m, f32_input(xx), inbox=ib)) for u, jid, m, xx, ib in jobs] +
            [(a, evil_value)])
        got = self.wait_all([(u, jid) for u, jid, _, _, _ in jobs])
        for (u, jid, m, xx, ib), rep in zip(jobs, reps):
            model = self.colon if m == "mlp:rows" else self.mlp
            out = self.assert_ok(got[(u, jid)], jid, rep, u, m, 1)
            self.assert_close(out, model.forward(xx), f"{u}/{jid}")
        self.assert_dead_lettered([(a, evil_value)], reps[-1:], reason_words=[("user",)])
        self.assert_no_key_mentions(evil)
        # exactly the documented keys of each user, and the right values in them
        for u in users:
            mine = [(jid, m, xx, ib) for uu, jid, m, xx, ib in jobs if uu == u]
            keys = self.user_keys(u)
            want = {k_usage(u), k_models(u)} | {k_result(u, jid) for jid, _, _, _ in mine} | \
                {k_inbox(u, ib) for _, _, _, ib in mine}
            rest = [k for k in keys if k not in want]
            self.assertTrue(want <= set(keys), f"{u}: missing {want - set(keys)}")
            for k in rest:
                self.assertRegex(k, r"^" + re.escape(ukey(u, "")) + r"(charged|usage:window):[0-9]+$",
                                 f"{u}: unexpected key")
            for jid, m, xx, ib in mine:
                self.assertEqual(self.r.type(k_result(u, jid)), b"string")
                self.assertEqual(self.r.type(k_inbox(u, ib)), b"list")
                self.assertIn(jid, self.announced(u, ib))
            self.assertEqual(self.r.type(k_usage(u)), b"hash")
            uu = self.usage(u)
            self.assertEqual(uu["jobs"], len(mine))
            self.assertEqual(uu["rows"], sum(xx.shape[0] for _, _, xx, _ in mine))
            want_models = collections.Counter()
            for jid, m, xx, ib in mine:
                model = self.colon if m == "mlp:rows" else self.mlp
                want_models[("jobs", m)] += 1
                want_models[("rows", m)] += xx.shape[0]
                want_models[("flops", m)] += xx.shape[0] * model.flops_per_row
            self.assertEqual(self.usage_models(u), dict(want_models), f"{u}: usage:models")
            self.assert_usage_consistent(u)
        self.assertFalse(self.r.exists(f"{PREFIX}model:mlp:1"), "a user reached a registry key")
        after_stats = self.r.hgetall(K_STATS)
        self.assertEqual({k for k in after_stats if k != b"undecodable"},
                         {k for k in before_stats if k != b"undecodable"},
                         "user 'stats' reached Pstats")

    # ---------------------------------------------------------------- quotas

    def submit_one(self, user, n_rows, inbox="q", **kw):
        jid = self.new_id("q")
        rep = self.produce_jobs([(user, self.job(jid, user, "mlp",
                                                 f32_input(np.ones((n_rows, 5), np.float32)),
                                                 inbox=inbox, **kw))])[0]
        return self.result(user, jid, inbox), jid, rep

    def test_quota_jobs_per_window(self):
        user = "qjobs-" + RUN
        self.r.hset(k_quota(user), mapping={"jobs": "2", "window": str(LONG_WINDOW)})
        res = [self.submit_one(user, 1) for _ in range(4)]
        self.assertEqual([h["status"] for h, _, _ in res], ["ok", "ok", "error", "error"])
        win = res[0][0]["window"]
        self.assertEqual(win % LONG_WINDOW, 0)
        for h, jid, rep in res[2:]:
            self.assert_common_fields(h, jid, rep, user, "mlp")
            self.assert_quota_exceeded(h, LONG_WINDOW)
            self.assertEqual(h["window"], win)
            self.assertIn("2", h["message"], "the message names the limit")
            self.assert_charged(user, jid, "error")
        u = self.usage(user)
        self.assertEqual((u["jobs"], u["rows"], u["errors"]), (2, 2, 2), u)
        self.assertEqual((u["window_start"], u["window_s"]), (win, LONG_WINDOW), u)
        self.assertEqual(self.usage_windows(user),
                         {win: {"jobs": 2, "rows": 2, "flops": 2 * self.mlp.flops_per_row,
                                "errors": 2}})
        self.assert_usage_consistent(user)
        # one batch over the quota: the atomic step decides, exactly 2 of 5 run
        user2 = "qbatch-" + RUN
        self.r.hset(k_quota(user2), mapping={"jobs": "2", "window": str(LONG_WINDOW)})
        ids = [self.new_id("qb") for _ in range(5)]
        self.produce_jobs([(user2, self.job(j, user2, "mlp", [[1, 2, 3, 4, 5]], inbox="qb"))
                           for j in ids])
        got = self.wait_all([(user2, j) for j in ids])
        sts = [got[(user2, j)].get("error", "ok") for j in ids]
        self.assertEqual(collections.Counter(sts), {"ok": 2, "quota_exceeded": 3}, sts)
        observe(f"5 jobs of one batch against a quota of 2 jobs: {sts}")
        u = self.usage(user2)
        self.assertEqual((u["jobs"], u["errors"]), (2, 3), u)

    def test_quota_rows_and_a_job_no_window_can_take(self):
        user = "qrows-" + RUN
        self.r.hset(k_quota(user), mapping={"rows": "5", "window": str(LONG_WINDOW)})
        h, _, _ = self.submit_one(user, 3)
        self.assertEqual(h["status"], "ok", h)
        h, jid, rep = self.submit_one(user, 3)           # 3 + 3 > 5
        self.assert_common_fields(h, jid, rep, user, "mlp")
        self.assert_quota_exceeded(h, LONG_WINDOW)
        self.assertIn("5", h["message"], "the message names the limit")
        self.assertIn("3", h["message"], "the message names the usage")
        h, _, _ = self.submit_one(user, 2)               # 3 + 2 = 5: not over
        self.assertEqual(h["status"], "ok", h)
        h, _, _ = self.submit_one(user, 1)               # 5 + 1 > 5
        self.assert_quota_exceeded(h, LONG_WINDOW)
        h, _, _ = self.submit_one(user, 6)               # 6 > 5: no window will ever take it
        self.assert_quota_exceeded(h, LONG_WINDOW, never_fits=True)
        observe(f"message of a job no window can take: {h['message']!r}")
        u = self.usage(user)
        self.assertEqual((u["jobs"], u["rows"], u["errors"]), (2, 5, 3), u)
        self.assert_usage_consistent(user)

    def test_quota_invalid_fields_are_missing(self):
        # every value that is not a decimal integer in range is treated as missing:
        # the workers' default, unlimited
        bad = ["+1", " 1", "1 ", "1.0", "1e0", "-1", "", "0x1", "1000000000000001", "one",
               "\uff11"]
        users = []
        for i, v in enumerate(bad):
            u = f"qbad{i}-{RUN}"
            users.append(u)
            self.r.hset(k_quota(u), "jobs", v.encode())
        # a valid jobs limit still applies when another field is invalid
        ok_user = "qmixed-" + RUN
        self.r.hset(k_quota(ok_user), mapping={"jobs": "1", "rows": "x"})
        # an invalid window: the default window
        win_user = "qwin0-" + RUN
        self.r.hset(k_quota(win_user), mapping={"window": "0"})
        ids = {u: [self.new_id("qi"), self.new_id("qi")] for u in users + [ok_user, win_user]}
        self.produce_jobs([(u, self.job(j, u, "mlp", [[1, 2, 3, 4, 5]], inbox="qi"))
                           for u, js in ids.items() for j in js])
        got = self.wait_all([(u, j) for u, js in ids.items() for j in js])
        for u, v in zip(users, bad):
            sts = [got[(u, j)].get("error", "ok") for j in ids[u]]
            self.assertEqual(sts, ["ok", "ok"], f"quota jobs={v!r} is not treated as missing")
        sts = sorted(got[(ok_user, j)].get("error", "ok") for j in ids[ok_user])
        self.assertEqual(sts, ["ok", "quota_exceeded"])
        u = self.usage(win_user)
        self.assertEqual((u["jobs"], u["window_s"]), (2, DEFAULT_WINDOW), u)
        self.assertEqual(got[(win_user, ids[win_user][0])]["window"] % DEFAULT_WINDOW, 0)

    def test_quota_custom_window(self):
        user = "qw60-" + RUN
        self.r.hset(k_quota(user), mapping={"window": "60"})
        h, jid, rep = self.submit_one(user, 2)
        self.assert_ok(h, jid, rep, user, "mlp", 1)
        s = h["window"]
        self.assertEqual(s % 60, 0)
        u = self.usage(user)
        self.assertEqual((u["window_start"], u["window_s"]), (s, 60), u)
        w = self.usage_windows(user)
        self.assertIn(s, w)
        self.assertEqual(w[s]["jobs"], 1)
        ttl = self.r.ttl(k_window(user, s))
        expect = s + 120 - self.redis_now()      # one window length after the window ends
        self.assertTrue(ttl > 0 and abs(ttl - expect) <= 3, f"window TTL {ttl}, want {expect:.0f}")

    # --------------------------------------------------------- damaged counters

    def test_damaged_counters_internal_nothing_changed(self):
        cases = [  # tag, damage(user), key, field
            ("dmg-jobs", lambda u: self.r.hset(k_usage(u), "jobs", "abc"), k_usage, "jobs"),
            ("dmg-rows", lambda u: self.r.hset(k_usage(u), "rows", str(10**18)), k_usage, "rows"),
            ("dmg-mflops", lambda u: self.r.hset(k_models(u), "flops:mlp", "1.5"), k_models,
             "flops:mlp"),
            ("dmg-type", lambda u: self.r.set(k_models(u), "not a hash"), k_models, None),
        ]
        for tag, damage, keyf, field in cases:
            with self.subTest(tag):
                user = f"{tag}-{RUN}"
                damage(user)

                def dump():
                    out = {}
                    for k in self.user_keys(user):
                        if ":usage" in k[len(ukey(user, "")) - 1:]:
                            t = self.r.type(k)
                            out[k] = self.r.hgetall(k) if t == b"hash" else self.r.get(k)
                    return out

                before = dump()
                h, jid, rep = self.submit_one(user, 2, inbox="dm")
                self.assert_common_fields(h, jid, rep, user, "mlp")
                self.assertEqual((h["status"], h.get("error")), ("error", "internal"), h)
                self.assertIn(f"{{{user}}}:usage", h["message"], "the message names the key")
                self.assertIn(keyf(user)[len(PREFIX):], h["message"], "the message names the key")
                if field:
                    self.assertIn(field, h["message"], "the message names the field")
                self.assertEqual(dump(), before, "a counter changed")
                self.assertIn(jid, self.announced(user, "dm"))
                # repaired by an operator: a new id is computed and charged
                if field:
                    self.r.hdel(keyf(user), field)
                else:
                    self.r.delete(keyf(user))
                h, jid2, rep = self.submit_one(user, 2, inbox="dm")
                self.assert_ok(h, jid2, rep, user, "mlp", 1)
                u = self.usage(user)
                self.assertEqual(self.usage_models(user)[("jobs", "mlp")], 1)
                observe(f"{tag}: errors counter after the internal result and the repair: "
                        f"{u.get('errors', 0)}; charge record of the internal job: "
                        f"{[b.get(jid) for b in self.charged(user).values() if jid in b]}")

    # ----------------------------------------------------------- key layout

    def test_zz_every_key_follows_the_layout(self):
        """Runs last: every key the worker wrote for every test is one documented key."""
        pat = re.compile(r"^" + re.escape(PREFIX) + r"\{([A-Za-z0-9._:-]{1,64})\}:"
                         r"(result:(.+)|inbox:(.+)|charged:([0-9]+)|usage|usage:window:([0-9]+)"
                         r"|usage:models|quota)$")
        types = {"result": b"string", "inbox": b"list", "charged": b"hash", "usage": b"hash",
                 "usage:window": b"hash", "usage:models": b"hash", "quota": b"hash"}
        for kb in self.r.scan_iter(count=1000):
            k = kb.decode()
            if k == K_STATS:
                self.assertEqual(self.r.type(k), b"hash")
                continue
            mt = pat.match(k)
            self.assertIsNotNone(mt, f"undocumented key {k!r}")
            user = mt.group(1)
            kind = mt.group(2).split(":")[0]
            if mt.group(2).startswith("usage:window"):
                kind = "usage:window"
            elif mt.group(2) == "usage:models":
                kind = "usage:models"
            if user.startswith("dmg-"):
                continue
            self.assertEqual(self.r.type(k), types[kind], k)
            ttl = self.r.ttl(k)
            if kind in ("usage", "usage:models", "quota"):
                self.assertEqual(ttl, -1, f"{k} has a TTL")
            else:
                self.assertGreater(ttl, 0, f"{k} has no TTL")
            if kind == "result":
                h = msgpack.unpackb(self.r.get(k), raw=False)
                self.assertEqual((h.get("v"), h.get("user"), h.get("id")),
                                 (2, user, mt.group(3)), f"{k}: result of another job")
            if kind == "charged":
                self.assertEqual(int(mt.group(5)) % CHARGE_HORIZON, 0, k)
                self.assertLessEqual(ttl, 2 * CHARGE_HORIZON, k)
                for v in self.r.hvals(k):
                    self.assertIn(v, (b"ok", b"error"), k)


if __name__ == "__main__":
    prog = unittest.main(exit=False, verbosity=2)
    sys.exit(0 if prog.result.wasSuccessful() else 1)
