"""kinfer.errors - the exceptions the client raises.

Every error result a worker writes (docs/protocol.md, "Result", error codes)
becomes a :class:`JobError` subclass named for its code; ``.code`` is the
protocol's code string, ``.message`` the worker's explanation, ``.result``
the whole :class:`kinfer.Result`.  A code this client does not know (the
protocol may add some) becomes a plain :class:`JobError`: treat it as a
failure.  Inputs that the protocol would refuse are refused before sending,
with the same class the worker would answer (``.result`` is then None).

Not errors of a job but of waiting or sending: :class:`Timeout` (also a
builtin ``TimeoutError``), :class:`ResultGone`, :class:`DeliveryError`,
:class:`ConnectionFailed`, :class:`UnreadableResult`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Type

if TYPE_CHECKING:  # pragma: no cover
    from .result import Result


class KinferError(Exception):
    """Base class of every kinfer exception; ``code`` names the kind."""

    code: str = "error"

    def __init__(self, message: str, result: "Optional[Result]" = None) -> None:
        super().__init__(message)
        self.message = message
        self.result = result

    @property
    def job_id(self) -> Optional[str]:
        return self.result.id if self.result is not None else None


class JobError(KinferError):
    """A job's result is an error; ``code`` is the protocol's error code."""

    #: whether the protocol says a retry (with a new id) can succeed
    retryable: bool = False

    def __init__(self, message: str, result: "Optional[Result]" = None,
                 code: Optional[str] = None) -> None:
        super().__init__(message, result)
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        where = f"job {self.result.id}: " if self.result is not None else ""
        return f"{where}{self.code}: {self.message}"


class BadRequest(JobError):
    """Not a valid v2 job (missing or mistyped field, ragged rows, a
    non-finite value, a second softmax over probabilities, k over the output
    width, ...)."""
    code = "bad_request"


class TooLarge(JobError):
    """Over a worker's size limit (or over the Kafka message size)."""
    code = "too_large"


class UnknownModel(JobError):
    """No such model, or the pinned version does not exist."""
    code = "unknown_model"


class ShapeMismatch(JobError):
    """The input's column count differs from the model's input dimension."""
    code = "shape_mismatch"


class Expired(JobError):
    """Picked up after its deadline: not computed, not charged."""
    code = "expired"
    retryable = True


class QuotaExceeded(JobError):
    """The user's quota for the current window is used up; not charged.

    ``retry_after`` is the seconds until the window resets, or None when no
    window will ever take the job (retrying cannot help until an operator
    raises the quota); ``window`` is the full window's start (Unix s)."""
    code = "quota_exceeded"
    retryable = True

    @property
    def retry_after(self) -> Optional[int]:
        return self.result.retry_after if self.result is not None else None

    @property
    def window(self) -> Optional[int]:
        return self.result.window if self.result is not None else None


class Internal(JobError):
    """The worker could not compute it (a corrupt model, damaged counters)."""
    code = "internal"
    retryable = True


class Unauthorized(JobError):
    """The job's signature is missing (on workers that require one), wrong, or
    not made with an active key of its user: not computed, not charged
    (docs/security.md).  Sign it with the user's key and send it again."""
    code = "unauthorized"


#: error code -> exception class, for every code of protocol v2
CODES: Dict[str, Type[JobError]] = {
    c.code: c for c in (BadRequest, TooLarge, UnknownModel, ShapeMismatch, Expired,
                        QuotaExceeded, Internal, Unauthorized)
}


def error_for(code: str, message: str, result: "Optional[Result]" = None) -> JobError:
    """The exception of an error result's code (a plain JobError for a code
    this client does not know)."""
    cls = CODES.get(code)
    if cls is None:
        return JobError(message, result, code=code)
    return cls(message, result)


class NonFiniteOutput(KinferError):
    """The job was computed and charged, but ``nonfinite`` of its output
    values are NaN or infinite (the forward pass overflowed): its numbers are
    not usable.  ``.result`` still holds them."""
    code = "nonfinite"


class Timeout(KinferError, TimeoutError):
    """Results did not come within the timeout.  ``pending`` lists the
    (user, id) pairs still without a result; they may still come later
    (``Client.get`` or another wait)."""
    code = "timeout"

    def __init__(self, message: str, pending: Sequence = ()) -> None:
        super().__init__(message)
        self.pending: List = list(pending)


class ResultGone(KinferError):
    """The job's id was announced on the inbox but it has no result: a
    duplicate (same user and id) of a job whose result has expired or was
    deleted.  It was not computed and not charged; submit with a new id."""
    code = "result_gone"


class DeliveryError(KinferError):
    """Kafka did not accept the job (the brokers' error is in the message);
    it will never have a result."""
    code = "not_delivered"


class ConnectionFailed(KinferError):
    """Redis or Kafka could not be reached or answered with an error."""
    code = "connection"


class UnreadableResult(KinferError):
    """A value under a result key is not a valid v2 result."""
    code = "unreadable_result"
