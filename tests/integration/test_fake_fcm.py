"""The local FCM stand-in speaks enough of the real protocol for google-auth and pyfcm."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from google.auth import exceptions as google_exceptions
from google.auth.transport.requests import Request as GoogleRequest
from google.oauth2 import service_account
from pyfcm import FCMNotification
from pyfcm import errors as pyfcm_errors
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from tests.support.fake_fcm import (
    FCM_ERROR_TYPE,
    FCM_SCOPE,
    FakeFcm,
    FcmReply,
    pyfcm_client,
)


def configured_like_ofnotify(fake: FakeFcm) -> FCMNotification:
    fcm = FCMNotification(
        service_account_file=str(fake.service_account_path),
        project_id="test-project",
        adapter=HTTPAdapter(max_retries=Retry(total=0)),
    )
    fcm.FCM_END_POINT_BASE = fake.base_url + "/v1/projects"
    return fcm


def access_token(fake: FakeFcm) -> str:
    creds = service_account.Credentials.from_service_account_file(
        str(fake.service_account_path), scopes=[FCM_SCOPE]
    )
    creds.refresh(GoogleRequest())
    assert isinstance(creds.token, str)
    return creds.token


def post_send(
    fake: FakeFcm, body: dict[str, Any], token: str, project: str | None = None
) -> requests.Response:
    return requests.post(
        fake.send_url(project), json=body, headers={"Authorization": f"Bearer {token}"}, timeout=5
    )


def fcm_error(response: requests.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert isinstance(error, dict)
    return error


# --------------------------------------------------------------------------- auth


def test_pyfcm_gets_a_token_and_notify_reaches_the_fake(fake_fcm: FakeFcm) -> None:
    fcm = configured_like_ofnotify(fake_fcm)

    result = fcm.notify(fcm_token="tok", data_payload={"a": "b"})

    assert result["name"].startswith("projects/test-project/messages/0:")
    [grant] = fake_fcm.token_grants
    assert FCM_SCOPE in grant.scopes
    assert grant.client_email.endswith("@test-project.iam.gserviceaccount.com")
    [request] = fake_fcm.requests
    assert request.project == "test-project"
    assert request.token == "tok"
    assert request.message == {"token": "tok", "data": {"a": "b"}}
    assert request.status == 200
    assert request.name == result["name"]
    assert request.access_token == grant.access_token
    assert fake_fcm.delivered == [request]


def test_service_account_file_is_what_google_auth_expects(fake_fcm: FakeFcm) -> None:
    assert fake_fcm.service_account_path is not None
    info = json.loads(fake_fcm.service_account_path.read_text())
    assert info["type"] == "service_account"
    assert info["project_id"] == "test-project"
    assert info["token_uri"] == fake_fcm.token_uri == fake_fcm.base_url + "/token"
    assert info["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert {"private_key_id", "client_email", "client_id"} <= info.keys()
    assert fake_fcm.service_account_path.stat().st_mode & 0o077 == 0

    token = access_token(fake_fcm)

    assert token.startswith("ya29.")
    assert post_send(fake_fcm, {"message": {"token": "t"}}, token).status_code == 200


def test_every_message_id_is_unique(fake_fcm: FakeFcm) -> None:
    fcm = pyfcm_client(fake_fcm)
    names = {fcm.notify(fcm_token=f"t{i}", data_payload={"i": str(i)})["name"] for i in range(20)}
    assert len(names) == 20
    assert len(fake_fcm.token_grants) == 1  # pyfcm caches the header per thread


def test_unknown_or_missing_bearer_is_401(fake_fcm: FakeFcm) -> None:
    body = {"message": {"token": "t"}}

    response = post_send(fake_fcm, body, "not-a-token")
    missing = requests.post(fake_fcm.send_url(), json=body, timeout=5)

    assert response.status_code == 401
    assert fcm_error(response) == {
        "code": 401,
        "message": fcm_error(response)["message"],
        "status": "UNAUTHENTICATED",
    }
    assert missing.status_code == 401
    assert fcm_error(missing)["status"] == "UNAUTHENTICATED"
    assert [r.status for r in fake_fcm.requests] == [401, 401]


def test_revoked_token_makes_pyfcm_raise_authentication_error(fake_fcm: FakeFcm) -> None:
    fcm = pyfcm_client(fake_fcm)
    fcm.notify(fcm_token="t", data_payload={"a": "b"})
    fake_fcm.revoke_access_tokens()

    # pyfcm keeps the Authorization header for 30 minutes whatever expires_in says.
    with pytest.raises(pyfcm_errors.AuthenticationError):
        fcm.notify(fcm_token="t", data_payload={"a": "b"})


def test_expired_token_is_refreshed_by_pyfcm(fake_fcm: FakeFcm) -> None:
    fcm = pyfcm_client(fake_fcm)
    fcm.notify(fcm_token="t", data_payload={"a": "b"})
    fake_fcm.expire_access_tokens()

    result = fcm.notify(fcm_token="t", data_payload={"a": "b"})

    assert result["name"]
    assert [r.status for r in fake_fcm.requests] == [200, 401, 200]
    assert len(fake_fcm.token_grants) == 2
    assert fake_fcm.requests[1].access_token != fake_fcm.requests[2].access_token


def test_token_endpoint_rejects_bad_grants(fake_fcm: FakeFcm) -> None:
    garbage = requests.post(
        fake_fcm.token_uri,
        data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "a.b.c"},
        timeout=5,
    )
    wrong_grant = requests.post(
        fake_fcm.token_uri, data={"grant_type": "password", "assertion": "x"}, timeout=5
    )

    assert garbage.status_code == 400
    assert garbage.json()["error"] == "invalid_grant"
    assert wrong_grant.status_code == 400
    assert wrong_grant.json()["error"] == "unsupported_grant_type"


def test_unknown_service_account_key_is_invalid_grant(fake_fcm: FakeFcm, tmp_path: Path) -> None:
    rogue = fake_fcm.write_service_account(tmp_path / "rogue.json", trusted=False)
    creds = service_account.Credentials.from_service_account_file(str(rogue), scopes=[FCM_SCOPE])

    with pytest.raises(google_exceptions.RefreshError, match="invalid_grant"):
        creds.refresh(GoogleRequest())
    # pyfcm reports any token failure as InvalidDataError, not AuthenticationError.
    with pytest.raises(pyfcm_errors.InvalidDataError, match="invalid_grant"):
        pyfcm_client(fake_fcm, rogue).notify(fcm_token="t", data_payload={"a": "b"})
    assert fake_fcm.requests == []


def test_token_without_fcm_scope_is_403(fake_fcm: FakeFcm) -> None:
    creds = service_account.Credentials.from_service_account_file(
        str(fake_fcm.service_account_path),
        scopes=["https://www.googleapis.com/auth/userinfo.email"],
    )
    creds.refresh(GoogleRequest())

    response = post_send(fake_fcm, {"message": {"token": "t"}}, creds.token)

    assert response.status_code == 403
    assert fcm_error(response)["details"][0]["reason"] == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"


# --------------------------------------------------------------------------- errors

ERROR_CASES: list[tuple[Callable[[], FcmReply], int, str, str, type[Exception]]] = [
    (FcmReply.unregistered, 404, "NOT_FOUND", "UNREGISTERED", pyfcm_errors.FCMNotRegisteredError),
    (
        FcmReply.invalid_argument,
        400,
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        pyfcm_errors.InvalidDataError,
    ),
    (
        FcmReply.sender_id_mismatch,
        403,
        "PERMISSION_DENIED",
        "SENDER_ID_MISMATCH",
        pyfcm_errors.FCMSenderIdMismatchError,
    ),
    (FcmReply.internal, 500, "INTERNAL", "INTERNAL", pyfcm_errors.FCMServerError),
    (FcmReply.unavailable, 503, "UNAVAILABLE", "UNAVAILABLE", pyfcm_errors.FCMServerError),
    (
        FcmReply.third_party_auth_error,
        401,
        "UNAUTHENTICATED",
        "THIRD_PARTY_AUTH_ERROR",
        pyfcm_errors.AuthenticationError,
    ),
]


@pytest.mark.parametrize(
    ("make_reply", "http_status", "grpc_status", "error_code", "exception"),
    ERROR_CASES,
    ids=[case[3] for case in ERROR_CASES],
)
def test_scripted_error_reaches_pyfcm_as_its_exception(
    fake_fcm: FakeFcm,
    make_reply: Callable[[], FcmReply],
    http_status: int,
    grpc_status: str,
    error_code: str,
    exception: type[Exception],
) -> None:
    fake_fcm.always("tok", make_reply())
    fcm = configured_like_ofnotify(fake_fcm)

    with pytest.raises(exception):
        fcm.notify(fcm_token="tok", data_payload={"a": "b"})
    response = post_send(fake_fcm, {"message": {"token": "tok"}}, access_token(fake_fcm))

    assert response.status_code == http_status
    assert response.headers["Content-Type"].startswith("application/json")
    assert "Retry-After" not in response.headers
    error = fcm_error(response)
    assert error["code"] == http_status
    assert error["status"] == grpc_status
    assert error["message"]
    assert error["details"][0] == {"@type": FCM_ERROR_TYPE, "errorCode": error_code}
    assert [(r.status, r.error_code) for r in fake_fcm.requests] == [
        (http_status, error_code),
        (http_status, error_code),
    ]


def test_quota_exceeded_answers_429_with_retry_after(fake_fcm: FakeFcm) -> None:
    fake_fcm.script("tok", [FcmReply.quota_exceeded(retry_after=2)])

    response = post_send(fake_fcm, {"message": {"token": "tok"}}, access_token(fake_fcm))

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    error = fcm_error(response)
    assert error["code"] == 429
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert error["details"][0] == {"@type": FCM_ERROR_TYPE, "errorCode": "QUOTA_EXCEEDED"}


def test_single_shot_pyfcm_does_not_loop_on_retry_after(fake_fcm: FakeFcm) -> None:
    # Stock pyfcm would sleep 30 s and re-post for ever here.
    fake_fcm.always("tok", FcmReply.quota_exceeded(retry_after=30))
    fcm = pyfcm_client(fake_fcm, single_shot=True)

    started = time.monotonic()
    with pytest.raises(pyfcm_errors.FCMServerError):
        fcm.notify(fcm_token="tok", data_payload={"a": "b"})

    assert time.monotonic() - started < 5
    assert len(fake_fcm.requests) == 1


def test_retry_after_is_optional_and_may_be_an_http_date(fake_fcm: FakeFcm) -> None:
    date = "Wed, 21 Oct 2037 07:28:00 GMT"
    fake_fcm.script(
        "tok",
        [
            FcmReply.unavailable(),
            FcmReply.unavailable(retry_after=7),
            FcmReply.quota_exceeded(retry_after=date),
        ],
    )
    token = access_token(fake_fcm)

    answers = [post_send(fake_fcm, {"message": {"token": "tok"}}, token) for _ in range(3)]

    assert [a.status_code for a in answers] == [503, 503, 429]
    assert [a.headers.get("Retry-After") for a in answers] == [None, "7", date]


def test_script_then_always_then_default(fake_fcm: FakeFcm) -> None:
    fcm = pyfcm_client(fake_fcm, single_shot=True)

    def outcome(token: str) -> str:
        try:
            fcm.notify(fcm_token=token, data_payload={"a": "b"})
        except pyfcm_errors.FCMError as exc:
            return type(exc).__name__
        return "ok"

    fake_fcm.script("tok", [FcmReply.unregistered(), FcmReply.unavailable(), FcmReply.ok()])
    assert [outcome("tok") for _ in range(4)] == [
        "FCMNotRegisteredError",
        "FCMServerError",
        "ok",
        "ok",
    ]
    assert fake_fcm.pending_scripts() == {}

    fake_fcm.always("dead", FcmReply.unregistered())
    fake_fcm.script("dead", [FcmReply.ok()])  # a script takes precedence over the rule
    assert [outcome("dead") for _ in range(3)] == [
        "ok",
        "FCMNotRegisteredError",
        "FCMNotRegisteredError",
    ]
    fake_fcm.always("dead", None)
    assert outcome("dead") == "ok"

    fake_fcm.default = FcmReply.internal()
    assert outcome("anyone") == "FCMServerError"
    fake_fcm.reset()
    assert outcome("anyone") == "ok"
    assert len(fake_fcm.requests) == 1


def test_empty_200_is_an_fcm_server_error_for_pyfcm(fake_fcm: FakeFcm) -> None:
    fake_fcm.script("tok", [FcmReply.raw(200, b"")])

    with pytest.raises(pyfcm_errors.FCMServerError, match="empty"):
        pyfcm_client(fake_fcm).notify(fcm_token="tok", data_payload={"a": "b"})


def test_dry_run_gets_the_fake_message_id(fake_fcm: FakeFcm) -> None:
    result = pyfcm_client(fake_fcm).notify(fcm_token="tok", data_payload={"a": "b"}, dry_run=True)

    assert result == {"name": "projects/test-project/messages/fake_message_id"}
    [request] = fake_fcm.requests
    assert request.validate_only is True
    assert fake_fcm.delivered == []


def test_fcm_validation_rules_are_enforced(fake_fcm: FakeFcm) -> None:
    token = access_token(fake_fcm)

    int_value = post_send(fake_fcm, {"message": {"token": "t", "data": {"n": 1}}}, token)
    no_target = post_send(fake_fcm, {"message": {"data": {"n": "1"}}}, token)
    two_targets = post_send(fake_fcm, {"message": {"token": "t", "topic": "news"}}, token)
    unknown_field = post_send(fake_fcm, {"message": {"token": "t"}, "dry_run": True}, token)
    other_project = post_send(fake_fcm, {"message": {"token": "t"}}, token, project="elsewhere")
    topic = post_send(fake_fcm, {"message": {"topic": "news"}}, token)

    for response in (int_value, no_target, two_targets, unknown_field):
        assert response.status_code == 400
        assert fcm_error(response)["status"] == "INVALID_ARGUMENT"
    assert other_project.status_code == 403
    assert fcm_error(other_project)["status"] == "PERMISSION_DENIED"
    assert topic.status_code == 200
    assert fake_fcm.requests[-1].token is None
    with pytest.raises(pyfcm_errors.InvalidDataError):
        pyfcm_client(fake_fcm).notify(fcm_token="t", data_payload={"n": 1})


def test_lenient_mode_accepts_what_fcm_would_reject(tmp_path: Path) -> None:
    with FakeFcm(strict=False) as fake:
        fake.write_service_account(tmp_path / "sa.json")
        result = pyfcm_client(fake).notify(fcm_token="t", data_payload={"n": 1})

    assert result["name"]


# --------------------------------------------------------------------------- timing


def test_delay_slows_the_answer_and_trips_client_timeouts(fake_fcm: FakeFcm) -> None:
    fake_fcm.script("slow", [FcmReply.ok(delay=0.3), FcmReply.unavailable().with_delay(1.0)])
    fcm = pyfcm_client(fake_fcm)

    started = time.monotonic()
    fcm.notify(fcm_token="slow", data_payload={"a": "b"})
    elapsed = time.monotonic() - started
    # pyfcm does not wrap transport errors: callers see requests' own exceptions.
    with pytest.raises(requests.exceptions.ReadTimeout):
        fcm.notify(fcm_token="slow", data_payload={"a": "b"}, timeout=0.2)

    assert 0.3 <= elapsed < 2
    assert [r.status for r in fake_fcm.requests] == [200, 503]


async def test_wait_for_requests_from_async_code(fake_fcm: FakeFcm) -> None:
    fcm = pyfcm_client(fake_fcm)

    def send_later() -> None:
        time.sleep(0.1)
        for i in range(3):
            fcm.notify(fcm_token=f"t{i}", data_payload={"a": "b"})

    sender = asyncio.create_task(asyncio.to_thread(send_later))
    requests_seen = await fake_fcm.wait_for_requests(3, timeout=5)
    await sender

    assert [r.token for r in requests_seen] == ["t0", "t1", "t2"]
    with pytest.raises(TimeoutError, match="3 of 4"):
        await fake_fcm.wait_for_requests(4, timeout=0.2)


def test_wait_for_requests_sync(fake_fcm: FakeFcm) -> None:
    fcm = pyfcm_client(fake_fcm)
    sender = threading.Timer(0.1, lambda: fcm.notify(fcm_token="t", data_payload={"a": "b"}))
    sender.start()

    [request] = fake_fcm.wait_for_requests_sync(1, timeout=5)
    sender.join()

    assert request.token == "t"
    assert fake_fcm.requests[0].received_at <= time.monotonic()
    with pytest.raises(TimeoutError):
        fake_fcm.wait_for_requests_sync(2, timeout=0.1)


def test_concurrent_keep_alive_clients(fake_fcm: FakeFcm) -> None:
    token = access_token(fake_fcm)
    threads, per_thread = 4, 250
    errors: list[BaseException] = []

    def client(index: int) -> None:
        session = requests.Session()
        session.trust_env = False  # proxy lookups in os.environ would dominate the cost
        session.headers["Authorization"] = f"Bearer {token}"
        try:
            for i in range(per_thread):
                body = {"message": {"token": f"c{index}-{i}", "data": {"i": str(i)}}}
                response = session.post(fake_fcm.send_url(), json=body, timeout=5)
                assert response.status_code == 200
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    connections_before = fake_fcm.connections_opened
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    rate = threads * per_thread / (time.perf_counter() - started)

    assert errors == []
    recorded = fake_fcm.requests
    assert len(recorded) == threads * per_thread
    assert len({r.name for r in recorded}) == threads * per_thread
    # HTTP/1.1 keep-alive: one connection per client thread, not one per request.
    assert fake_fcm.connections_opened - connections_before == threads
    print(f"fake FCM: {rate:.0f} requests/s with {threads} in-process requests clients")


def test_stop_is_idempotent_and_start_reuses_the_port(fake_fcm: FakeFcm) -> None:
    fcm = pyfcm_client(fake_fcm)
    fcm.notify(fcm_token="t", data_payload={"a": "b"})
    port = fake_fcm.port

    fake_fcm.stop()
    fake_fcm.stop()
    assert not fake_fcm.running
    with pytest.raises(requests.exceptions.ConnectionError):
        fcm.notify(fcm_token="t", data_payload={"a": "b"})

    fake_fcm.start()
    assert fake_fcm.port == port
    assert fcm.notify(fcm_token="t", data_payload={"a": "b"})["name"]
