"""Rate-limit headers, retry hints, the error classifier and redaction."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from app.core.event import Failure
from app.providers import ProviderError, RateWindow, classify_error, parse_rate_limits
from app.providers.errors import MAX_MESSAGE_CHARS, redact
from app.providers.ratelimits import parse_duration, parse_retry_after

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20ms", 0.02),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("1s", 1.0),
        ("0.5", 0.5),
        ("17", 17.0),
        ("250us", 0.00025),
        ("", None),
        ("soon", None),
        ("5m later", None),
    ],
)
def test_openai_reset_durations(text: str, seconds: float | None) -> None:
    got = parse_duration(text)
    assert got == pytest.approx(seconds) if seconds is not None else got is None


def test_openai_rate_limit_headers() -> None:
    headers = httpx.Headers(
        {
            "X-RateLimit-Limit-Requests": "10000",
            "x-ratelimit-remaining-requests": "9999",
            "x-ratelimit-reset-requests": "6ms",
            "x-ratelimit-limit-tokens": "2000000",
            "x-ratelimit-remaining-tokens": "1999000",
            "x-ratelimit-reset-tokens": "1m30s",
            "content-type": "application/json",
        }
    )
    info = parse_rate_limits(headers, now=NOW)
    assert info is not None
    assert info.requests == RateWindow(10000, 9999, pytest.approx(0.006))
    assert info.tokens == RateWindow(2_000_000, 1_999_000, 90.0)
    assert info.input_tokens is None and info.retry_after_s is None


def test_anthropic_rate_limit_headers_reset_as_times() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2026-01-02T03:04:35Z",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "39000",
        "anthropic-ratelimit-input-tokens-reset": "2026-01-02T03:04:05.500+00:00",
        "anthropic-ratelimit-output-tokens-remaining": "8000",
        "anthropic-ratelimit-tokens-reset": "2026-01-02T03:00:00Z",  # in the past: 0, not negative
        "retry-after": "30",
    }
    info = parse_rate_limits(headers, now=NOW)
    assert info is not None
    assert info.requests == RateWindow(50, 0, 30.0)
    assert info.input_tokens == RateWindow(40000, 39000, 0.5)
    assert info.output_tokens == RateWindow(None, 8000, None)
    assert info.tokens == RateWindow(None, None, 0.0)
    assert info.retry_after_s == 30.0


def test_no_rate_limit_headers_means_none() -> None:
    assert parse_rate_limits({"content-type": "text/event-stream", "x-request-id": "r"}) is None


@pytest.mark.parametrize(
    ("ms", "plain", "seconds"),
    [
        ("1500", "9", 1.5),  # retry-after-ms wins
        (None, "9", 9.0),
        (None, "0.25", 0.25),
        ("junk", "4", 4.0),
        (None, format_datetime(datetime(2026, 1, 2, 3, 4, 25, tzinfo=UTC), usegmt=True), 20.0),
        (None, format_datetime(datetime(2025, 1, 1, tzinfo=UTC), usegmt=True), 0.0),
        (None, "-5", 0.0),
        (None, "whenever", None),
        (None, None, None),
    ],
)
def test_retry_after_forms(ms: str | None, plain: str | None, seconds: float | None) -> None:
    assert parse_retry_after(ms, plain, NOW) == seconds


@pytest.mark.parametrize(
    ("status", "error_type", "code", "failure"),
    [
        (429, "requests", "rate_limit_exceeded", Failure.RATE_LIMITED),
        (429, "insufficient_quota", "insufficient_quota", Failure.CLIENT_ERROR),
        (None, "insufficient_quota", None, Failure.CLIENT_ERROR),
        (529, "overloaded_error", None, Failure.OVERLOADED),
        (503, None, None, Failure.OVERLOADED),
        (504, "timeout_error", None, Failure.SERVER_ERROR),
        (500, "api_error", None, Failure.SERVER_ERROR),
        (413, "request_too_large", None, Failure.CLIENT_ERROR),
        (408, None, None, Failure.TIMEOUT),
        (400, "invalid_request_error", "context_length_exceeded", Failure.CLIENT_ERROR),
        (None, "overloaded_error", None, Failure.OVERLOADED),
        (None, "rate_limit_error", None, Failure.RATE_LIMITED),
        (None, "authentication_error", None, Failure.CLIENT_ERROR),
        (None, "BadRequestError", 400, Failure.CLIENT_ERROR),
        (None, "InternalServerError", 500, Failure.SERVER_ERROR),
        (None, "brand_new_error", None, Failure.SERVER_ERROR),
        (None, None, None, Failure.SERVER_ERROR),
    ],
)
def test_classify_error(status: int | None, error_type: str | None, code: object, failure: Failure) -> None:
    assert classify_error(status, error_type, code) is failure


def test_insufficient_quota_is_not_retried_and_does_not_trip_a_breaker() -> None:
    err = ProviderError(
        classify_error(429, "insufficient_quota", "insufficient_quota"), "out of credit", status_code=429
    )
    assert not err.retryable and not err.failure.counts_for_breaker


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-abcdefghijklmnop1234",
        "sk-ant-api03-AbCdEf123456_-xyz",
        "sk-ant-admin01-AbCdEf123456",
        "sk-1234567890abcdef",
    ],
)
def test_key_shapes_are_redacted_even_when_unknown(secret: str) -> None:
    text = redact(f"Incorrect API key provided: {secret}. Check it.")
    assert secret not in text and "***" in text and "Check it." in text


def test_known_secrets_auth_headers_and_long_messages() -> None:
    assert redact("token=plainsecret123", ("plainsecret123",)) == "token=***"
    assert redact("Authorization: Bearer abc.def-123456") == "Authorization: ***"
    assert redact('{"x-api-key": "qwertyuiop"}') == '{"***"}'
    long = redact("x" * 5000)
    assert len(long) == MAX_MESSAGE_CHARS and long.endswith("\u2026")


def test_provider_error_redacts_its_own_message() -> None:
    err = ProviderError(
        Failure.CLIENT_ERROR, "bad key sk-proj-abcdefghijkl0000", provider="p", status_code=401
    )
    assert "abcdefghijkl" not in str(err) and "abcdefghijkl" not in repr(err)
    assert str(err) == "p: client_error (HTTP 401): bad key ***"
