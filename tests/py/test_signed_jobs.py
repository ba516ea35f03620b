#!/usr/bin/python3
"""Signed jobs (docs/protocol.md, "Signed jobs"; docs/security.md), end to end:
a real redis-server, the dev broker and a real kinfer-worker started with
--require-signatures; keys made, rotated and revoked with the real `kinfer key`
commands; jobs signed HERE, independently of the C code, from the document:
HMAC-SHA256 with Python's stdlib `hmac`, Ed25519 with Debian's
python3-cryptography, over exactly the Kafka message value, in the headers
kinfer-sig (lowercase hex), kinfer-key-id and kinfer-sig-alg.

Checked: signed jobs (both algorithms, and `kinfer submit --key-file`) are
computed (outputs against a float64 numpy reference); unsigned, tampered (one
value byte flipped; the key-id or algorithm header changed), wrong-key, other
user's key and revoked-key jobs get `unauthorized`, are not computed, and leave
every user's usage counters and charge records unchanged; rotation keeps both
keys valid until the old one is revoked; an unauthorized job does not take its
id from the user; the metrics count them under code="unauthorized"; the key
store holds only the public key of an Ed25519 key; `kinfer key list` never
shows a secret.

Run from the repository root:  KINFER_BIN=build /usr/bin/python3 tests/py/test_signed_jobs.py
"""

import ctypes
import hashlib
import hmac
import json
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
from confluent_kafka import Producer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, os.environ.get("KINFER_BIN", "build"))
REDIS_SERVER = "/usr/bin/redis-server"
PREFIX = "kinfer:"
TOPIC = "kinfer.jobs"
KEY_CACHE_MS = 300  # --key-cache-ms: the revocation bound under test
RUN = uuid.uuid4().hex[:8]


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
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


def ukey(user, kind, var=None):
    k = f"{PREFIX}{{{user}}}:{kind}"
    return k if var is None else f"{k}:{var}"


# ---- signing, from the document --------------------------------------------

def sign_hmac(secret_hex, value):
    return hmac.new(bytes.fromhex(secret_hex), value, hashlib.sha256).hexdigest()


def sign_ed25519(seed_hex, value):
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex)).sign(value).hex()


def headers_for(key, value, kid=None, alg=None, secret=None):
    """The three headers for value signed with key file `key` (a dict);
    kid/alg/secret override what is sent or used."""
    secret = secret or key["secret"]
    sig = (sign_hmac if key["alg"] == "hmac-sha256" else sign_ed25519)(secret, value)
    return [("kinfer-sig", sig.encode()), ("kinfer-key-id", (kid or key["key_id"]).encode()),
            ("kinfer-sig-alg", (alg or key["alg"]).encode())]


class SignedJobsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="kinfer-sign-")
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
        cls.redis_url = f"redis://127.0.0.1:{port}/0"

        cls.broker = subprocess.Popen(
            [os.path.join(BIN, "kinfer-devbroker"), "--partitions", "2"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent)
        cls.bootstrap = cls.broker.stdout.readline().decode().strip()
        if not cls.bootstrap:
            raise RuntimeError("devbroker printed no bootstrap list")

        # a model, written with msgpack from "Model file"; float64 reference below
        rng = np.random.default_rng(7)
        cls.W = (rng.standard_normal((3, 2))).astype(np.float32)
        cls.b = (rng.standard_normal(2) * 0.1).astype(np.float32)
        mdir = os.path.join(tmp, "models")
        os.makedirs(mdir)
        with open(os.path.join(mdir, "lin.kmodel"), "wb") as f:
            f.write(msgpack.packb({
                "format": "kinfer-model", "v": 1, "name": "lin", "kind": "mlp",
                "input_dim": 3, "output_dim": 2,
                "layers": [{"W": cls.W.astype("<f4").tobytes(), "b": cls.b.astype("<f4").tobytes(),
                            "act": "identity"}]}, use_bin_type=True))

        cls.env = dict(os.environ, KINFER_BROKERS=cls.bootstrap, KINFER_REDIS=cls.redis_url)
        for k in ("KINFER_TOPIC", "KINFER_PREFIX", "KINFER_GROUP", "KINFER_MODELS",
                  "KINFER_KEY_FILE", "KINFER_REQUIRE_SIGNATURES", "KINFER_KEY_CACHE_MS"):
            cls.env.pop(k, None)

        # keys, made by the real CLI; the key files are read here as JSON
        cls.alice, cls.bob = "alice-" + RUN, "bob-" + RUN
        cls.k_alice = cls.key_create(cls.alice, "hmac")
        cls.k_bob = cls.key_create(cls.bob, "ed25519")

        cls.http_port = _free_port()
        cls.worker_log_path = os.path.join(tmp, "worker.log")
        cls.worker_log = open(cls.worker_log_path, "wb")
        cls.worker = subprocess.Popen(
            [os.path.join(BIN, "kinfer-worker"), "--models", mdir, "--require-signatures",
             "--key-cache-ms", str(KEY_CACHE_MS), "--http", f"127.0.0.1:{cls.http_port}",
             "--redis-timeout-ms", "500",  # test_12: an outage is seen within its 3 s
             "-X", "session.timeout.ms=6000"],
            env=cls.env, stdin=subprocess.DEVNULL, stdout=cls.worker_log,
            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        cls.producer = Producer({"bootstrap.servers": cls.bootstrap, "linger.ms": 2})
        cls.n_unauth = 0
        # warm-up: the first job also waits for the group's first join
        res = cls.run_job(cls.alice, "warm", key=cls.k_alice, timeout=40)
        if res.get("status") != "ok":
            raise RuntimeError(f"warm-up job failed: {res}")

    @classmethod
    def _cleanup(cls, print_log=False):
        _stop(cls.worker)
        _stop(cls.broker)
        _stop(cls.redis_proc)
        if print_log and getattr(cls, "worker_log_path", None) and \
                os.path.exists(cls.worker_log_path):
            sys.stderr.write(open(cls.worker_log_path, errors="replace").read()[-4000:])
        cls.tmp.cleanup()

    @classmethod
    def tearDownClass(cls):
        cls._cleanup(print_log=False)

    # ---- helpers -------------------------------------------------------

    @classmethod
    def kinfer(cls, *args, check=True):
        p = subprocess.run([os.path.join(BIN, "kinfer"), *args], env=cls.env,
                           capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"kinfer {' '.join(args)}: {p.returncode} {p.stderr}")
        return p

    @classmethod
    def key_create(cls, user, alg, rotate=False):
        p = cls.kinfer("key", "rotate" if rotate else "create", user, "--alg", alg)
        k = json.loads(p.stdout)
        assert k["user"] == user and re.fullmatch(r"k[0-9a-f]{16}", k["key_id"]), k
        return k

    @classmethod
    def job_value(cls, user, jid, x, model="lin"):
        return msgpack.packb({"v": 2, "id": jid, "user": user, "model": model, "inbox": "in-" + RUN,
                              "input": {"dtype": "f32", "shape": list(x.shape),
                                        "data": np.ascontiguousarray(x, "<f4").tobytes()}},
                             use_bin_type=True)

    @classmethod
    def produce(cls, user, value, headers=None):
        cls.producer.produce(TOPIC, key=user.encode(), value=value, headers=headers or [])
        cls.producer.flush(10)

    @classmethod
    def wait_result(cls, user, jid, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = cls.r.get(ukey(user, "result", jid))
            if v is not None:
                return msgpack.unpackb(v, raw=False)
            cls.r.blpop(ukey(user, "inbox", "in-" + RUN), 1)
        raise AssertionError(f"no result for {user}/{jid} in {timeout} s")

    @classmethod
    def run_job(cls, user, tag, key=None, timeout=15, **hdr):
        """A fresh job of user, signed with key (a key-file dict) unless None."""
        jid = f"{tag}-{uuid.uuid4().hex[:10]}"
        x = np.arange(6, dtype=np.float32).reshape(2, 3) + len(tag)
        value = cls.job_value(user, jid, x)
        cls.produce(user, value, headers_for(key, value, **hdr) if key else None)
        res = cls.wait_result(user, jid, timeout)
        res["_x"] = x
        return res

    def usage_state(self):
        """Every counter and charge record of both users (and nobody else's keys)."""
        out = {}
        for u in (self.alice, self.bob):
            for k in self.r.scan_iter(match=f"{PREFIX}{{{u}}}:*"):
                k = k.decode()
                if ":usage" in k or ":charged:" in k:
                    out[k] = self.r.hgetall(k)
        return out

    def assert_ok(self, res):
        self.assertEqual(res.get("status"), "ok", res)
        y = np.frombuffer(res["output"], "<f4").reshape(res["shape"])
        ref = res["_x"].astype(np.float64) @ self.W.astype(np.float64) + self.b
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)

    def assert_unauthorized(self, res, why):
        self.assertEqual(res.get("status"), "error", res)
        self.assertEqual(res.get("error"), "unauthorized", res)
        self.assertRegex(res.get("message", ""), why)
        self.assertNotIn("output", res)
        type(self).n_unauth += 1

    def refused(self, user, tag, why, **kw):
        """A job that must be unauthorized and change no usage at all."""
        before = self.usage_state()
        res = self.run_job(user, tag, **kw)
        self.assert_unauthorized(res, why)
        self.assertEqual(self.usage_state(), before, f"{tag}: usage changed")
        return res

    # ---- the cases -----------------------------------------------------

    def test_01_signed_jobs_pass_both_algorithms(self):
        self.assert_ok(self.run_job(self.alice, "hmac", key=self.k_alice))
        self.assert_ok(self.run_job(self.bob, "ed25519", key=self.k_bob))

    def test_02_store_holds_only_the_ed25519_public_key(self):
        h = self.r.hgetall(ukey(self.bob, "keys"))
        kid = self.k_bob["key_id"]
        pub = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(self.k_bob["secret"])) \
            .public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
        self.assertEqual(h[f"{kid}:key".encode()].decode(), pub)
        self.assertNotIn(self.k_bob["secret"].encode(), b"".join(h.values()))
        listing = self.kinfer("key", "list", self.alice).stdout
        self.assertIn(self.k_alice["key_id"], listing)
        self.assertNotIn(self.k_alice["secret"], listing)

    def test_03_unsigned(self):
        res = self.refused(self.alice, "unsigned", "unsigned")
        # the sender chose ttl 86400 (the default); an unauthorized result lives <= 3600 s
        ttl = self.r.ttl(ukey(self.alice, "result", res["id"]))
        self.assertTrue(0 < ttl <= 3600, ttl)
        # not recorded as charged: no charge record holds the id
        for k in self.r.scan_iter(match=ukey(self.alice, "charged", "*")):
            self.assertIsNone(self.r.hget(k, res["id"]))

    def test_04_one_value_byte_flipped(self):
        jid = f"flip-{uuid.uuid4().hex[:10]}"
        x = np.ones((2, 3), np.float32)
        value = self.job_value(self.alice, jid, x)
        hdrs = headers_for(self.k_alice, value)
        tampered = bytearray(value)
        tampered[-1] ^= 0x01  # the last byte of the input data: still a valid job
        before = self.usage_state()
        self.produce(self.alice, bytes(tampered), hdrs)
        res = self.wait_result(self.alice, jid)
        self.assert_unauthorized(res, "does not match")
        self.assertEqual(self.usage_state(), before)

    def test_05_headers_changed(self):
        # the key-id header names another (valid) key of the same user
        other = self.key_create(self.alice, "hmac", rotate=True)
        self.refused(self.alice, "kid-swapped", "does not match", key=self.k_alice,
                     kid=other["key_id"])
        # the algorithm header says ed25519 for an HMAC key (its 64-digit signature
        # then has the wrong length for the algorithm named)
        self.refused(self.alice, "alg-swapped", "not 128 hex digits", key=self.k_alice,
                     alg="ed25519")
        self.kinfer("key", "revoke", self.alice, other["key_id"])

    def test_06_wrong_key(self):
        self.refused(self.alice, "wrong-secret", "does not match", key=self.k_alice,
                     secret=os.urandom(32).hex())

    def test_06b_wrong_ed25519_signature(self):
        # Ed25519 signatures are checked on a compute thread, after the loop thread
        # has looked up the model and pre-checked the quota: still unauthorized
        self.refused(self.bob, "ed-wrong", "does not match", key=self.k_bob,
                     secret=os.urandom(32).hex())
        # ... also when the job has another fault (an unknown model): the signature
        # comes first, and `errors` stays unchanged
        jid = f"ed-nomodel-{uuid.uuid4().hex[:10]}"
        value = self.job_value(self.bob, jid, np.ones((1, 3), np.float32), model="nosuch")
        before = self.usage_state()
        self.produce(self.bob, value, headers_for(self.k_bob, value, secret=os.urandom(32).hex()))
        self.assert_unauthorized(self.wait_result(self.bob, jid), "does not match")
        self.assertEqual(self.usage_state(), before)

    def test_07_other_users_key(self):
        # bob's valid key and signature, on a job in alice's name
        self.refused(self.alice, "bobs-key", "not a key of user", key=self.k_bob)

    def test_08_rotation_overlap_then_revoke(self):
        old = self.key_create(self.alice, "hmac")
        new = self.key_create(self.alice, "hmac", rotate=True)
        self.assert_ok(self.run_job(self.alice, "old", key=old))
        self.assert_ok(self.run_job(self.alice, "new", key=new))
        self.kinfer("key", "revoke", self.alice, old["key_id"])
        t0 = time.monotonic()
        # refused within the documented bound: --key-cache-ms after the revoke
        time.sleep(KEY_CACHE_MS / 1000 + 0.2)
        self.refused(self.alice, "revoked", "revoked", key=old)
        self.assert_ok(self.run_job(self.alice, "still-new", key=new))
        self.assertLess(time.monotonic() - t0, 30)
        self.assertIn("revoked", self.kinfer("key", "list", self.alice).stdout)
        # an unknown key id cannot be revoked
        p = self.kinfer("key", "revoke", self.alice, "k0000000000000000", check=False)
        self.assertEqual(p.returncode, 1, p.stderr)

    def test_09_malformed_unsigned_job_counts_no_error(self):
        # a job that is also a bad_request: unauthorized first, `errors` unchanged
        jid = f"bad-{uuid.uuid4().hex[:10]}"
        value = msgpack.packb({"v": 2, "id": jid, "user": self.alice, "model": "lin",
                               "inbox": "in-" + RUN, "input": [[1, 2], [3]]},
                              use_bin_type=True)
        before = self.usage_state()
        self.produce(self.alice, value)
        self.assert_unauthorized(self.wait_result(self.alice, jid), "unsigned")
        self.assertEqual(self.usage_state(), before)

    def test_10_unauthorized_does_not_take_the_id(self):
        # a forged job first, then the user's own job with the same id
        jid = f"same-{uuid.uuid4().hex[:10]}"
        x = np.full((1, 3), 2.0, np.float32)
        value = self.job_value(self.alice, jid, x)
        self.produce(self.alice, value)
        self.assert_unauthorized(self.wait_result(self.alice, jid), "unsigned")
        before = int(self.r.hget(ukey(self.alice, "usage"), "jobs") or 0)
        self.produce(self.alice, value, headers_for(self.k_alice, value))
        deadline = time.monotonic() + 15
        while True:
            res = self.wait_result(self.alice, jid)
            if res["status"] == "ok" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        res["_x"] = x
        self.assert_ok(res)
        self.assertEqual(int(self.r.hget(ukey(self.alice, "usage"), "jobs")), before + 1)
        # and a replay of the signed message is a duplicate: not charged again
        self.produce(self.alice, value, headers_for(self.k_alice, value))
        self.assert_unauthorized(self.run_job(self.alice, "marker"), "unsigned")  # a fence
        self.assertEqual(int(self.r.hget(ukey(self.alice, "usage"), "jobs")), before + 1)

    def test_10b_forged_and_genuine_in_one_batch(self):
        # the forged copy right before the user's own job, produced together so that
        # they usually share a batch (and a step call): the user's job still wins
        for n in range(3):
            jid = f"pair{n}-{uuid.uuid4().hex[:10]}"
            x = np.full((1, 3), float(n), np.float32)
            value = self.job_value(self.alice, jid, x)
            self.producer.produce(TOPIC, key=self.alice.encode(), value=value)
            self.producer.produce(TOPIC, key=self.alice.encode(), value=value,
                                  headers=headers_for(self.k_alice, value))
            self.producer.flush(10)
            deadline = time.monotonic() + 15
            while True:
                res = self.wait_result(self.alice, jid)
                if res["status"] == "ok" or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            res["_x"] = x
            self.assert_ok(res)
            type(self).n_unauth += 1  # the forged copy was answered (and then replaced)

    def test_11_cli_submit_signs(self):
        path = os.path.join(self.tmp.name, f"alice-{uuid.uuid4().hex[:6]}.key")
        self.kinfer("key", "create", self.alice, "--alg", "ed25519", "-o", path)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        p = self.kinfer("submit", "--model", "lin", "--user", self.alice, "--key-file", path,
                        "--wait", "--timeout", "20", "1,2,3")
        res = json.loads(p.stdout)
        self.assertEqual(res["status"], "ok", res)
        ref = np.array([[1, 2, 3]], np.float64) @ self.W.astype(np.float64) + self.b
        np.testing.assert_allclose(np.array(res["output"]), ref, rtol=1e-5, atol=1e-5)
        p = self.kinfer("submit", "--model", "lin", "--user", self.alice, "--wait",
                        "--timeout", "20", "1,2,3", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(json.loads(p.stdout)["error"], "unauthorized")
        type(self).n_unauth += 1
        # a key file of another user is refused before anything is sent
        p = self.kinfer("submit", "--model", "lin", "--user", self.bob, "--key-file", path,
                        "1,2,3", check=False)
        self.assertEqual(p.returncode, 2, p.stderr)

    def test_12_keys_unreadable_jobs_wait(self):
        # Redis stops answering while a job signed with a key the worker has not
        # read yet arrives: the job waits for Redis, it is not refused for an outage
        k = self.key_create(self.alice, "hmac")
        os.kill(self.redis_proc.pid, signal.SIGSTOP)
        try:
            jid = f"outage-{uuid.uuid4().hex[:10]}"
            x = np.full((1, 3), 3.0, np.float32)
            value = self.job_value(self.alice, jid, x)
            self.produce(self.alice, value, headers_for(k, value))
            time.sleep(3)
        finally:
            os.kill(self.redis_proc.pid, signal.SIGCONT)
        res = self.wait_result(self.alice, jid, 30)
        res["_x"] = x
        self.assert_ok(res)
        with open(self.worker_log_path, errors="replace") as f:
            self.assertIn("signing keys unreadable", f.read())

    def test_90_metrics_count_unauthorized(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics",
                                    timeout=10) as r:
            text = r.read().decode()
        n = sum(float(m.group(1)) for m in
                re.finditer(r'^kinfer_jobs_total\{[^}]*code="unauthorized"\} (\S+)$', text, re.M))
        self.assertEqual(n, self.n_unauth, text[-2000:])

    def test_99_default_mode_verifies_signatures_present(self):
        # the same worker pool without --require-signatures (last: replaces the worker)
        _stop(self.worker)
        type(self).worker = subprocess.Popen(
            [os.path.join(BIN, "kinfer-worker"), "--models", os.path.join(self.tmp.name, "models"),
             "--key-cache-ms", str(KEY_CACHE_MS), "-X", "session.timeout.ms=6000"],
            env=self.env, stdin=subprocess.DEVNULL, stdout=self.worker_log,
            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self.assert_ok(self.run_job(self.alice, "plain", timeout=40))   # unsigned: served
        self.assert_ok(self.run_job(self.bob, "signed", key=self.k_bob))
        self.refused(self.alice, "bad-sig", "does not match", key=self.k_alice,
                     secret=os.urandom(32).hex())
        self.refused(self.alice, "bobs-key-default", "not a key of user", key=self.k_bob)


if __name__ == "__main__":
    unittest.main(verbosity=2)
