"""kinfer.job - the handle of one submitted job (a future of its result)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

from .result import Result, Value

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client


class Job:
    """A submitted job.  ``id``, ``user``, ``model``, ``inbox`` and ``output``
    are what was sent.  Its result is read once and kept here; the handle
    belongs to the Client that made it (not thread-safe, like the Client)."""

    def __init__(self, client: "Client", job_id: str, user: str, model: str, inbox: str,
                 output: str, rows: int) -> None:
        self._client = client
        self.id = job_id
        self.user = user
        self.model = model
        self.inbox = inbox
        self.output = output
        self.rows = rows
        self._result: Optional[Result] = None
        self._exc: Optional[BaseException] = None   # no result will ever come: why

    def __repr__(self) -> str:
        state = ("ok" if self._result.ok else self._result.error) if self._result else \
            ("failed" if self._exc else "pending")
        return f"<kinfer.Job {self.user}/{self.id} model={self.model} {state}>"

    def done(self) -> bool:
        """True once the result is known (or it is known that none will come).
        Does one GET when it is not known yet; never blocks."""
        if self._result is None and self._exc is None:
            self._client._poll([self])
        return self._result is not None or self._exc is not None

    def wait(self, timeout: Optional[float] = None) -> Result:
        """Waits for the result (at most timeout seconds, None = forever) and
        returns it, error results included.  Raises kinfer.Timeout, or the
        reason no result will come (DeliveryError, ResultGone,
        UnreadableResult)."""
        return self._client.wait([self], timeout)[0]

    def result(self, timeout: Optional[float] = None) -> Value:
        """Waits like wait(), then returns the output as numpy (see
        Result.value: a float32 matrix, argmax classes, topk pairs), or
        raises the error result's exception (kinfer.errors)."""
        return self.wait(timeout).value()

    def output_matrix(self, timeout: Optional[float] = None) -> np.ndarray:
        """The float32 matrix as the worker wrote it, whatever the output mode."""
        r = self.wait(timeout)
        r.value()   # raises for an error result
        assert r.output is not None
        return r.output
