#!/usr/bin/python3
"""The importable Python client (producer-tool/python, `import kinfer`),
installed with pip into a venv and run against real workers.

Run from the repository root:

    KINFER_BIN=build /usr/bin/python3 tests/py/test_client_lib.py

The script makes a venv with --system-site-packages under $KINFER_BIN
(Debian's numpy, msgpack, confluent-kafka, redis, scikit-learn), pip-installs
the package from a copy of the checkout's producer-tool/python (--no-deps
--no-build-isolation: nothing is downloaded, the source tree stays clean),
and runs itself again with the venv's python, so `import kinfer` is the
installed package.  Then it starts a real redis-server, the dev broker and
two kinfer-workers that read models from the registry, pushes models with
`kinfer model push`, and drives everything through the client library.

The library is not checked against itself: outputs are compared with a
float64 numpy forward pass of weights written here, or with scikit-learn's
own predict_proba; Redis state (results, counters, quotas) is read and
written with redis-py under the keys docs/protocol.md names.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import uuid
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.path.join(REPO, os.environ.get("KINFER_BIN", "build")))
VENV = os.path.join(BIN, "pyclient-venv")
SYSTEM_PY = "/usr/bin/python3"


def _in_venv():
    return os.path.realpath(sys.prefix) == os.path.realpath(VENV)


def _install_and_reexec():
    """Creates the venv (once), installs the package, runs this file in it."""
    t0 = time.monotonic()
    py = os.path.join(VENV, "bin", "python")
    if os.path.exists(VENV) and subprocess.run([py, "-c", "import numpy, sklearn"],
                                               capture_output=True).returncode != 0:
        shutil.rmtree(VENV)   # made by another python, or broken: make it again
    if not os.path.exists(py):
        subprocess.run([SYSTEM_PY, "-m", "venv", "--system-site-packages", VENV], check=True)
    with tempfile.TemporaryDirectory(prefix="kinfer-pkg-") as tmp:
        src = os.path.join(tmp, "python")
        shutil.copytree(os.path.join(REPO, "producer-tool", "python"), src,
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--force-reinstall", "--no-cache-dir", "--disable-pip-version-check",
                        src], check=True)
    os.environ["KINFER_TEST_INSTALL_S"] = "%.1f" % (time.monotonic() - t0)
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


if __name__ == "__main__" and not _in_venv():
    _install_and_reexec()

import msgpack  # noqa: E402
import numpy as np  # noqa: E402
import redis  # noqa: E402

import kinfer  # noqa: E402

PREFIX = "kinfer:"
RUN = uuid.uuid4().hex[:8]
TOL = 1e-5
MAX_ROWS = 1000          # the workers' --max-rows: a job of 1001 rows is too_large
FIRST_WAIT_S = 60        # the first jobs wait for the consumer group's first join
LONG_WINDOW = 31622400   # the longest quota window: no boundary during the test


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc, sig=signal.SIGTERM):
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rkey(user, kind, var=None):
    """docs/protocol.md, "Redis keys": P{U}:kind[:var]"""
    k = f"{PREFIX}{{{user}}}:{kind}"
    return k if var is None else f"{k}:{var}"


# models written here from docs/protocol.md, "Model file", with their float64 reference
ACTS = {
    "identity": lambda z: z,
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "softmax": lambda z: np.exp(z - z.max(1, keepdims=True)) /
    np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True),
}


class Mlp:
    def __init__(self, name, dims, acts, rng, scale=1.0):
        self.name, self.dims, self.acts = name, dims, acts
        self.layers = [((rng.standard_normal((i, o)) * scale / np.sqrt(i)).astype(np.float32),
                        (rng.standard_normal(o) * 0.1).astype(np.float32))
                       for i, o in zip(dims[:-1], dims[1:])]

    def file_bytes(self):
        return msgpack.packb({
            "format": "kinfer-model", "v": 1, "name": self.name, "kind": "mlp",
            "input_dim": self.dims[0], "output_dim": self.dims[-1],
            "layers": [{"W": W.astype("<f4").tobytes(), "b": b.astype("<f4").tobytes(),
                        "act": a} for (W, b), a in zip(self.layers, self.acts)]},
            use_bin_type=True)

    def forward(self, x):
        y = np.asarray(x, np.float32).astype(np.float64)
        for (W, b), a in zip(self.layers, self.acts):
            y = ACTS[a](y @ W.astype(np.float64) + b.astype(np.float64))
        return y

    @property
    def flops_per_row(self):
        return 2 * sum(i * o for i, o in zip(self.dims[:-1], self.dims[1:]))


class ClientLibTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.t0 = time.monotonic()
        cls.tmp = tempfile.TemporaryDirectory(prefix="kinfer-pyclient-")
        cls.procs, cls.workers = [], []
        try:
            cls._start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def _start(cls):
        tmp = cls.tmp.name
        cls.redis_port = free_port()
        cls.redis_proc = subprocess.Popen(
            ["/usr/bin/redis-server", "--port", str(cls.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cls.procs.append(cls.redis_proc)
        cls.r = redis.Redis(port=cls.redis_port)
        deadline = time.monotonic() + 10
        while True:
            try:
                cls.r.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
        with open(os.path.join(tmp, "broker.log"), "wb") as log:
            cls.broker = subprocess.Popen(
                [os.path.join(BIN, "kinfer-devbroker"), "--partitions", "4"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        cls.procs.append(cls.broker)
        cls.bootstrap = cls.broker.stdout.readline().decode().strip()
        if not cls.bootstrap:
            raise RuntimeError("devbroker printed no bootstrap list")
        # the settings the library reads, as the CLI does
        cls.env = {k: v for k, v in os.environ.items() if not k.startswith("KINFER_")}
        cls.env.update(KINFER_BROKERS=cls.bootstrap,
                       KINFER_REDIS=f"redis://127.0.0.1:{cls.redis_port}/0")
        os.environ.update(KINFER_BROKERS=cls.bootstrap,
                          KINFER_REDIS=f"redis://127.0.0.1:{cls.redis_port}/0")
        for k in ("KINFER_TOPIC", "KINFER_PREFIX", "KINFER_USER"):
            os.environ.pop(k, None)

        rng = np.random.default_rng(18)
        cls.mlp = Mlp("mlp", [8, 16, 4], ["relu", "identity"], rng)
        cls.probs = Mlp("probs", [8, 6, 5], ["tanh", "softmax"], rng)
        cls.huge = Mlp("huge", [8, 1], ["identity"], rng)
        cls.huge.layers = [(np.full((8, 1), 3e38, np.float32), np.zeros(1, np.float32))]
        for m in (cls.mlp, cls.probs, cls.huge):
            path = os.path.join(tmp, m.name + ".kmodel")
            with open(path, "wb") as f:
                f.write(m.file_bytes())
            cls.kinfer("model", "push", path, "--activate")

        for i in range(2):
            with open(os.path.join(tmp, f"worker{i}.log"), "wb") as log:
                w = subprocess.Popen(
                    [os.path.join(BIN, "kinfer-worker"), "--max-rows", str(MAX_ROWS),
                     "--compute-threads", "1", "-X", "session.timeout.ms=6000"],
                    env=cls.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            cls.procs.append(w)
            cls.workers.append(w)
        cls.c = kinfer.Client(user="lib-" + RUN)
        # the first job waits for the group's first join
        cls.c.submit("mlp", np.zeros((1, 8))).result(timeout=FIRST_WAIT_S)
        cls.started_s = time.monotonic() - cls.t0

    @classmethod
    def kinfer(cls, *args):
        p = subprocess.run([os.path.join(BIN, "kinfer")] + list(args), env=cls.env,
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"kinfer {' '.join(args)}: {p.returncode}: {p.stderr}")
        return p.stdout

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "c", None) is not None:
            try:
                cls.c.close()
            except kinfer.KinferError:
                pass
        for w in cls.workers:
            try:
                os.kill(w.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        for p in reversed(cls.procs):
            if p is getattr(cls, "broker", None):
                p.stdin.close()
                p.stdout.close()
            stop(p)
        bad = [w for w in cls.workers if w.returncode not in (0, None)]
        for i, w in enumerate(cls.workers):
            if w in bad:
                with open(os.path.join(cls.tmp.name, f"worker{i}.log")) as f:
                    sys.stderr.write(f.read()[-4000:])
        cls.tmp.cleanup()
        print(f"\n[test_client_lib] install {os.environ.get('KINFER_TEST_INSTALL_S', '?')} s, "
              f"stack up {getattr(cls, 'started_s', 0):.1f} s, "
              f"total {time.monotonic() - cls.t0:.1f} s", file=sys.stderr)

    def user(self, tag):
        return f"{tag}-{RUN}"

    def usage(self, user):
        return {k.decode(): int(v) for k, v in self.r.hgetall(rkey(user, "usage")).items()
                if k.decode() in ("jobs", "rows", "flops", "errors")}

    def assert_close(self, got, want, what=""):
        got = np.asarray(got, np.float64)
        self.assertEqual(got.shape, want.shape, what)
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL, err_msg=what)

    # ------------------------------------------------------------ the library itself

    def test_0_installed_package(self):
        """import kinfer is the pip-installed copy, not the source tree."""
        self.assertTrue(os.path.realpath(kinfer.__file__).startswith(os.path.realpath(VENV)),
                        kinfer.__file__)
        self.assertEqual(kinfer.PROTOCOL_VERSION, 2)
        # settings from the environment, as the CLI reads them
        self.assertEqual(self.c.brokers, self.bootstrap)
        self.assertEqual(self.c.redis_url, f"redis://127.0.0.1:{self.redis_port}/0")
        self.assertEqual((self.c.topic, self.c.prefix), ("kinfer.jobs", "kinfer:"))

    def test_thousands_of_jobs(self):
        """3,000 jobs: 1,000 by submit() and waited one by one or together,
        2,000 by submit_many; outputs equal numpy, counters equal what was sent."""
        rng = np.random.default_rng(1)
        user = self.user("bulk")
        c = self.c
        xs = [rng.standard_normal((int(rng.integers(1, 5)), 8)).astype(np.float32)
              for _ in range(3000)]
        t = time.monotonic()
        singles = [c.submit("mlp", x, user=user) for x in xs[:1000]]
        # result() of the last, then of the rest: the others were announced while
        # waiting for it, and are not lost
        self.assert_close(singles[-1].result(timeout=60), self.mlp.forward(xs[999]))
        for h, x in zip(singles[:500], xs[:500]):
            self.assert_close(h.result(timeout=60), self.mlp.forward(x), h.id)
        res = c.wait(singles[500:], timeout=60)
        for r, x in zip(res, xs[500:1000]):
            self.assertTrue(r.ok, r)
            self.assertEqual((r.user, r.model, r.version), (user, "mlp", 1))
            self.assert_close(r.value(), self.mlp.forward(x), r.id)
        t_single = time.monotonic() - t
        t = time.monotonic()
        many = c.submit_many("mlp", xs[1000:], user=user)
        res = c.wait(many, timeout=60)
        t_many = time.monotonic() - t
        self.assertEqual(len(res), 2000)
        for r, h, x in zip(res, many, xs[1000:]):
            self.assertEqual(r.id, h.id)
            self.assert_close(r.value(), self.mlp.forward(x), r.id)
        # get() by id, later, and an id without a result
        for h, x in zip(many[::400], xs[1000::400]):
            self.assert_close(c.get(h.id, user=user).value(), self.mlp.forward(x))
        self.assertIsNone(c.get("no-such-id", user=user))
        # read back with redis-py: one result per job, charged once each
        self.assertEqual(sum(self.r.exists(rkey(user, "result", h.id)) for h in singles + many),
                         3000)
        rows = sum(x.shape[0] for x in xs)
        self.assertEqual(self.usage(user), {"jobs": 3000, "rows": rows,
                                            "flops": rows * self.mlp.flops_per_row})
        # the ids announce themselves on the client's one inbox, which is now empty
        self.assertEqual(self.r.llen(rkey(user, "inbox", c.inbox)), 0)
        print(f"\n[test_client_lib] 1000 jobs submit()+wait: {t_single:.2f} s; "
              f"2000 jobs submit_many+wait: {t_many:.2f} s "
              f"({2000 / t_many:.0f} jobs/s)", file=sys.stderr)

    def test_submit_many_rows_per_job_and_predict(self):
        rng = np.random.default_rng(2)
        x = rng.standard_normal((1003, 8))
        jobs = self.c.submit_many("mlp", x, rows_per_job=100, user=self.user("split"))
        self.assertEqual([j.rows for j in jobs], [100] * 10 + [3])
        got = np.concatenate([j.result(timeout=30) for j in jobs])
        self.assert_close(got, self.mlp.forward(x))
        # output modes, through predict(): softmax, argmax, topk
        user = self.user("modes")
        ref = self.mlp.forward(x)
        sm = self.c.predict("mlp", x, output="softmax", user=user, timeout=30)
        self.assert_close(sm, ACTS["softmax"](ref))
        am = self.c.predict("mlp", x, output="argmax", user=user, timeout=30)
        self.assertEqual(am.dtype, np.int64)
        np.testing.assert_array_equal(am, ref.argmax(1))
        idx, vals = self.c.predict("mlp", x, output="topk", k=2, user=user, timeout=30)
        want = np.argsort(-ref, axis=1, kind="stable")[:, :2]
        np.testing.assert_array_equal(idx, want)
        self.assert_close(vals, np.take_along_axis(ref, want, 1))
        # explicit ids, a pinned version, a short ttl seen on the key with redis-py
        ids = [f"e:{i}" for i in range(3)]
        jobs = self.c.submit_many("mlp", [x[:2], x[2:4], x[4:6]], ids=ids, version=1, ttl=120,
                                  user=user)
        self.assertEqual([j.id for j in jobs], ids)
        for j, i in zip(jobs, range(0, 6, 2)):
            self.assert_close(j.result(timeout=30), ref[i:i + 2])
            ttl = self.r.ttl(rkey(user, "result", j.id))
            self.assertTrue(0 < ttl <= 120, ttl)

    # ------------------------------------------------------------ errors

    def expect(self, exc, job, code, *words):
        with self.assertRaises(exc) as cm:
            job.result(timeout=30)
        e = cm.exception
        self.assertEqual(e.code, code)
        self.assertIsInstance(e, kinfer.JobError)
        self.assertEqual(e.result.id, job.id)
        for w in words:
            self.assertIn(w, e.message)
        # the worker's own answer, read with redis-py
        raw = msgpack.unpackb(self.r.get(rkey(job.user, "result", job.id)), raw=False)
        self.assertEqual((raw["status"], raw["error"]), ("error", code))
        return e

    def test_error_codes_from_workers(self):
        user = self.user("err")
        c = self.c
        x8 = np.ones((2, 8))
        jobs = {
            "unknown": c.submit("nosuch", x8, user=user),
            "unknown_version": c.submit("mlp", x8, user=user, version=99),
            "shape": c.submit("mlp", np.ones((2, 5)), user=user),
            "rows": c.submit("mlp", np.ones((MAX_ROWS + 1, 8)), user=user),
            "softmax_twice": c.submit("probs", x8, user=user, output="softmax"),
            "k": c.submit("mlp", x8, user=user, output="topk", k=5),
            "expired": c.submit("mlp", x8, user=user, deadline_ms=1),
            "nonfinite": c.submit("huge", np.full((1, 8), 3e38), user=user),
            "ok": c.submit("probs", x8, user=user),
        }
        self.expect(kinfer.UnknownModel, jobs["unknown"], "unknown_model", "nosuch")
        self.expect(kinfer.UnknownModel, jobs["unknown_version"], "unknown_model", "99")
        self.expect(kinfer.ShapeMismatch, jobs["shape"], "shape_mismatch", "5", "8")
        self.expect(kinfer.TooLarge, jobs["rows"], "too_large", str(MAX_ROWS))
        self.expect(kinfer.BadRequest, jobs["softmax_twice"], "bad_request", "softmax")
        self.expect(kinfer.BadRequest, jobs["k"], "bad_request")
        e = self.expect(kinfer.Expired, jobs["expired"], "expired")
        self.assertTrue(e.retryable)
        with self.assertRaises(kinfer.NonFiniteOutput) as cm:
            jobs["nonfinite"].result(timeout=30)
        self.assertEqual(cm.exception.result.nonfinite, 1)
        self.assert_close(jobs["ok"].result(timeout=30), self.probs.forward(x8))
        # wait() returns error results as results, not exceptions
        res = c.wait(list(jobs.values()), timeout=5)
        self.assertEqual([r.error for r in res],
                         ["unknown_model", "unknown_model", "shape_mismatch", "too_large",
                          "bad_request", "bad_request", "expired", None, None])
        # errors are counted, not charged (redis-py)
        self.assertEqual(self.usage(user), {
            "jobs": 2, "rows": 3, "errors": 7,
            "flops": self.huge.flops_per_row + 2 * self.probs.flops_per_row})

    def test_quota_and_internal(self):
        user = self.user("quota")
        self.r.hset(rkey(user, "quota"), mapping={"jobs": "2", "window": str(LONG_WINDOW)})
        jobs = self.c.submit_many("mlp", [np.ones((1, 8))] * 3, user=user)
        self.assert_close(jobs[0].result(timeout=30), self.mlp.forward(np.ones((1, 8))))
        jobs[1].result(timeout=30)
        e = self.expect(kinfer.QuotaExceeded, jobs[2], "quota_exceeded", "2")
        self.assertIsInstance(e.retry_after, int)
        self.assertTrue(0 < e.retry_after <= LONG_WINDOW)
        self.assertEqual(e.window % LONG_WINDOW, 0)
        # a job no window will ever take: no retry_after
        user2 = self.user("quota0")
        self.r.hset(rkey(user2, "quota"), mapping={"jobs": "0"})
        e = self.expect(kinfer.QuotaExceeded, self.c.submit("mlp", np.ones(8), user=user2),
                        "quota_exceeded")
        self.assertIsNone(e.retry_after)
        # damaged counters (written with redis-py): internal, nothing charged
        user3 = self.user("dmg")
        self.r.hset(rkey(user3, "usage"), "jobs", "abc")
        self.expect(kinfer.Internal, self.c.submit("mlp", np.ones(8), user=user3), "internal",
                    "jobs")
        self.assertEqual(self.r.hget(rkey(user3, "usage"), "jobs"), b"abc")

    def test_refused_before_sending(self):
        """What the protocol would refuse raises the same class at submit(),
        and nothing is sent."""
        user = self.user("local")
        c = self.c
        cases = [
            (dict(model="mlp", rows=[[1.0, float("nan")] + [0] * 6]), "input[0, 1] is nan"),
            (dict(model="mlp", rows=[[1e39] * 8]), "does not fit a float32"),
            (dict(model="mlp", rows=[[1, 2], [3]]), "ragged"),
            (dict(model="mlp", rows=np.ones((2, 2, 2))), "3 dimensions"),
            (dict(model="mlp", rows=[[10**40] + [0] * 7]), "does not fit a float32"),
            (dict(model="mlp", rows=[[None] * 8]), "input[0, 0] is nan"),
            (dict(model="mlp", rows=[["1"] * 8]), "expected real numbers"),
            (dict(model="mlp", rows=np.ones((0, 8))), "at least one row"),
            (dict(model="mlp", rows=np.ones(8), user="a{b}"), "user 'a{b}'"),
            (dict(model="mlp", rows=np.ones(8), user="u" * 65), "1..64"),
            (dict(model="m l p", rows=np.ones(8)), "model 'm l p'"),
            (dict(model="mlp", rows=np.ones(8), id="x" * 129), "1..128"),
            (dict(model="mlp", rows=np.ones(8), output="probs"), "output 'probs'"),
            (dict(model="mlp", rows=np.ones(8), output="topk"), "needs k"),
            (dict(model="mlp", rows=np.ones(8), ttl=0), "ttl 0"),
            (dict(model="mlp", rows=np.ones(8), version=-1), "version -1"),
        ]
        for kw, words in cases:
            with self.subTest(words):
                kw.setdefault("user", user)
                with self.assertRaises(kinfer.BadRequest) as cm:
                    c.submit(kw.pop("model"), kw.pop("rows"), **kw)
                self.assertIn(words, cm.exception.message)
                self.assertEqual(cm.exception.code, "bad_request")
        # over the producer's message.max.bytes (1 MB by default): TooLarge at once
        with self.assertRaises(kinfer.TooLarge):
            c.submit("mlp", np.ones((40000, 8)), user=user)
        with self.assertRaises(ValueError):
            kinfer.Client(prefix="a{b}")
        with self.assertRaises(ValueError):
            kinfer.Client(user="a}b")
        with self.assertRaises(ValueError):
            kinfer.Client(redis_url="http://127.0.0.1:1/0")
        time.sleep(0.5)
        self.assertEqual(self.r.keys(rkey(user, "*")), [], "a refused job reached a worker")

    def test_submit_many_is_all_or_nothing(self):
        """A bad input among many refuses the call before anything is sent."""
        user = self.user("aon")
        good = np.ones((1, 8))
        with self.assertRaises(kinfer.BadRequest) as cm:
            self.c.submit_many("mlp", [good, good, [[np.inf] * 8], good], user=user)
        self.assertIn("input[0, 0] is inf", cm.exception.message)
        with self.assertRaises(ValueError):
            self.c.submit_many("mlp", [good, good], ids=["only-one"], user=user)
        with self.assertRaises(kinfer.TooLarge):   # over the producer's message.max.bytes
            self.c.submit_many("mlp", [good, np.ones((40000, 8)), good], user=user)
        time.sleep(0.5)
        self.assertEqual(self.r.keys(rkey(user, "*")), [], "part of a refused call was sent")

    def test_unreadable_results(self):
        """A value under a result key that is not a v2 result, or is another
        job's, is reported as such (written with redis-py)."""
        user = self.user("unr")
        # junk on the client's inbox (not UTF-8, unknown ids) is skipped
        self.r.rpush(rkey(user, "inbox", self.c.inbox), b"\xff\xfe", b"nobody", b"")
        h = self.c.submit("mlp", np.ones(8), user=user)
        h.result(timeout=30)
        good = self.r.get(rkey(user, "result", h.id))
        self.r.set(rkey(user, "result", "copy"), good)          # another job's result
        self.r.set(rkey(user, "result", "junk"), b"\xc1")       # not msgpack
        self.r.set(rkey(user, "result", "v1"), msgpack.packb({"v": 1, "status": "ok"}))
        for jid, words in (("copy", f"result of {user}/{h.id}"), ("junk", "not msgpack"),
                           ("v1", "v=1")):
            with self.subTest(jid):
                with self.assertRaises(kinfer.UnreadableResult) as cm:
                    self.c.get(jid, user=user)
                self.assertIn(words, cm.exception.message)
                self.assertIn(f"{user}/{jid}", cm.exception.message)

    def test_servers_unreachable(self):
        """Nothing listens: Redis fails fast as ConnectionFailed, Kafka as a
        DeliveryError once message.timeout.ms is over; nothing hangs."""
        dead = free_port()
        with kinfer.Client(redis_url=f"redis://127.0.0.1:{dead}/0", user="u") as c:
            t = time.monotonic()
            with self.assertRaises(kinfer.ConnectionFailed):
                c.get("x")
            h = c.submit("mlp", np.ones(8))
            with self.assertRaises(kinfer.ConnectionFailed):
                h.result(timeout=5)
            self.assertLess(time.monotonic() - t, 8)
        c = kinfer.Client(brokers=f"127.0.0.1:{dead}", user="u",
                          kafka_config={"message.timeout.ms": 1500})
        t = time.monotonic()
        h = c.submit("mlp", np.ones(8))
        with self.assertRaises(kinfer.DeliveryError) as cm:
            h.result(timeout=10)
        self.assertIn(h.id, cm.exception.message)
        self.assertLess(time.monotonic() - t, 8)
        c.close()

    # ------------------------------------------------------------ timeouts

    def test_timeout_when_workers_are_stopped(self):
        user = self.user("stopped")
        for w in self.workers:
            os.kill(w.pid, signal.SIGSTOP)
        try:
            h = self.c.submit("mlp", np.ones((1, 8)), user=user)
            hs = self.c.submit_many("mlp", [np.ones((1, 8))] * 5, user=user)
            t = time.monotonic()
            with self.assertRaises(kinfer.Timeout) as cm:
                h.result(timeout=1.5)
            took = time.monotonic() - t
            self.assertTrue(1.5 <= took < 3.5, took)
            self.assertIsInstance(cm.exception, TimeoutError)
            self.assertEqual(cm.exception.pending, [(user, h.id)])
            t = time.monotonic()
            with self.assertRaises(kinfer.Timeout) as cm:
                self.c.wait(hs, timeout=1.0)
            self.assertTrue(1.0 <= time.monotonic() - t < 3.0)
            self.assertEqual(len(cm.exception.pending), 5)
            self.assertFalse(h.done())
        finally:
            for w in self.workers:
                os.kill(w.pid, signal.SIGCONT)
        # the jobs were not lost: their results come once the workers run again
        self.assert_close(h.result(timeout=30), self.mlp.forward(np.ones((1, 8))))
        self.assertEqual(len(self.c.wait(hs, timeout=30)), 5)
        self.assertTrue(h.done())

    def test_inbox_is_a_hint(self):
        """Another client takes the id off the inbox (BLPOP with redis-py, blocked
        first): the wait still ends with the result, read again after a slice."""
        import threading
        user = self.user("thief")
        for w in self.workers:
            os.kill(w.pid, signal.SIGSTOP)
        try:
            h = self.c.submit("mlp", np.ones(8), user=user)
            self.assertEqual(self.c.flush(), 0)   # the job is in Kafka
            stolen = []
            thief = threading.Thread(target=lambda: stolen.append(
                redis.Redis(port=self.redis_port).blpop([rkey(user, "inbox", self.c.inbox)],
                                                        timeout=15)))
            thief.start()
            time.sleep(0.5)
        finally:
            for w in self.workers:
                os.kill(w.pid, signal.SIGCONT)
        t = time.monotonic()
        self.assert_close(h.result(timeout=20), self.mlp.forward(np.ones((1, 8))))
        took = time.monotonic() - t
        thief.join()
        self.assertEqual(stolen[0][1].decode(), h.id, "the thief did not take the id")
        self.assertLess(took, 12)

    def test_redis_without_blmpop(self):
        """On a Redis without BLMPOP (before 7.0; here renamed away) the client
        waits with BLPOP.  That Redis is given what a worker would write: the
        real result (copied with redis-py) and the id pushed on the inbox."""
        port = free_port()
        proc = subprocess.Popen(["/usr/bin/redis-server", "--port", str(port), "--bind",
                                 "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--rename-command", "BLMPOP", ""],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        old = redis.Redis(port=port)
        for _ in range(200):
            try:
                old.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        user = self.user("old")
        x = np.ones((3, 8))
        with kinfer.Client(redis_url=f"redis://127.0.0.1:{port}/0", user=user) as c:
            jobs = c.submit_many("mlp", [x, 2 * x], user=user)
            for j in jobs:   # computed by the workers into the stack's Redis
                deadline = time.monotonic() + 30
                while not self.r.exists(rkey(user, "result", j.id)) and \
                        time.monotonic() < deadline:
                    time.sleep(0.05)
                self.assert_close(self.c.get(j.id, user=user).value(),
                                  self.mlp.forward(x * (1 + (j is jobs[1]))))
            with self.assertRaises(kinfer.Timeout):
                c.wait(jobs, timeout=0.3)

            def announce():
                time.sleep(0.5)
                for j in jobs:
                    old.set(rkey(user, "result", j.id),
                            self.r.get(rkey(user, "result", j.id)))
                    old.rpush(rkey(user, "inbox", j.inbox), j.id)

            import threading
            t = threading.Thread(target=announce)
            t.start()
            start = time.monotonic()
            res = c.wait(jobs, timeout=10)
            t.join()
            self.assertLess(time.monotonic() - start, 3, "the ids were not popped")
            self.assertFalse(c._blmpop)
        self.assert_close(res[1].value(), self.mlp.forward(2 * x))
        self.assertEqual(old.llen(rkey(user, "inbox", jobs[0].inbox)), 0)
        stop(proc)

    def test_cli_waits_for_a_python_job(self):
        """Ids and inbox as the CLI makes them: `kinfer wait` finds the job."""
        import json
        user = self.user("cli")
        h = self.c.submit("mlp", [[1, 2, 3, 4, 5, 6, 7, 8]], user=user)
        self.assertEqual(self.c.flush(), 0)
        out = json.loads(self.kinfer("wait", "--user", user, "--timeout", "30", h.id))
        self.assertEqual((out["status"], out["id"]), ("ok", h.id))
        self.assert_close(np.array(out["output"]),
                          self.mlp.forward(np.arange(1, 9, dtype=np.float32)[None, :]))
        # the CLI took the id off the inbox; the client still finds the result
        self.assertEqual(self.c.wait([h], timeout=5)[0].id, h.id)

    # ------------------------------------------------------------ duplicates

    def test_duplicate_ids(self):
        user = self.user("dup")
        a, b = np.ones((1, 8)), np.full((2, 8), 2.0)
        h1 = self.c.submit("mlp", a, user=user, id="same")
        h2 = self.c.submit("mlp", b, user=user, id="same")
        # the first result stands for both; charged once (redis-py)
        r1, r2 = self.c.wait([h1, h2], timeout=30)
        self.assert_close(r1.value(), self.mlp.forward(a))
        self.assert_close(r2.value(), self.mlp.forward(a))
        self.assertEqual(r1.source, r2.source)
        self.assertEqual(self.usage(user), {"jobs": 1, "rows": 1,
                                            "flops": self.mlp.flops_per_row})
        # another user's job with the same id is its own
        other = self.c.submit("mlp", b, user=self.user("dup2"), id="same")
        self.assert_close(other.result(timeout=30), self.mlp.forward(b))
        # the first result deleted: a duplicate has none, and says so
        self.r.delete(rkey(user, "result", "same"))
        h3 = self.c.submit("mlp", a, user=user, id="same")
        t = time.monotonic()
        with self.assertRaises(kinfer.ResultGone):
            h3.result(timeout=30)
        self.assertLess(time.monotonic() - t, 10)
        self.assertEqual(self.usage(user)["jobs"], 1)

    # ------------------------------------------------------------ hostile names

    def test_hostile_user_names(self):
        base = self.user("h")
        users = [base, base + ":result", base + ":usage", "model", "stats", base + ":inbox:x",
                 "kinfer:" + base, ("u" * 64)]
        ids = ["x:y", "result:x", "usage", "..", "-"]
        x = np.random.default_rng(3).standard_normal((2, 8))
        jobs = [self.c.submit("mlp", x, user=u, id=i) for u in users for i in ids]
        for r in self.c.wait(jobs, timeout=30):
            self.assert_close(r.value(), self.mlp.forward(x))
        for u in users:
            for i in ids:
                v = msgpack.unpackb(self.r.get(rkey(u, "result", i)), raw=False)
                self.assertEqual((v["user"], v["id"]), (u, i))
            self.assertEqual(self.usage(u)["jobs"], len(ids), u)
        self.assertFalse(self.r.exists(f"{PREFIX}model:mlp:x"))
        # a user with a brace never reaches Kafka
        with self.assertRaises(kinfer.BadRequest):
            self.c.submit("mlp", x, user=base + "}:usage")
        self.assertFalse(self.r.exists(f"{PREFIX}{{{base}}}:usage:models:x"))

    # ------------------------------------------------------------ scikit-learn

    def test_sklearn_mlp_digits(self):
        """An MLPClassifier trained here, written in kinfer-convert's input
        format, converted, pushed with `kinfer model push`, served: the
        client's probabilities equal predict_proba."""
        from sklearn.datasets import load_digits
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        X, y = load_digits(return_X_y=True)
        X = X / 16.0   # scaled as in training: the client sends what the model expects
        clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=60, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(X[:1200], y[:1200])
        self.assertEqual((clf.activation, clf.out_activation_), ("relu", "softmax"))
        tmp = self.tmp.name
        npz = os.path.join(tmp, "digits.npz")
        np.savez(npz, W0=clf.coefs_[0], b0=clf.intercepts_[0], W1=clf.coefs_[1],
                 b1=clf.intercepts_[1])
        model = os.path.join(tmp, "digits.kmodel")
        p = subprocess.run([SYSTEM_PY, os.path.join(BIN, "kinfer-convert"), npz, "--name",
                            "digits", "--act", f"{clf.activation},{clf.out_activation_}",
                            "-o", model], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.kinfer("model", "push", model, "--activate")
        Xt = X[1200:]
        user = self.user("ds")
        probs = self.c.predict("digits", Xt, rows_per_job=64, user=user, timeout=60)
        want = clf.predict_proba(Xt)
        self.assertEqual(probs.shape, want.shape)
        np.testing.assert_allclose(probs, want, rtol=0, atol=TOL)
        classes = self.c.predict("digits", Xt, rows_per_job=64, user=user, output="argmax")
        np.testing.assert_array_equal(clf.classes_[classes], clf.predict(Xt))
        # the trap of issue 18: a second softmax is refused, not silently applied
        with self.assertRaises(kinfer.BadRequest):
            self.c.predict("digits", Xt[:4], user=user, output="softmax", timeout=30)


if __name__ == "__main__":
    prog = unittest.main(exit=False, verbosity=2)
    sys.exit(0 if prog.result.wasSuccessful() else 1)
