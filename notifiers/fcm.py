"""Firebase Cloud Messaging (HTTP v1) through pyfcm.

pyfcm is synchronous and, left alone, retries 503s for minutes, sleeps on every
Retry-After and loops forever on 429. Retries belong to the dispatcher (durable,
bounded), so here every request is sent exactly once: `send_request` is overridden
to post once, through a lean libcurl session without retries (fcm_http.py says why
not requests). The HTTP call runs in a dedicated thread pool so the event loop never
blocks.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests
from pyfcm import FCMNotification
from pyfcm import errors as pyfcm_errors

from component.redact import shorten

from .base import Notification, Notifier, Outcome, SendResult
from .fcm_http import LeanResponse, LeanSession, TransportError

log = logging.getLogger(__name__)

# FCM v1 error codes → what to do.
# https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode
ERROR_CODE_OUTCOMES: dict[str, Outcome] = {
    "UNREGISTERED": Outcome.TARGET_INVALID,  # app uninstalled / token expired
    "SENDER_ID_MISMATCH": Outcome.TARGET_INVALID,  # token belongs to another project
    "INVALID_ARGUMENT": Outcome.FAILED,  # malformed message or token: will not improve
    "THIRD_PARTY_AUTH_ERROR": Outcome.FAILED,  # APNs/web push credentials rejected
    "QUOTA_EXCEEDED": Outcome.RETRY,  # "use exponential backoff", honour Retry-After
    "UNAVAILABLE": Outcome.RETRY,  # "overloaded": retry with backoff
    "INTERNAL": Outcome.RETRY,  # "unknown internal error": retry with backoff
}

# When the body carries no errorCode, pyfcm's exception (i.e. the HTTP status) decides.
# https://firebase.google.com/docs/cloud-messaging/send/v1-api#handling_errors
EXCEPTION_OUTCOMES: dict[type[Exception], Outcome] = {
    pyfcm_errors.FCMNotRegisteredError: Outcome.TARGET_INVALID,  # 404
    pyfcm_errors.FCMSenderIdMismatchError: Outcome.TARGET_INVALID,  # 403
    pyfcm_errors.InvalidDataError: Outcome.FAILED,  # 400
    pyfcm_errors.AuthenticationError: Outcome.RETRY,  # 401: credentials may be fixed
    pyfcm_errors.FCMServerError: Outcome.RETRY,  # 429 / 5xx / empty answer
}

# Transport problems: the request may or may not have reached FCM; a duplicate push
# is better than none (data messages with a collapse key replace each other).
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    TransportError,  # libcurl: refused, reset, timed out, TLS, proxy
    requests.ConnectionError,  # google-auth's token request goes through requests
    requests.Timeout,
)


@dataclass(frozen=True)
class FcmAnswer:
    """What FCM said, beyond what pyfcm's exception types carry."""

    status: int
    error_code: str | None
    retry_after: float | None


class _SingleShotFCM(FCMNotification):
    """pyfcm with its hidden retry loops removed; remembers the last HTTP answer."""

    # pyfcm refreshes the bearer header this often (its own choice); tokens live 1 h.
    TOKEN_REFRESH_SECONDS = 1800

    def __init__(self, *args: Any, endpoint: str | None, pool_size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if endpoint:
            self.FCM_END_POINT_BASE = f"{endpoint}/v1/projects"
        self.last_answer = threading.local()
        self._pool_size = pool_size
        self._session: LeanSession | None = None
        self._token_expiry = 0.0
        self._token_lock = threading.Lock()
        self._session_lock = threading.Lock()

    def _get_access_token(self) -> str:
        # pyfcm refreshes one shared credentials object from every worker thread at
        # once; unsynchronised, a thread can read the token while another resets it.
        with self._token_lock:
            token: str | None = super()._get_access_token()
        if not token:
            raise pyfcm_errors.AuthenticationError("no access token after refresh")
        return token

    @property
    def requests_session(self) -> LeanSession:  # type: ignore[override]
        with self._session_lock:
            if self._session is None:
                self._session = LeanSession(self.fcm_end_point, self._pool_size)
            now = time.time()
            if self._token_expiry < now:
                # A new dict, swapped in whole: other threads never see a half update.
                self._session.headers = self.request_headers()
                self._token_expiry = now + self.TOKEN_REFRESH_SECONDS
            return self._session

    def send_request(self, payload: Any = None, timeout: Any = None) -> LeanResponse:
        response = self.requests_session.post(self.fcm_end_point, data=payload, timeout=timeout)
        if self._is_access_token_expired(response):
            # The cached OAuth token expired early: refresh once, then accept the answer.
            self._token_expiry = 0.0
            response = self.requests_session.post(self.fcm_end_point, data=payload, timeout=timeout)
        self.last_answer.value = _read_answer(response)
        return response

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


def _read_answer(response: LeanResponse) -> FcmAnswer:
    error_code = None
    if response.status_code != 200:
        try:
            error = response.json().get("error", {})
            for detail in error.get("details", []):
                error_code = detail.get("errorCode") or error_code
            error_code = error_code or error.get("status")
        except (ValueError, AttributeError):
            pass
    return FcmAnswer(response.status_code, error_code, _retry_after(response))


def _retry_after(response: LeanResponse) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        # An HTTP-date is allowed too; parse it rather than ignore the server's wish.
        from email.utils import parsedate_to_datetime

        try:
            import datetime as dt

            when = parsedate_to_datetime(value)
            return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())
        except (TypeError, ValueError):
            return None


