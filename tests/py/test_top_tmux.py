#!/usr/bin/python3
"""`kinfer top` in a real terminal (tmux) against a running pool.

Run from the repository root:

    KINFER_BIN=build /usr/bin/python3 tests/py/test_top_tmux.py

A real redis-server, the dev broker and two kinfer-workers with --http. Jobs
are produced here with confluent-kafka (msgpack by hand from docs/protocol.md)
for three users, some with the wrong number of columns (shape_mismatch) or a
model that does not exist (unknown_model). Then `kinfer top` runs inside a
tmux session (a third worker URL points at a closed port), the pane is
captured with `tmux capture-pane -p`, and every number it shows is checked
against what this test reads itself: each worker's /metrics parsed with
prometheus_client's parser, the usage counters with redis-py. Also: a user
name full of escape sequences (written straight into Redis: no job can carry
one) shows escaped, the window is resized, q quits, `--once` orders many
users by jobs per second, and without worker URLs top finds the workers by
their heartbeat records (kinfer:worker:ID), which go when a worker stops.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

import msgpack
import numpy as np
import redis
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, os.environ.get("KINFER_BIN", "build"))
# user: (ok jobs, shape_mismatch jobs, unknown_model jobs), rows per ok job
USERS = {"alice": (40, 6, 2), "bob": (25, 0, 3), "carol": (12, 4, 0)}
ROWS = {"alice": 1, "bob": 3, "carol": 2}
HOSTILE = "ev\x1b[2J\x1b]0;pwn\x07il\r\n"   # clear screen, set title, bell, CR LF


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc):
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None, ""


def model_file(name, W, b):
    return msgpack.packb({"format": "kinfer-model", "v": 1, "name": name, "kind": "mlp",
                          "input_dim": W.shape[0], "output_dim": W.shape[1],
                          "layers": [{"W": W.astype("<f4").tobytes(),
                                      "b": b.astype("<f4").tobytes(), "act": "identity"}]},
                         use_bin_type=True)


def worker_numbers(body):
    """What top should show of one worker, from its exposition."""
    n = dict(jobs=0.0, ok=0.0, errors=0.0, lag=0.0, work=None, inflight=0.0, parts=0.0)
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if s.name == "kinfer_jobs_total":
                n["jobs"] += s.value
                n["ok" if s.labels["code"] == "ok" else "errors"] += s.value
            elif s.name == "kinfer_consumer_lag":
                n["lag"] += s.value
            elif s.name == "kinfer_work_remaining_flops":
                n["work"] = s.value
            elif s.name == "kinfer_inflight_batches":
                n["inflight"] = s.value
            elif s.name == "kinfer_assigned_partitions":
                n["parts"] = s.value
    return n


class TopInTmuxTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="kinfer-top-")
        tmp = cls.tmp.name
        cls.procs = []
        cls.redis_port = free_port()
        cls.redis_url = f"redis://127.0.0.1:{cls.redis_port}/0"
        cls.procs.append(subprocess.Popen(
            ["/usr/bin/redis-server", "--port", str(cls.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
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
        cls.broker = subprocess.Popen([os.path.join(BIN, "kinfer-devbroker"), "--partitions", "4"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=open(os.path.join(tmp, "broker.log"), "wb"))
        cls.procs.append(cls.broker)
        cls.bootstrap = cls.broker.stdout.readline().decode().strip()
        os.makedirs(os.path.join(tmp, "models"))
        rng = np.random.default_rng(11)
        cls.W = rng.standard_normal((4, 3)).astype(np.float32)
        with open(os.path.join(tmp, "models", "lin.kmodel"), "wb") as f:
            f.write(model_file("lin", cls.W, np.zeros(3, np.float32)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("KINFER_")}
        env.update(KINFER_BROKERS=cls.bootstrap, KINFER_REDIS=cls.redis_url)
        cls.urls = []
        for i in range(2):
            port = free_port()
            cls.urls.append(f"127.0.0.1:{port}")
            cls.procs.append(subprocess.Popen(
                [os.path.join(BIN, "kinfer-worker"), "--models", os.path.join(tmp, "models"),
                 "--http", f"127.0.0.1:{port}", "-X", "session.timeout.ms=6000",
                 "-X", "statistics.interval.ms=200", "-X", "auto.commit.interval.ms=200"],
                env=env, stdin=subprocess.DEVNULL,
                stdout=open(os.path.join(tmp, f"worker{i}.log"), "wb"), stderr=subprocess.STDOUT))
        cls.dead = f"127.0.0.1:{free_port()}"   # nobody listens there
        cls.tmux_sock = os.path.join(tmp, "tmux.sock")
        cls.expected_sent = 0

    @classmethod
    def tearDownClass(cls):
        subprocess.run(["tmux", "-S", cls.tmux_sock, "kill-server"], capture_output=True)
        for p in reversed(cls.procs):
            if p is cls.broker:
                p.stdin.close()
            stop(p)
        cls.broker.stdout.close()
        cls.tmp.cleanup()

    # -- independent readings --
    def scrape(self, url):
        status, body = get(f"http://{url}/metrics")
        self.assertEqual(status, 200, f"{url}: {body!r}")
        return body

    def usage(self, user):
        vals = self.r.hmget(f"kinfer:{{{user}}}:usage", "jobs", "rows", "flops", "errors")
        return [int(v) if v is not None else 0 for v in vals]

    def tmux(self, *args, check=True):
        return subprocess.run(["tmux", "-S", self.tmux_sock, "-f", "/dev/null", *args],
                              capture_output=True, text=True, check=check)

    def pane(self):
        return self.tmux("capture-pane", "-p", "-t", "top").stdout

    # -- the pool at work --
    def run_pool(self):
        deadline = time.monotonic() + 40
        while True:   # both workers in the group, each holding partitions
            parts = [worker_numbers(b)["parts"] if (b := get(f"http://{u}/metrics")[1]) else 0
                     for u in self.urls]
            if all(p > 0 for p in parts) and sum(parts) == 4:
                break
            self.assertLess(time.monotonic(), deadline, f"partitions held: {parts}")
            time.sleep(0.2)
        p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        sent = 0
        for user, (ok, shape, unknown) in USERS.items():
            for kind, n, cols, model in (("ok", ok, 4, "lin"), ("shape", shape, 5, "lin"),
                                         ("unk", unknown, 4, "nosuch")):
                for i in range(n):
                    jid = f"{kind}-{i}"
                    rows = [[0.25 * (i % 7)] * cols] * (ROWS[user] if kind == "ok" else 1)
                    p.produce("kinfer.jobs", key=f"{user}/{jid}", value=msgpack.packb(
                        {"v": 2, "id": jid, "user": user, "model": model, "input": rows},
                        use_bin_type=True))
                    sent += 1
        self.assertEqual(p.flush(30), 0)
        deadline = time.monotonic() + 30
        while True:   # every job answered, and the lag caught up with the commits
            ns = [worker_numbers(self.scrape(u)) for u in self.urls]
            if sum(n["jobs"] for n in ns) == sent and all(n["lag"] == 0 for n in ns) \
               and all(n["work"] is not None for n in ns):
                break
            self.assertLess(time.monotonic(), deadline, f"{ns} of {sent} jobs")
            time.sleep(0.2)
        return sent

    def test_top_shows_what_metrics_and_redis_say(self):
        sent = self.run_pool()
        # reference counters, independent of kinfer: from what was submitted
        for user, (ok, shape, unknown) in USERS.items():
            jobs, rows, flops, errors = self.usage(user)
            self.assertEqual((jobs, rows, errors), (ok, ok * ROWS[user], shape + unknown), user)
            self.assertEqual(flops, ok * ROWS[user] * 2 * 4 * 3, user)
        # a hostile name, as only a hand-made key can have it
        self.r.hset(f"kinfer:{{{HOSTILE}}}:usage", mapping={"jobs": 5, "rows": 5, "flops": 9,
                                                            "errors": 1})
        cmd = [os.path.join(BIN, "kinfer"), "top", "-i", "300", "-r", self.redis_url,
               "--metrics", ",".join(self.urls), self.dead]
        errlog = os.path.join(self.tmp.name, "top.err")   # diagnostics (and any sanitizer's)
        self.tmux("new-session", "-d", "-s", "top", "-x", "160", "-y", "50",
                  " ".join(cmd) + " 2>" + errlog)
        screen = self.wait_pane(lambda s: "ERR/S" in s and re.search(r"jobs/s \d", s))
        sys.stderr.write("\n" + screen)

        # the workers: each up worker's row equals its own /metrics.  The lag
        # and the work it stands for move with librdkafka's statistics (each
        # second) and the offsets commits (every 5 s): until those settle, a
        # frame and a later scrape may differ, so a new frame is compared with
        # a new scrape until they agree (a wrong column never does).
        def compare(screen):
            shown = {}
            for line in screen.splitlines():
                f = line.split()
                if f and f[0] in self.urls + [self.dead]:
                    shown[f[0]] = f
            nums = {u: worker_numbers(self.scrape(u)) for u in self.urls}
            total = sum(n["jobs"] for n in nums.values())
            self.assertEqual(total, sent)
            for u, n in nums.items():
                f = shown[u]
                self.assertEqual(f[1], "up", f)
                self.assertEqual([float(x) for x in f[2:5]], [n["jobs"], n["ok"], n["errors"]], f)
                self.assertEqual(f[5], f"{100.0 * n['jobs'] / total:.1f}%", f)
                self.assertEqual(float(f[8]), n["lag"], f)
                self.assertEqual(f[9], f"{n['work']:.4g}", f)
                self.assertEqual((float(f[10]), float(f[11])), (n["inflight"], n["parts"]), f)
            self.assertEqual(shown[self.dead][1], "down", shown[self.dead])
            # the pool line sums them
            ok_sum = sum(n["ok"] for n in nums.values())
            err_sum = sum(n["errors"] for n in nums.values())
            m = re.search(r"workers (\d+)/(\d+) up  jobs (\d+)  errors (\d+)", screen)
            self.assertEqual(m.groups(), ("2", "3", str(int(ok_sum + err_sum)), str(int(err_sum))))
            self.assertEqual(ok_sum, sum(v[0] for v in USERS.values()))
            m = re.search(r"lag (\d+)  work remaining (\S+) flops", screen)
            self.assertEqual(int(m.group(1)), sum(n["lag"] for n in nums.values()))
            return nums

        deadline = time.monotonic() + 15
        while True:
            try:
                nums = compare(screen)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.4)
                screen = self.pane()

        # the users: each row equals the counters in Redis
        for user in USERS:
            row = [l.split() for l in screen.splitlines() if l.split()[:1] == [user]]
            self.assertEqual(len(row), 1, screen)
            jobs, rows, flops, errors = self.usage(user)
            self.assertEqual([int(x) for x in row[0][1:5]], [jobs, errors, rows, flops], row)
            self.assertEqual(row[0][5:7], ["0.0", "0.0"], "idle users have no rate")
        # the hostile name, escaped; nothing of it acted on the terminal
        esc = "ev\\x1b[2J\\x1b]0;pwn\\x07~"   # cut to 24 columns, '~' marks the cut
        self.assertIn(esc, screen)
        self.assertNotIn("\x1b", screen)
        title = self.tmux("display-message", "-p", "-t", "top", "#{pane_title}").stdout
        self.assertNotIn("pwn", title)

        # resize: the same numbers, laid out in 90 columns
        self.tmux("resize-window", "-t", "top", "-x", "90", "-y", "20")
        small = self.wait_pane(lambda s: max(len(l) for l in s.splitlines()) <= 90 and
                               "WORKER" in s)
        self.assertTrue(any(l.startswith(self.urls[0]) for l in small.splitlines()), small)

        # q quits
        self.tmux("send-keys", "-t", "top", "q")
        deadline = time.monotonic() + 5
        while self.tmux("has-session", "-t", "top", check=False).returncode == 0:
            self.assertLess(time.monotonic(), deadline, "top did not quit on q")
            time.sleep(0.1)
        self.assertEqual(open(errlog).read(), "")

    def wait_pane(self, cond, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            s = self.pane()
            if cond(s):
                return s
            if time.monotonic() > deadline:
                self.fail("pane never showed what was expected:\n" + s)
            time.sleep(0.2)

    def test_once_orders_users_by_rate_and_prints_text(self):
        deadline = time.monotonic() + 30
        while get(f"http://{self.urls[0]}/readyz")[0] != 200:
            self.assertLess(time.monotonic(), deadline, "worker not ready")
            time.sleep(0.1)
        for i in range(30):
            self.r.hset(f"kinfer:{{many{i:02d}}}:usage", mapping={"jobs": 1000 + i, "errors": 0})
        self.r.hset(f"kinfer:{{{HOSTILE}}}:usage", mapping={"jobs": 2000, "errors": 1})
        cmd = [os.path.join(BIN, "kinfer"), "top", "--once", "-i", "1500", "-n", "4",
               "-r", self.redis_url, self.urls[0], self.dead]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.6)   # between its two samples: a small user turns busy
        self.r.hincrby("kinfer:{many00}:usage", "jobs", 600)
        self.r.hincrby("kinfer:{many00}:usage", "errors", 30)
        out, err = proc.communicate(timeout=20)
        self.assertEqual(err, b"")
        self.assertEqual(proc.returncode, 1, "a worker is down: exit 1")
        self.assertIn(b"jobs/s 0.0", out, "one worker up for both samples: a rate")
        self.assertTrue(all(b == 10 or 32 <= b < 127 for b in out), out)
        text = out.decode()
        sys.stderr.write("\n" + text)
        users = [l.split() for l in text.split("USER", 1)[1].splitlines()[1:] if l.strip()]
        self.assertEqual([u[0] for u in users[:4]],
                         ["many00", "ev\\x1b[2J\\x1b]0;pwn\\x07~", "many29", "many28"])
        rate = float(users[0][5])
        self.assertGreater(rate, 600 / 2.0)   # 600 jobs in about 1.5 s
        self.assertLess(rate, 600 / 1.0)
        self.assertAlmostEqual(float(users[0][6]) / rate, 30 / 600, delta=0.001)
        self.assertEqual(users[2][5], "0.0")
        n_keys = len(list(self.r.scan_iter(match="kinfer:{*}:usage")))
        self.assertEqual(" ".join(users[4]), f"... {n_keys - 4} more users")

    def test_help_and_bad_urls(self):
        h = subprocess.run([os.path.join(BIN, "kinfer"), "top", "--help"], capture_output=True)
        self.assertEqual(h.returncode, 0)
        self.assertIn(b"--once", h.stdout)
        bad = subprocess.run([os.path.join(BIN, "kinfer"), "top", "--once", "ftp://x/"],
                             capture_output=True)
        self.assertEqual(bad.returncode, 2)
        self.assertIn(b"ftp://x/", bad.stderr)
        # no worker given and Redis away: the records cannot be read
        none = subprocess.run([os.path.join(BIN, "kinfer"), "top", "--once", "-i", "100",
                               "-r", "redis://127.0.0.1:1/0"], capture_output=True,
                              env={k: v for k, v in os.environ.items()
                                   if k != "KINFER_TOP_METRICS"})
        self.assertEqual(none.returncode, 1)
        self.assertIn(b"redis: down", none.stdout)
        self.assertIn(b"(none: no worker given", none.stdout)

    def test_z_workers_found_by_their_heartbeat_records(self):
        """Last: stops a worker."""
        want = {f"http://{u}/metrics" for u in self.urls}
        deadline = time.monotonic() + 10
        while True:
            recs = {k.decode(): self.r.get(k).decode() for k in self.r.scan_iter("kinfer:worker:*")}
            if set(recs.values()) == want:
                break
            self.assertLess(time.monotonic(), deadline, recs)
            time.sleep(0.1)
        for k in recs:
            self.assertTrue(0 < self.r.pttl(k) <= 30000, (k, self.r.pttl(k)))
        pids = {p.pid for p in self.procs}
        self.assertEqual({int(k.rsplit(":", 1)[1]) for k in recs} <= pids, True, recs)
        # records nobody should follow, and one of a worker that died
        self.r.set("kinfer:worker:evil1", "file:///etc/passwd")
        self.r.set("kinfer:worker:evil2", "http://x\x1b[2J/metrics")
        self.r.set("kinfer:worker:gone", f"http://{self.dead}/metrics")
        cmd = [os.path.join(BIN, "kinfer"), "top", "--once", "-i", "300", "-r", self.redis_url]
        env = {k: v for k, v in os.environ.items() if k != "KINFER_TOP_METRICS"}
        out = subprocess.run(cmd, capture_output=True, env=env)
        text = out.stdout.decode()
        rows = {l.split()[0]: l.split()[1] for l in text.splitlines()
                if l.split() and l.split()[0].startswith("127.0.0.1:")}
        self.assertEqual(rows, {self.urls[0]: "up", self.urls[1]: "up", self.dead: "down"}, text)
        self.assertNotIn("passwd", text)
        self.assertNotIn("x\\x1b", text)
        self.assertEqual(out.returncode, 1, "one is down")
        # a worker that stops takes its record with it
        worker = [p for p in self.procs if p.args[0].endswith("kinfer-worker")][0]
        stop(worker)
        self.assertEqual(worker.returncode, 0)
        gone = [k for k, v in recs.items() if v == f"http://{self.urls[0]}/metrics"][0]
        self.assertIsNone(self.r.get(gone))
        text = subprocess.run(cmd, capture_output=True, env=env).stdout.decode()
        self.assertNotIn(self.urls[0], text)
        self.assertIn(self.urls[1], text)

if __name__ == "__main__":
    if not shutil.which("tmux"):
        sys.exit("tmux is not installed (deploy/install-deps.sh installs it)")
    unittest.main(verbosity=2)
