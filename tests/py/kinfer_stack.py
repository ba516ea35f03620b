"""kinfer_stack - a private stack for the Python tests that serve models: a
real redis-server on a free loopback port, the dev broker and one worker
reading the model registry, each stopped by its pid.  Shared by
test_sklearn_serving.py, test_models_guide.py and test_bench.py (not a test
itself)."""
import ctypes
import os
import signal
import socket
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, os.environ.get("KINFER_BIN", "build"))
REDIS_SERVER = "/usr/bin/redis-server"
PYTHON = "/usr/bin/python3"  # Debian's, with numpy, sklearn (and torch if installed)


def _die_with_parent():
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc, timeout=20.0):
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    return proc.returncode


class Stack:
    """start() then env (KINFER_BROKERS, KINFER_REDIS, PATH with build/
    first) for kinfer and kinfer-convert; stop() returns the worker's exit
    status."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="kinfer-stack-")
        self.dir = self.tmp.name
        self.redis = self.broker = self.worker = None
        self.logs = []

    def _log(self, name):
        f = open(os.path.join(self.dir, name), "wb")
        self.logs.append(f)
        return f

    def start(self):
        for b in ("kinfer-worker", "kinfer-devbroker", "kinfer", "kinfer-convert"):
            if not os.access(os.path.join(BIN, b), os.X_OK):
                raise RuntimeError("%s/%s missing: build it first (make)" % (BIN, b))
        for _ in range(5):
            port = _free_port()
            self.redis = subprocess.Popen(
                [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", self.dir],
                stdin=subprocess.DEVNULL, stdout=self._log("redis.log"),
                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
            deadline = time.monotonic() + 10
            up = False
            while time.monotonic() < deadline and self.redis.poll() is None and not up:
                try:
                    with socket.create_connection(("127.0.0.1", port), 0.2) as s:
                        s.sendall(b"PING\r\n")
                        up = s.recv(16).startswith(b"+PONG")
                except OSError:
                    time.sleep(0.05)
            if up:
                break
            _stop(self.redis)
            self.redis = None  # port taken meanwhile: another one
        else:
            raise RuntimeError("redis-server did not start")
        self.broker = subprocess.Popen(
            [os.path.join(BIN, "kinfer-devbroker"), "--partitions", "2"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log("broker.log"),
            preexec_fn=_die_with_parent)
        brokers = self.broker.stdout.readline().decode().strip()
        if not brokers:
            raise RuntimeError("the dev broker printed no address")
        self.env = dict(os.environ, KINFER_BROKERS=brokers,
                        KINFER_REDIS="redis://127.0.0.1:%d/0" % port,
                        PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
        for k in ("KINFER_TOPIC", "KINFER_PREFIX", "KINFER_MODELS", "KINFER_USER"):
            self.env.pop(k, None)
        self.worker_log = os.path.join(self.dir, "worker.log")
        self.worker = subprocess.Popen(
            [os.path.join(BIN, "kinfer-worker"), "-X", "session.timeout.ms=6000"],
            env=self.env, stdin=subprocess.DEVNULL, stdout=self._log("worker.log"),
            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        return self

    def run(self, args, cwd=None, check=True, input=None):
        """Runs a command line (a list) with the stack's environment;
        returns (exit status, stdout, stderr)."""
        p = subprocess.run(args, env=self.env, cwd=cwd or self.dir, capture_output=True,
                           text=True, input=input, timeout=120)
        if check and p.returncode != 0:
            raise AssertionError("%s: exit %d\n%s%s" % (" ".join(args), p.returncode, p.stdout,
                                                          p.stderr))
        return p.returncode, p.stdout, p.stderr

    def worker_log_text(self):
        with open(self.worker_log, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        rc = _stop(self.worker)
        if self.broker is not None:
            try:
                self.broker.stdin.close()
            except Exception:
                pass
            _stop(self.broker)
            self.broker.stdout.close()
        _stop(self.redis)
        for f in self.logs:
            f.close()
        return rc

    def cleanup(self):
        self.tmp.cleanup()
