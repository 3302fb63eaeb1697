"""Which database errors are retried in-process, and which are not."""

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from hub.store import transient as module
from hub.store.transient import ATTEMPTS, transient


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(module, "wait_exponential_jitter", lambda **_: lambda _state: 0)


def failing(times, error):
    calls = []

    @transient
    def operation():
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "done"

    return operation, calls


def test_operational_errors_are_retried_until_success():
    operation, calls = failing(2, OperationalError("SELECT 1", {}, Exception("server closed")))
    assert operation() == "done"
    assert len(calls) == 3


def test_gives_up_after_the_attempt_limit_with_the_original_error():
    operation, calls = failing(99, OperationalError("x", {}, Exception("down")))
    with pytest.raises(OperationalError):
        operation()
    assert len(calls) == ATTEMPTS


def test_data_errors_are_not_retried():
    operation, calls = failing(1, IntegrityError("x", {}, Exception("unique")))
    with pytest.raises(IntegrityError):
        operation()
    assert len(calls) == 1