def classify(exc: Exception, answer: FcmAnswer | None) -> SendResult:
    """Map a failed send to an outcome: the FCM error code first, the HTTP status next."""
    retry_after = answer.retry_after if answer else None
    if isinstance(exc, TRANSPORT_ERRORS):
        return SendResult.retry(f"transport: {type(exc).__name__}")
    if answer is None:
        # No answer from the send endpoint: pyfcm failed before it, while obtaining an
        # OAuth token (it wraps that in InvalidDataError). Credentials or the token
        # endpoint can recover; the message itself was never judged.
        return SendResult.retry(f"could not obtain an access token ({type(exc).__name__})")
    code = answer.error_code if answer else None
    status = f"HTTP {answer.status}" if answer else "no answer"
    if code in ERROR_CODE_OUTCOMES:
        outcome = ERROR_CODE_OUTCOMES[code]
        reason = f"{code} ({status})"
    else:
        outcome = next(
            (o for t, o in EXCEPTION_OUTCOMES.items() if isinstance(exc, t)), Outcome.FAILED
        )
        reason = f"{type(exc).__name__} ({status})"
    return SendResult(outcome, reason, retry_after if outcome is Outcome.RETRY else None)


class FcmNotifier(Notifier):
    kind = "fcm"

    def __init__(self, name: str, client: _SingleShotFCM, timeout: float, workers: int) -> None:
        super().__init__(name)
        self._client = client
        self._timeout = timeout
        self.max_concurrent = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"fcm-{name}")

    @classmethod
    async def create(cls, name: str, config: Any) -> FcmNotifier:
        client = _SingleShotFCM(
            service_account_file=str(config.service_account_file),
            project_id=config.project_id,
            endpoint=config.endpoint,
            pool_size=config.concurrency,
        )
        return cls(name, client, config.timeout, config.concurrency)

    @staticmethod
    def build_data(notification: Notification) -> dict[str, str]:
        """FCM data messages carry string values only."""
        data = {
            # Stable across retries: the app can drop a duplicate after a crash.
            "notification_id": str(notification.outbox_id),
            "account": notification.account,
            "message_count": str(notification.message_count),
        }
        if notification.sender is not None:
            # The conversation names the other party: only when the sender may be shown.
            data["conversation"] = notification.conversation
        if notification.unread_count is not None:
            data["unread_count"] = str(notification.unread_count)
        if notification.sender is not None:
            data["sender"] = notification.sender
        if notification.body is not None:
            data["body"] = notification.body
        for key, value in notification.extra.items():  # e.g. send-test's marker
            data.setdefault(key, str(value))
        return data

    def _send_blocking(self, notification: Notification) -> SendResult:
        self._client.last_answer.value = None
        collapse = collapse_key(notification)
        try:
            self._client.notify(
                fcm_token=notification.target,
                data_payload=self.build_data(notification),
                android_config={
                    "priority": "high",
                    # One notification per conversation on the device, newest wins.
                    "collapse_key": collapse,
                },
                apns_config={
                    "headers": {"apns-priority": "10", "apns-collapse-id": collapse},
                },
                timeout=self._timeout,
            )
        except (pyfcm_errors.FCMError, *TRANSPORT_ERRORS) as exc:
            return classify(exc, getattr(self._client.last_answer, "value", None))
        except Exception as exc:  # a bug or an unexpected library error: keep the row
            log.exception("FCM send for outbox %s raised unexpectedly", notification.outbox_id)
            return SendResult.retry(f"unexpected {type(exc).__name__}")
        return SendResult.delivered()

    async def send(self, notification: Notification) -> SendResult:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._pool, self._send_blocking, notification)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "fcm outbox=%s token=%s → %s %s",
                notification.outbox_id,
                shorten(notification.target),
                result.outcome,
                result.reason,
            )
        return result

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()


def collapse_key(notification: Notification) -> str:
    # Collapse keys are visible to Google and the device OS: hash the conversation.
    return "c" + hashlib.sha256(notification.conversation.encode()).hexdigest()[:16]
