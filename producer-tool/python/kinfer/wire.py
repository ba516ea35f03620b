"""kinfer.wire - protocol v2 on the wire: names, Redis key names, job
encoding (docs/protocol.md, "Job message", "Redis keys").

Pure functions, no I/O.  Everything a worker would refuse as ``bad_request``
is refused here first, with :class:`kinfer.errors.BadRequest` naming what
was wrong, so a mistake costs no round trip and no Kafka message.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional

import msgpack
import numpy as np

from .errors import BadRequest

VERSION = 2
NAME_RE = re.compile(r"[A-Za-z0-9._:-]+")
ID_MAX, USER_MAX, MODEL_MAX, INBOX_MAX, PREFIX_MAX = 128, 64, 64, 64, 64
TTL_MAX = 2592000
VERSION_MAX = 2**32 - 1
K_MAX = 2**20
OUTPUTS = ("raw", "softmax", "argmax", "topk")
F32_MAX = float(np.finfo(np.float32).max)


def check_name(what: str, value: Any, maxlen: int) -> str:
    """Returns value if it is 1..maxlen chars of A-Z a-z 0-9 . _ : -, else
    raises BadRequest naming the field and the value."""
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a str, not {type(value).__name__}")
    if not 1 <= len(value) <= maxlen or NAME_RE.fullmatch(value) is None:
        raise BadRequest(f"{what} {value[:200]!r}: expected 1..{maxlen} characters of "
                         "A-Z a-z 0-9 . _ : -")
    return value


def check_prefix(prefix: Any) -> str:
    """A key prefix: 1..64 chars of the name set (no braces)."""
    try:
        return check_name("prefix", prefix, PREFIX_MAX)
    except BadRequest as e:
        raise ValueError(e.message) from None


def user_key(prefix: str, user: str, kind: str, var: Optional[str] = None) -> str:
    """P{U}:kind[:var], the only shape of a user's key."""
    key = f"{prefix}{{{user}}}:{kind}"
    return key if var is None else f"{key}:{var}"


def result_key(prefix: str, user: str, job_id: str) -> str:
    return user_key(prefix, user, "result", job_id)


def inbox_key(prefix: str, user: str, inbox: str) -> str:
    return user_key(prefix, user, "inbox", inbox)


def as_matrix(rows: Any) -> np.ndarray:
    """The input as a C-contiguous little-endian float32 matrix: a 2-D array
    is rows x cols, a 1-D one is one row.  Raises BadRequest for another
    shape, an empty matrix, a value that is not finite or does not fit a
    float32."""
    try:
        a = np.asarray(rows)
    except ValueError as e:   # ragged nested lists
        raise BadRequest(f"input is not a matrix (ragged rows?): {e}") from None
    if a.dtype == object:   # big Python ints, Decimals, None, ...
        try:
            a = a.astype(np.float64)
        except (TypeError, ValueError):
            raise BadRequest("input is not a matrix of numbers (ragged rows?)") from None
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2:
        raise BadRequest(f"input has {a.ndim} dimensions, expected rows x cols")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise BadRequest(f"input has shape {list(a.shape)}: needs at least one row and "
                         "one column")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or \
            np.issubdtype(a.dtype, np.complexfloating):
        raise BadRequest(f"input has dtype {a.dtype}, expected real numbers")
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise BadRequest(f"input[{r}, {c}] is {a[r, c]}: every value must be finite")
    if a.dtype != np.float32:
        big = np.abs(a.astype(np.float64)) > F32_MAX
        if big.any():
            r, c = np.argwhere(big)[0]
            raise BadRequest(f"input[{r}, {c}] = {a[r, c]} does not fit a float32")
    return np.ascontiguousarray(a, dtype="<f4")


def encode_job(*, job_id: str, user: str, model: str, x: np.ndarray, version: int = 0,
               output: str = "raw", k: Optional[int] = None, ttl: Optional[int] = None,
               deadline: int = 0, inbox: Optional[str] = None) -> bytes:
    """One v2 job message value (input in the packed float32 form).  x comes
    from as_matrix.  deadline is Unix ms (0 = none)."""
    check_name("id", job_id, ID_MAX)
    check_name("user", user, USER_MAX)
    check_name("model", model, MODEL_MAX)
    if inbox is not None:
        check_name("inbox", inbox, INBOX_MAX)
    if output not in OUTPUTS:
        raise BadRequest(f"output {output!r}: expected one of {', '.join(OUTPUTS)}")
    if (output == "topk") != (k is not None):
        raise BadRequest("output 'topk' needs k, and k goes with output 'topk' only")
    if not _uint(version, 0, VERSION_MAX):
        raise BadRequest(f"version {version!r}: expected 0..{VERSION_MAX} (0 = the active one)")
    if k is not None and not _uint(k, 1, K_MAX):
        raise BadRequest(f"k {k!r}: expected 1..{K_MAX}")
    if ttl is not None and not _uint(ttl, 1, TTL_MAX):
        raise BadRequest(f"ttl {ttl!r}: expected 1..{TTL_MAX} seconds")
    if not _uint(deadline, 0, 2**64 - 1):
        raise BadRequest(f"deadline {deadline!r}: expected Unix ms")
    job: Dict[str, Any] = {
        "v": VERSION, "id": job_id, "user": user, "model": model,
        "input": {"dtype": "f32", "shape": [int(x.shape[0]), int(x.shape[1])],
                  "data": x.tobytes()},
    }
    if version:
        job["version"] = int(version)
    if output != "raw":
        job["output"] = output
    if k is not None:
        job["k"] = int(k)
    if ttl is not None:
        job["ttl"] = int(ttl)
    if deadline:
        job["deadline"] = int(deadline)
    if inbox is not None:
        job["inbox"] = inbox
    return msgpack.packb(job, use_bin_type=True)


def _uint(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and lo <= int(v) <= hi
