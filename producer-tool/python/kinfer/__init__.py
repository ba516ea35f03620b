"""kinfer - the Python client of the kinfer inference worker pool.

    import numpy as np, kinfer
    with kinfer.Client(user="alice") as c:          # KINFER_BROKERS, KINFER_REDIS, ...
        job = c.submit("digits", np.random.rand(4, 64))
        probs = job.result(timeout=30)              # float32, 4 x 10

It speaks protocol version 2 (docs/protocol.md in the kinfer repository):
jobs go to Kafka as msgpack, results come from Redis.  Errors are
exceptions carrying the protocol's codes (kinfer.errors).
"""

import logging

from .client import Client
from .errors import (BadRequest, ConnectionFailed, DeliveryError, Expired, Internal, JobError,
                     KinferError, NonFiniteOutput, QuotaExceeded, ResultGone, ShapeMismatch,
                     Timeout, TooLarge, Unauthorized, UnknownModel, UnreadableResult)
from .job import Job
from .result import Result

# A library logs only where the application configures logging (librdkafka's
# lines go to "kinfer.kafka"); its failures reach the caller as exceptions.
logging.getLogger("kinfer").addHandler(logging.NullHandler())

__version__ = "0.1.0"
PROTOCOL_VERSION = 2

__all__ = [
    "Client", "Job", "Result", "PROTOCOL_VERSION",
    "KinferError", "JobError", "BadRequest", "TooLarge", "UnknownModel", "ShapeMismatch",
    "Expired", "QuotaExceeded", "Internal", "NonFiniteOutput", "Timeout", "ResultGone",
    "DeliveryError", "ConnectionFailed", "UnreadableResult", "Unauthorized",
]
