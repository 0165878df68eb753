"""Domain errors become gRPC statuses with the details a client can act on."""

from __future__ import annotations

from google.rpc import code_pb2, error_details_pb2, status_pb2

from agentd.api.status import to_status
from agentd.errors import InvalidArgumentError, TooSoonError


def _details(status: object) -> status_pb2.Status:
    (key, value), *_ = status.trailing_metadata  # type: ignore[attr-defined]
    assert key == "grpc-status-details-bin"
    return status_pb2.Status.FromString(value)


def test_too_soon_is_failed_precondition_with_retry_info() -> None:
    status = to_status(TooSoonError("cpu was changed 0.5 s ago", retry_after_seconds=1.25))
    parsed = _details(status)
    assert parsed.code == code_pb2.FAILED_PRECONDITION
    retry = error_details_pb2.RetryInfo()
    assert parsed.details[0].Unpack(retry)
    assert retry.retry_delay.ToNanoseconds() == 1_250_000_000


def test_invalid_argument_names_the_field() -> None:
    parsed = _details(to_status(InvalidArgumentError("intent.cpu", "must be positive")))
    assert parsed.code == code_pb2.INVALID_ARGUMENT
    bad = error_details_pb2.BadRequest()
    assert parsed.details[0].Unpack(bad)
    assert bad.field_violations[0].field == "intent.cpu"
