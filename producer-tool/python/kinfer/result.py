"""kinfer.result - a job's result as read from Redis (docs/protocol.md,
"Result"): one msgpack map per job, decoded into a :class:`Result`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

import msgpack
import numpy as np

from .errors import NonFiniteOutput, UnreadableResult, error_for

Value = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]


@dataclass
class Result:
    """One job's result.  ``ok`` is True for status ``ok``; then ``output``
    is the float32 matrix exactly as the worker wrote it (rows x cols, see
    ``shape``), else ``error`` is the code and ``message`` the explanation.
    ``raw`` is the whole decoded map, unknown fields included."""

    status: str
    id: str
    user: str
    model: Optional[str] = None
    version: Optional[int] = None
    output: Optional[np.ndarray] = None
    window: Optional[int] = None
    nonfinite: int = 0
    error: Optional[str] = None
    message: Optional[str] = None
    retry_after: Optional[int] = None
    worker: Optional[str] = None
    source: Optional[str] = None
    enqueued: Optional[int] = None
    started: Optional[int] = None
    done: Optional[int] = None
    #: the job's requested output mode, when the client knows it (for value())
    mode: str = "raw"
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def shape(self) -> Optional[Tuple[int, int]]:
        return None if self.output is None else tuple(self.output.shape)  # type: ignore

    def exception(self) -> Optional[Exception]:
        """The exception value() would raise, or None."""
        if not self.ok:
            return error_for(self.error or "unknown", self.message or "", self)
        if self.nonfinite:
            return NonFiniteOutput(
                f"job {self.id}: {self.nonfinite} output values are NaN or infinite "
                "(the forward pass overflowed); the job was charged", self)
        return None

    def value(self) -> Value:
        """The output as numpy, by the job's output mode: ``raw`` and
        ``softmax`` a float32 matrix rows x cols; ``argmax`` an int64 vector
        of one class per row; ``topk`` a pair (indices int64 rows x k,
        values float32 rows x k).  Raises the error result's exception
        (kinfer.errors) or NonFiniteOutput."""
        exc = self.exception()
        if exc is not None:
            raise exc
        out = self.output
        assert out is not None
        if self.mode == "argmax":
            return out[:, 0].astype(np.int64)
        if self.mode == "topk":
            k = out.shape[1] // 2
            return out[:, :k].astype(np.int64), out[:, k:].copy()
        return out


def decode(value: bytes, mode: str = "raw", key: Optional[Tuple[str, str]] = None) -> Result:
    """Decodes a GET of P{U}:result:ID; key = (U, ID) when known.  Raises
    UnreadableResult naming the key and the problem when the value is not a
    v2 result, or is the result of another user or job."""
    try:
        return _decode(value, mode, key)
    except UnreadableResult as e:
        if key is not None:
            e.message = f"result of {key[0]}/{key[1]}: {e.message}"
            e.args = (e.message,)
        raise


def _decode(value: bytes, mode: str, key: Optional[Tuple[str, str]]) -> Result:
    try:
        m = msgpack.unpackb(value, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise UnreadableResult(f"result value is not msgpack: {e}") from None
    if not isinstance(m, dict):
        raise UnreadableResult("result value is not a msgpack map")

    def need(key: str, typ: type) -> Any:
        v = m.get(key)
        if not isinstance(v, typ) or isinstance(v, bool):
            raise UnreadableResult(f"result field {key!r} missing or not {typ.__name__}"
                                   f" (got {type(v).__name__})")
        return v

    def opt(key: str, typ: type) -> Any:
        v = m.get(key)
        return v if isinstance(v, typ) and not isinstance(v, bool) else None

    if m.get("v") != 2:
        raise UnreadableResult(f"result has v={m.get('v')!r}, expected 2")
    status = need("status", str)
    r = Result(status=status, id=need("id", str), user=need("user", str),
               model=opt("model", str), worker=opt("worker", str), source=opt("source", str),
               enqueued=opt("enqueued", int), started=opt("started", int),
               done=opt("done", int), window=opt("window", int), mode=mode, raw=m)
    if key is not None and (r.user, r.id) != key:
        raise UnreadableResult(f"the value is the result of {r.user}/{r.id}")
    if status == "ok":
        r.version = need("version", int)
        shape = m.get("shape")
        data = need("output", bytes)
        if not (isinstance(shape, list) and len(shape) == 2
                and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise UnreadableResult(f"result shape {shape!r} is not [rows, cols]")
        if len(data) != shape[0] * shape[1] * 4:
            raise UnreadableResult(f"result output has {len(data)} bytes, shape {shape} "
                                   f"needs {shape[0] * shape[1] * 4}")
        r.output = np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(shape)
        r.nonfinite = opt("nonfinite", int) or 0
    elif status == "error":
        r.error = need("error", str)
        r.message = opt("message", str) or ""
        r.retry_after = opt("retry_after", int)
    else:
        raise UnreadableResult(f"result status {status!r} is neither ok nor error")
    return r
