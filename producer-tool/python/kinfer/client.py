"""kinfer.client - submits jobs to Kafka and waits for their results in Redis.

A Client holds one Kafka producer (idempotent, acks=all) and one Redis
connection pool, and one inbox name: every job it submits announces itself
on ``P{user}:inbox:kinfer-RUN`` (RUN: 16 random hex digits, as the ``kinfer``
CLI does, so ``kinfer wait`` finds Python-submitted jobs from their ids).
Waiting follows docs/protocol.md, "Waiting for results": GET every pending
result in one pipelined round, then block on the inboxes (BLMPOP, many ids
per call; BLPOP on a Redis older than 7), GET what was announced, and GET
everything again after each 5 s without news, since an inbox is a hint.

Settings come from the arguments, else the environment variables the CLI
reads, else the CLI's defaults: KINFER_BROKERS (localhost:9092),
KINFER_REDIS (redis://127.0.0.1:6379/0), KINFER_TOPIC (kinfer.jobs),
KINFER_PREFIX (kinfer:), KINFER_USER (no default).  ``kafka_config`` passes
librdkafka properties through, like the CLI's ``-X key=value``.

A Client is not thread-safe: use one per thread.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import weakref
from typing import (Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple,
                    Union)

import numpy as np
import redis as redis_lib
from confluent_kafka import KafkaError, KafkaException, Producer

from . import wire
from .errors import (BadRequest, ConnectionFailed, DeliveryError, KinferError, ResultGone,
                     Timeout, TooLarge, UnreadableResult)
from .job import Job
from .result import Result, decode

DEFAULTS = {
    "brokers": "localhost:9092",
    "redis": "redis://127.0.0.1:6379/0",
    "topic": "kinfer.jobs",
    "prefix": "kinfer:",
}
ENV = {"brokers": "KINFER_BROKERS", "redis": "KINFER_REDIS", "topic": "KINFER_TOPIC",
       "prefix": "KINFER_PREFIX", "user": "KINFER_USER"}

#: what the CLI's `kinfer submit` sets; kafka_config may override each
PRODUCER_DEFAULTS = {
    "enable.idempotence": True,   # no duplicates or reordering on retries
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": 30000,
}

SLICE_S = 5.0          # longest block on an inbox before reading the results again
GET_CHUNK = 1000       # GETs per pipelined round
POP_COUNT = 1000       # ids per BLMPOP
PRUNE_EVERY = 10000    # submissions between sweeps of dropped handles

Key = Tuple[str, str]  # (user, id)


def _setting(name: str, arg: Optional[str]) -> Optional[str]:
    """The argument, else the variable (unless empty), else the default."""
    if arg is not None:
        return arg
    env = os.environ.get(ENV[name])
    if env is not None and env != "":
        return env
    return DEFAULTS.get(name)


def _setting_str(name: str, arg: Optional[str]) -> str:
    v = _setting(name, arg)
    assert v is not None   # every name but "user" has a default
    return v


class Client:
    """A connection to one kinfer deployment (a Kafka topic, a Redis, a key
    prefix).  Use as a context manager, or call close()."""

    def __init__(self, brokers: Optional[str] = None, redis_url: Optional[str] = None, *,
                 topic: Optional[str] = None, prefix: Optional[str] = None,
                 user: Optional[str] = None,
                 kafka_config: Optional[Mapping[str, Any]] = None,
                 redis_timeout: float = 10.0) -> None:
        self.brokers = _setting_str("brokers", brokers)
        self.redis_url = _setting_str("redis", redis_url)
        self.topic = _setting_str("topic", topic)
        self.prefix = wire.check_prefix(_setting_str("prefix", prefix))
        u = _setting("user", user)
        try:
            self.user = wire.check_name("user", u, wire.USER_MAX) if u is not None else None
        except BadRequest as e:
            raise ValueError(e.message) from None
        if not self.redis_url.startswith("redis://"):
            raise ValueError("redis URL must be redis://[user:password@]host:port[/db]")
        self._run = secrets.token_hex(8)
        #: the inbox name this client's jobs announce themselves on
        self.inbox = f"kinfer-{self._run}"
        self._seq = 0
        # Unresolved jobs by (user, id), weakly: a handle the caller dropped
        # (submit now, get by id later) is not kept for the client's lifetime.
        self._jobs: Dict[Key, List["weakref.ref[Job]"]] = {}
        self._unflushed = 0
        self._blmpop = True
        self._closed = False
        self._producer: Any = None
        # librdkafka's own log lines go to Python logging, not straight to stderr
        conf: Dict[str, Any] = {"bootstrap.servers": self.brokers,
                                "logger": logging.getLogger("kinfer.kafka")}
        conf.update(PRODUCER_DEFAULTS)
        conf.update(kafka_config or {})
        self._max_message_bytes = int(conf.get("message.max.bytes", 1000000))
        try:
            self._producer = Producer(conf)
        except KafkaException as e:
            raise ValueError(f"kafka configuration: {e.args[0]}") from None
        # The socket timeout must outlast a blocking pop of SLICE_S.
        self._redis = redis_lib.Redis.from_url(
            self.redis_url, socket_timeout=max(redis_timeout, SLICE_S + 5),
            socket_connect_timeout=redis_timeout)

    # ------------------------------------------------------------ lifetime

    def __repr__(self) -> str:   # no redis_url: it may hold a password
        return (f"<kinfer.Client brokers={self.brokers!r} topic={self.topic!r} "
                f"prefix={self.prefix!r} user={self.user!r} inbox={self.inbox!r}>")

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
            return
        try:                # an error already propagating is the one to see
            self.close()
        except KinferError:
            pass

    def close(self, timeout: float = 30.0) -> None:
        """Waits (at most timeout s) until Kafka acknowledged every submitted
        job, then closes the Redis connections.  Jobs not acknowledged by then
        are reported by a later wait as DeliveryError; none is dropped
        silently: close() raises DeliveryError when some were not delivered."""
        if self._closed:
            return
        self._closed = True
        left = self._producer.flush(timeout)
        self._producer = None     # librdkafka's handle is destroyed with its last reference
        self._redis.close()
        if left:
            raise DeliveryError(f"{left} jobs were still not acknowledged by Kafka after "
                                f"{timeout} s")

    # ------------------------------------------------------------ submitting

    def submit(self, model: str, rows: Any, *, user: Optional[str] = None,
               id: Optional[str] = None, version: int = 0, output: str = "raw",
               k: Optional[int] = None, ttl: Optional[int] = None,
               deadline_ms: Optional[int] = None, inbox: Optional[str] = None) -> Job:
        """Submits one job and returns its handle (a future: job.result()).

        rows: a 2-D array-like (rows x cols; a 1-D one is one row), sent as
        float32.  user: who is charged (default: the client's user).  id:
        the job id (default: USER-RUN-N, unique per client).  version: pin a
        model version (0 = the active one).  output: raw, softmax, argmax or
        topk (with k).  ttl: the result's lifetime in s (worker default
        86400).  deadline_ms: the job expires unless picked up within this
        many ms.  inbox: announce on this inbox instead of the client's.

        Raises BadRequest for what the protocol refuses (names, shape,
        non-finite values), TooLarge when the message is over the producer's
        message.max.bytes (1 MB unless kafka_config says otherwise).
        The job is handed to the producer; it is sent within linger.ms and
        the next wait/get/close makes sure Kafka acknowledged it."""
        job = self._submit(model, rows, user, id, version, output, k, ttl, deadline_ms, inbox)
        self._producer.poll(0)
        return job

    def submit_many(self, model: str, inputs: Union[Iterable[Any], np.ndarray], *,
                    rows_per_job: Optional[int] = None, user: Optional[str] = None,
                    ids: Optional[Sequence[str]] = None, version: int = 0,
                    output: str = "raw", k: Optional[int] = None, ttl: Optional[int] = None,
                    deadline_ms: Optional[int] = None,
                    inbox: Optional[str] = None, flush_timeout: float = 60.0) -> List[Job]:
        """Submits many jobs through the one producer and flushes once.

        inputs: an iterable of matrices, one job each (a 3-D array is a stack
        of them); or, with rows_per_job, one 2-D matrix split into jobs of
        that many rows (the last one may be shorter).  ids: one per job
        (default: generated).  Other arguments as submit().  Returns the
        handles in order, once Kafka acknowledged (or refused) every job:
        a refused one raises DeliveryError when waited for.  An input that
        submit() would refuse (BadRequest, TooLarge) refuses the whole call
        before any job is sent."""
        if rows_per_job is not None:
            if not isinstance(rows_per_job, int) or isinstance(rows_per_job, bool) or \
                    rows_per_job < 1:
                raise ValueError("rows_per_job must be a positive int")
            x = wire.as_matrix(inputs)
            inputs = [x[i:i + rows_per_job] for i in range(0, x.shape[0], rows_per_job)]
        inputs = list(inputs)
        if ids is not None and len(ids) != len(inputs):
            raise ValueError(f"ids has {len(ids)} entries for {len(inputs)} inputs")
        # Every job is checked and encoded before the first is sent: a bad
        # input refuses the whole call, and no handle is lost to an exception.
        encoded = [self._encode(model, rows, user, None if ids is None else ids[n], version,
                                output, k, ttl, deadline_ms, inbox, self._seq + n)
                   for n, rows in enumerate(inputs)]
        jobs: List[Job] = []
        for n, (value, job) in enumerate(encoded):
            try:
                self._produce(job.user, value, job)
            except DeliveryError as e:   # the others went: keep every handle
                job._exc = e
            self._register(job)
            jobs.append(job)
            if n % 1000 == 999:
                self._producer.poll(0)
        self._flush(flush_timeout)
        return jobs

    def _submit(self, model: str, rows: Any, user: Optional[str], job_id: Optional[str],
                version: int, output: str, k: Optional[int], ttl: Optional[int],
                deadline_ms: Optional[int], inbox: Optional[str]) -> Job:
        value, job = self._encode(model, rows, user, job_id, version, output, k, ttl,
                                  deadline_ms, inbox, self._seq)
        self._produce(job.user, value, job)
        self._register(job)
        return job

    def _encode(self, model: str, rows: Any, user: Optional[str], job_id: Optional[str],
                version: int, output: str, k: Optional[int], ttl: Optional[int],
                deadline_ms: Optional[int], inbox: Optional[str],
                seq: int) -> Tuple[bytes, Job]:
        """A job's message value and its handle (not registered yet); seq
        numbers a generated id."""
        self._check_open()
        user = user if user is not None else self.user
        if user is None:
            raise ValueError("no user: pass user= or set KINFER_USER")
        wire.check_name("user", user, wire.USER_MAX)
        inbox = inbox if inbox is not None else self.inbox
        if job_id is None:
            job_id = f"{user}-{self._run}-{seq + 1}"
        x = wire.as_matrix(rows)
        deadline = 0
        if deadline_ms is not None:
            if not isinstance(deadline_ms, int) or isinstance(deadline_ms, bool) or \
                    deadline_ms < 1:
                raise ValueError("deadline_ms must be a positive int (ms from now)")
            deadline = int(time.time() * 1000) + deadline_ms
        value = wire.encode_job(job_id=job_id, user=user, model=model, x=x, version=version,
                                output=output, k=k, ttl=ttl, deadline=deadline, inbox=inbox)
        # librdkafka's own check (key + value over message.max.bytes), made
        # here so that submit_many refuses before sending anything
        if len(value) + len(user.encode()) > self._max_message_bytes:
            raise TooLarge(f"job {job_id}: the message ({len(value)} bytes) is over the "
                           f"producer's message.max.bytes ({self._max_message_bytes}); "
                           "split the rows into several jobs (submit_many rows_per_job)")
        return value, Job(self, job_id, user, model, inbox, output, int(x.shape[0]))

    def _register(self, job: Job) -> None:
        self._seq += 1
        self._jobs.setdefault((job.user, job.id), []).append(weakref.ref(job))
        if self._seq % PRUNE_EVERY == 0:
            self._jobs = {k: refs for k, refs in self._jobs.items()
                          if any(ref() is not None for ref in refs)}

    def _handles(self, key: Key) -> List[Job]:
        """Takes key's live handles out of the unresolved set."""
        return [j for j in (ref() for ref in self._jobs.pop(key, [])) if j is not None]

    def _produce(self, user: str, value: bytes, job: Job) -> None:
        def delivered(err: Optional[KafkaError], msg: Any) -> None:
            if err is not None and job._result is None:
                job._exc = DeliveryError(f"job {job.id} was not delivered: {err.str()}")

        while True:
            try:
                self._producer.produce(self.topic, key=user.encode(), value=value,
                                       on_delivery=delivered)
                break
            except BufferError:          # the local queue is full: let deliveries drain it
                self._producer.poll(0.1)
            except KafkaException as e:
                err = e.args[0]
                if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    raise TooLarge(f"job {job.id}: the message ({len(value)} bytes) is over "
                                   f"the producer's message.max.bytes ({err.str()})") from None
                raise DeliveryError(f"job {job.id}: cannot produce: {err.str()}") from None
        self._unflushed += 1

    def flush(self, timeout: float = 30.0) -> int:
        """Waits (at most timeout s) until Kafka acknowledged every job
        submitted so far; returns how many are still not acknowledged.
        wait(), result() and close() do this themselves."""
        self._check_open()
        self._flush(timeout)
        return len(self._producer)

    def _flush(self, timeout: Optional[float]) -> None:
        """Waits for Kafka's acknowledgement of every job handed over (at most
        timeout s); delivery callbacks mark refused jobs."""
        if self._unflushed == 0:
            self._producer.poll(0)
            return
        left = self._producer.flush(30.0 if timeout is None else max(timeout, 0.0))
        if left == 0:
            self._unflushed = 0

    # ------------------------------------------------------------ reading

    def get(self, id: str, user: Optional[str] = None) -> Optional[Result]:
        """Reads the result of user's job id now: the Result, or None when
        there is none (not done yet, expired, deleted)."""
        self._check_open()
        user = user if user is not None else self.user
        if user is None:
            raise ValueError("no user: pass user= or set KINFER_USER")
        wire.check_name("user", user, wire.USER_MAX)
        wire.check_name("id", id, wire.ID_MAX)
        mine = [j for j in (ref() for ref in self._jobs.get((user, id), [])) if j is not None]
        mode = mine[0].output if mine else "raw"
        try:
            v = self._redis.get(wire.result_key(self.prefix, user, id))
        except redis_lib.exceptions.RedisError as e:
            raise ConnectionFailed(f"redis GET: {e}") from None
        return None if v is None else decode(v, mode, (user, id))

    def wait(self, jobs: Sequence[Job], timeout: Optional[float] = None, *,
             return_exceptions: bool = False) -> List[Result]:
        """Waits until every job has its result, at most timeout seconds in
        all (None = forever), and returns the results in order, error
        results included (Result.ok, Result.value()).

        Raises Timeout (listing what is still pending; the handles keep the
        results that came) when time runs out.  A job that can never have a
        result (DeliveryError, ResultGone, UnreadableResult) raises its
        exception after the others are waited for, or with
        return_exceptions=True takes its place in the list."""
        self._check_open()
        for j in jobs:
            if j._client is not self:
                raise ValueError(f"job {j.user}/{j.id} belongs to another Client")
        until = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        self._flush(None if until is None else until - time.monotonic())
        todo = [j for j in jobs if j._result is None and j._exc is None]
        self._fetch(todo)
        while True:
            todo = [j for j in todo if j._result is None and j._exc is None]
            if not todo:
                break
            left = None if until is None else until - time.monotonic()
            if left is not None and left <= 0:
                break
            slice_s = SLICE_S if left is None else min(left, SLICE_S)
            popped = self._pop(todo, slice_s)
            if popped is None:     # a slice without news: read the results themselves
                self._fetch(todo)
            else:
                self._announced(popped)
        if todo:
            raise Timeout(f"{len(todo)} of {len(jobs)} jobs have no result after "
                          f"{timeout} s (first: {todo[0].user}/{todo[0].id})",
                          [(j.user, j.id) for j in todo])
        out: List[Any] = []
        first_exc = None
        for j in jobs:
            if j._result is not None:
                out.append(j._result)
            else:
                out.append(j._exc)
                first_exc = first_exc or j._exc
        if first_exc is not None and not return_exceptions:
            raise first_exc
        return out

    def predict(self, model: str, x: Any, *, rows_per_job: int = 256,
                timeout: Optional[float] = 300.0, **submit_args: Any) -> Any:
        """The model's output for every row of x, in order: submit_many with
        rows_per_job, wait, and stack the values (see Result.value).  Raises
        the first job's error (kinfer.errors) or Timeout."""
        jobs = self.submit_many(model, x, rows_per_job=rows_per_job, **submit_args)
        values = [r.value() for r in self.wait(jobs, timeout)]
        if values and isinstance(values[0], tuple):
            return (np.concatenate([v[0] for v in values]),
                    np.concatenate([v[1] for v in values]))
        return np.concatenate(values)

    # ------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise KinferError("the client is closed")

    def _resolve(self, key: Key, value: Optional[bytes], announced: bool) -> None:
        """Records a GET of key's result in every handle of that (user, id)."""
        if value is None:
            if announced:
                for j in self._handles(key):
                    if j._result is None and j._exc is None:
                        j._exc = ResultGone(
                            f"job {key[0]}/{key[1]} was announced but has no result: a "
                            "duplicate of a job whose result expired or was deleted; submit "
                            "it with a new id")
            return
        for j in self._handles(key):
            if j._exc is not None:   # a late delivery report lost to a result: keep the result
                j._exc = None
            try:
                j._result = decode(value, j.output, key)
            except UnreadableResult as e:
                j._exc = e

    def _get_many(self, keys: Sequence[Key]) -> List[Optional[bytes]]:
        out: List[Optional[bytes]] = []
        try:
            for i in range(0, len(keys), GET_CHUNK):
                pipe = self._redis.pipeline(transaction=False)
                for user, jid in keys[i:i + GET_CHUNK]:
                    pipe.get(wire.result_key(self.prefix, user, jid))
                out.extend(pipe.execute())
        except redis_lib.exceptions.RedisError as e:
            raise ConnectionFailed(f"redis GET: {e}") from None
        return out

    def _fetch(self, jobs: Sequence[Job], announced: bool = False) -> None:
        keys = list(dict.fromkeys((j.user, j.id) for j in jobs))
        for key, value in zip(keys, self._get_many(keys)):
            self._resolve(key, value, announced)

    def _poll(self, jobs: Sequence[Job]) -> None:
        self._flush(0)
        self._fetch([j for j in jobs if j._result is None and j._exc is None])

    def _pop(self, todo: Sequence[Job], slice_s: float) -> Optional[List[Key]]:
        """Blocks up to slice_s on the inboxes of todo; returns the (user, id)
        pairs announced, or None after a slice without any."""
        inboxes: Dict[str, str] = {}
        for j in todo:
            inboxes.setdefault(wire.inbox_key(self.prefix, j.user, j.inbox), j.user)
        keys = list(inboxes)
        block = max(round(slice_s, 3), 0.001)
        try:
            if self._blmpop:
                try:
                    got = self._redis.blmpop(  # type: ignore[attr-defined]
                        block, len(keys), *keys, direction="LEFT", count=POP_COUNT)
                except redis_lib.exceptions.ResponseError as e:
                    if "unknown command" not in str(e).lower():
                        raise
                    self._blmpop = False       # Redis < 7: one id per BLPOP
                    return self._pop(todo, slice_s)
                if not got:
                    return None
                key = got[0].decode()
                # anyone with the user's keys may push anything: junk is an
                # id nobody waits for, not a crash
                return [(inboxes[key], v.decode("utf-8", "replace")) for v in got[1]]
            got = self._redis.blpop(keys, timeout=block)
            if not got:
                return None
            return [(inboxes[got[0].decode()], got[1].decode("utf-8", "replace"))]
        except redis_lib.exceptions.RedisError as e:
            raise ConnectionFailed(f"redis BLMPOP: {e}") from None

    def _announced(self, popped: List[Key]) -> None:
        """GETs the results of announced ids this client waits for (any of
        its handles, not only the ones being waited for now: the id is
        taken off the inbox); ids it does not know are ignored."""
        keys = list(dict.fromkeys(k for k in popped if k in self._jobs))
        for key, value in zip(keys, self._get_many(keys)):
            self._resolve(key, value, announced=True)
