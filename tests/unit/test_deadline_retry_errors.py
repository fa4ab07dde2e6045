import time

import grpc
import pytest
from google.rpc import status_pb2

from quorum import errors
from quorum.deadline import Deadline
from quorum.grpcerrors import from_rpc_status, rpc_status_of, status_code, to_status
from quorum.retry import RetryPolicy, retryable


def test_deadline_from_grpc_clamps_and_defaults():
    assert Deadline.from_grpc(None, default_s=5, max_s=10).remaining() == pytest.approx(5, abs=0.05)
    assert Deadline.from_grpc(100, default_s=5, max_s=10).remaining() == pytest.approx(10, abs=0.05)
    assert Deadline.from_grpc(2, default_s=5, max_s=10).remaining() == pytest.approx(2, abs=0.05)


def test_deadline_timeout_shares_and_expiry():
    d = Deadline.after(1.0)
    assert d.timeout(share=0.3) == pytest.approx(0.3, abs=0.02)
    assert d.timeout(cap=0.1) == pytest.approx(0.1)
    assert d.timeout(share=0.01, floor=0.5) == pytest.approx(0.5, abs=0.02)
    gone = Deadline(time.monotonic() - 1)
    assert gone.expired()
    with pytest.raises(errors.DeadlineExceeded):
        gone.timeout()


def test_retry_after_wins_over_backoff():
    p = RetryPolicy(max_attempts=3, backoff_base_s=0.2, backoff_max_s=1.0)
    assert p.delay(1, errors.ResourceExhausted("x", retry_after=2.5), 0.5) == 2.5
    assert p.delay(1, errors.Unavailable("x"), 0.5) == pytest.approx(0.1)
    assert p.delay(10, errors.Unavailable("x"), 0.999) <= 1.0


def test_next_wait_only_for_a_retryable_failure_with_attempts_and_time_left():
    p = RetryPolicy(max_attempts=3, backoff_base_s=0.2, backoff_max_s=1.0)
    busy = errors.ResourceExhausted("x", retry_after=0.5)
    assert p.next_wait(busy, 1, remaining_s=2.0) == 0.5
    assert p.next_wait(busy, 2, remaining_s=2.0) == 0.5
    assert p.next_wait(busy, 3, remaining_s=2.0) is None  # attempts used up
    assert p.next_wait(busy, 1, remaining_s=0.5) is None  # the wait would use the deadline up
    assert p.next_wait(errors.InvalidArgument("x"), 1, remaining_s=9.0) is None
    assert p.next_wait(errors.Unavailable("x"), 1, remaining_s=9.0, rand=0.5) == pytest.approx(0.1)


def test_what_is_retried():
    assert retryable(errors.Unavailable("x"))
    assert retryable(errors.ResourceExhausted("x"))
    assert not retryable(errors.InvalidArgument("x"))
    assert not retryable(errors.DeadlineExceeded("x"))
    assert not retryable(errors.Unauthenticated("x"))


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (errors.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ContentBlocked("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Internal("x"), grpc.StatusCode.INTERNAL),
        (errors.QuorumError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_one_table_maps_every_error(err, code):
    assert status_code(err) == code
    status = to_status(err)
    assert status.code == code
    assert status.details == "x"


@pytest.mark.parametrize(
    "err",
    [
        errors.InvalidArgument("usage: is required", reason="INVALID_FIELD",
                               metadata={"field": "usage"}),
        errors.FailedPrecondition("reused", reason="REQUEST_ID_REUSED",
                                  metadata={"request_id": "a"}),
        errors.ResourceExhausted("busy", reason="LEDGER_BUSY", metadata={"queued": "8192"}),
        errors.ResourceExhausted("over", reason="BUDGET_EXCEEDED", retry_after=2.5),
        errors.Internal("internal error", reason="INTERNAL"),
    ],
)  # fmt: skip
def test_an_error_in_a_status_message_reads_back_as_itself(err):
    """What a per-record result of RecordUsageBatch carries, read back by the sender."""
    back = from_rpc_status(rpc_status_of(err), service="cost")
    assert type(back) is type(err)
    assert back.reason == err.reason
    assert back.message == f"cost: {err.message}"
    want = dict(err.metadata)
    if isinstance(err, errors.ResourceExhausted) and err.retry_after is not None:
        want["retry_after_s"] = f"{err.retry_after:g}"
        assert isinstance(back, errors.ResourceExhausted)
        assert back.retry_after == err.retry_after
    assert back.metadata == want


def test_a_status_without_error_info_or_with_an_unknown_code_still_reads_back():
    bare = from_rpc_status(status_pb2.Status(code=14, message=""), service="cost")
    assert isinstance(bare, errors.Unavailable)
    assert (bare.reason, bare.message) == ("COST_UNAVAILABLE", "cost: unavailable")
    odd = from_rpc_status(status_pb2.Status(code=99, message="what"), service="cost")
    assert isinstance(odd, errors.Internal)
