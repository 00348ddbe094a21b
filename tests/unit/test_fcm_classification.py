"""The FCM failure table: each FCM error code and pyfcm exception → one outcome."""

from __future__ import annotations

import pytest
import requests
from pyfcm import errors

from notifiers.base import Notification, Outcome
from notifiers.fcm import (
    ERROR_CODE_OUTCOMES,
    FcmAnswer,
    FcmNotifier,
    classify,
    collapse_key,
)


@pytest.mark.parametrize(
    "status,code,exc,outcome",
    [
        (404, "UNREGISTERED", errors.FCMNotRegisteredError, Outcome.TARGET_INVALID),
        (403, "SENDER_ID_MISMATCH", errors.FCMSenderIdMismatchError, Outcome.TARGET_INVALID),
        (400, "INVALID_ARGUMENT", errors.InvalidDataError, Outcome.FAILED),
        (401, "THIRD_PARTY_AUTH_ERROR", errors.AuthenticationError, Outcome.FAILED),
        (429, "QUOTA_EXCEEDED", errors.FCMServerError, Outcome.RETRY),
        (503, "UNAVAILABLE", errors.FCMServerError, Outcome.RETRY),
        (500, "INTERNAL", errors.FCMServerError, Outcome.RETRY),
    ],
)
def test_error_codes(status: int, code: str, exc: type[Exception], outcome: Outcome) -> None:
    result = classify(exc("x"), FcmAnswer(status, code, None))
    assert result.outcome is outcome
    assert code in result.reason and str(status) in result.reason


@pytest.mark.parametrize(
    "exc,outcome",
    [
        (errors.FCMNotRegisteredError, Outcome.TARGET_INVALID),
        (errors.FCMSenderIdMismatchError, Outcome.TARGET_INVALID),
        (errors.InvalidDataError, Outcome.FAILED),
        (errors.FCMServerError, Outcome.RETRY),
        (errors.AuthenticationError, Outcome.RETRY),
    ],
)
def test_status_only_falls_back_to_exception_type(exc: type[Exception], outcome: Outcome) -> None:
    assert classify(exc("x"), FcmAnswer(599, None, None)).outcome is outcome


def test_retry_after_is_kept_for_retries_only() -> None:
    retry = classify(errors.FCMServerError("x"), FcmAnswer(429, "QUOTA_EXCEEDED", 7.0))
    assert (retry.outcome, retry.retry_after) == (Outcome.RETRY, 7.0)
    gone = classify(errors.FCMNotRegisteredError("x"), FcmAnswer(404, "UNREGISTERED", 7.0))
    assert gone.retry_after is None


@pytest.mark.parametrize("exc", [requests.ConnectionError(), requests.ReadTimeout()])
def test_transport_errors_are_retried(exc: Exception) -> None:
    assert classify(exc, None).outcome is Outcome.RETRY


def test_every_documented_code_is_classified() -> None:
    documented = {
        "UNSPECIFIED_ERROR",
        "INVALID_ARGUMENT",
        "UNREGISTERED",
        "SENDER_ID_MISMATCH",
        "QUOTA_EXCEEDED",
        "UNAVAILABLE",
        "INTERNAL",
        "THIRD_PARTY_AUTH_ERROR",
    }
    assert documented - set(ERROR_CODE_OUTCOMES) == {"UNSPECIFIED_ERROR"}
    unknown = classify(errors.FCMServerError("x"), FcmAnswer(500, "UNSPECIFIED_ERROR", None))
    assert unknown.outcome is Outcome.RETRY  # falls back to the HTTP status


def test_data_payload_respects_what_it_is_given() -> None:
    n = Notification(1, "alice@example.test", "tok", "bob@example.test", message_count=2)
    assert FcmNotifier.build_data(n) == {
        "notification_id": "1",
        "account": "alice@example.test",
        "message_count": "2",
    }  # no sender given: no conversation either (it names the other party)
    with_body = Notification(1, "a@x", "t", "b@x", sender="b@x", body="hi", unread_count=4)
    data = FcmNotifier.build_data(with_body)
    assert (data["sender"], data["body"], data["unread_count"]) == ("b@x", "hi", "4")
    assert data["conversation"] == "b@x"


def test_collapse_key_is_per_conversation_and_opaque() -> None:
    a = Notification(1, "a@x", "t", "bob@example.test")
    b = Notification(2, "a@x", "t", "carol@example.test")
    assert collapse_key(a) == collapse_key(Notification(3, "a@x", "u", "bob@example.test"))
    assert collapse_key(a) != collapse_key(b)
    assert "bob" not in collapse_key(a)
