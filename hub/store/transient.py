"""Short in-process retries of transient database errors (a PostgreSQL failover, a
dropped connection, SQLite still busy after its timeout).

Allow-list only (`OperationalError`): tenacity with `retry_if_not_exception_type` would
also retry cancellation and break timeouts (stack.md §2.6). Every retried operation is
safe to repeat: claims and state changes are guarded by state and lease owner, and
intake inserts are deduplicated by their unique key. Long backoff belongs to the outbox,
not here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import OperationalError
from tenacity import (
    before_sleep_log,
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

P = ParamSpec("P")
R = TypeVar("R")

ATTEMPTS = 5
_log = logging.getLogger("hub.store")


def transient(fn: Callable[P, R]) -> Callable[P, R]:
    decorated: Callable[P, R] = retry(
        retry=retry_if_exception_type(OperationalError),
        stop=stop_after_attempt(ATTEMPTS),
        wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
        before_sleep=before_sleep_log(_log, logging.WARNING),
        reraise=True,
    )(fn)
    return decorated
