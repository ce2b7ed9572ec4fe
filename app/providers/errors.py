"""Provider failures, classified into the taxonomy of semantics.md section 2.

Every way a provider call can go wrong ends as one :class:`ProviderError`
whose ``failure`` the gateway acts on (retry, breaker, fallback).  Decisions
taken here, and why:

- OpenAI's ``insufficient_quota`` arrives as HTTP 429 but waiting does not
  help (the account is out of credit), so it is ``client_error``: never
  retried, never trips a breaker, and the gateway moves on to the next target.
  ``error_type``/``error_code`` keep the provider's words so the UI can say so.
- A 200 whose body is not what the API promises (wrong content type, invalid
  JSON, missing fields) is ``server_error`` with ``error_type`` set to
  ``invalid_response`` (or ``invalid_stream`` for a stream event that is not
  valid JSON): the provider or a proxy in front of it misbehaved, and a retry
  or another target may well succeed.
- A stream that stops before its terminator (``[DONE]``/``message_stop``) or in
  the middle of an event is ``connection_error`` with ``error_type``
  ``stream_truncated``; what was received so far rides along in ``partial``
  so a billed failure is never costed at zero.
- An error event inside a 200 stream has no status: it is classified by its
  type (``overloaded_error`` -> overloaded, rate-limit types -> rate_limited,
  invalid-request types -> client_error, anything else -> server_error).

Messages are redacted: API keys never appear in ``str()`` or ``repr()``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from app.core.event import Failure, classify_status

if TYPE_CHECKING:
    from app.providers.base import ChatResult
    from app.providers.ratelimits import RateLimitInfo

#: Longest provider message we carry; bodies can be whole HTML pages.
MAX_MESSAGE_CHARS = 500

# Error types and codes seen in bodies, for when there is no HTTP status to go by
# (an error event inside a 200 stream, or an error object in a 200 body).
_TYPE_FAILURE: dict[str, Failure] = {
    "rate_limit_error": Failure.RATE_LIMITED,
    "rate_limit_exceeded": Failure.RATE_LIMITED,
    "overloaded_error": Failure.OVERLOADED,
    "overloaded": Failure.OVERLOADED,
    "insufficient_quota": Failure.CLIENT_ERROR,
    "invalid_request_error": Failure.CLIENT_ERROR,
    "authentication_error": Failure.CLIENT_ERROR,
    "permission_error": Failure.CLIENT_ERROR,
    "not_found_error": Failure.CLIENT_ERROR,
    "request_too_large": Failure.CLIENT_ERROR,
    "invalid_api_key": Failure.CLIENT_ERROR,
    "model_not_found": Failure.CLIENT_ERROR,
    "context_length_exceeded": Failure.CLIENT_ERROR,
    "badrequesterror": Failure.CLIENT_ERROR,  # vLLM
    "api_error": Failure.SERVER_ERROR,
    "server_error": Failure.SERVER_ERROR,
    "internal_error": Failure.SERVER_ERROR,
    "timeout_error": Failure.SERVER_ERROR,  # Anthropic's 504: the provider's timeout, not our deadline
}

# Key shapes masked even when the adapter does not know the key (a provider
# echoing someone's key, a key pasted into a prompt that ends in an error).
_SECRET_PATTERNS = re.compile(
    r"(sk-(?:ant-)?(?:admin\d*-|api\d*-|proj-)?[A-Za-z0-9_\-]{6,}"
    r"|(?i:bearer|basic)\s+[A-Za-z0-9_\-\.=+/]{6,}"
    r"|(?i:x-api-key)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9_\-\.]{6,})"
)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with the given secrets and anything shaped like an API key masked, and cut to size."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "***")
    text = _SECRET_PATTERNS.sub("***", text)
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "\u2026"
    return text


def classify_error(status: int | None, error_type: Any = None, error_code: Any = None) -> Failure:
    """Map an HTTP status and/or the body's error type and code to the taxonomy."""
    et = str(error_type).lower() if error_type is not None else ""
    ec = str(error_code).lower() if error_code is not None else ""
    if et == "insufficient_quota" or ec == "insufficient_quota":
        return Failure.CLIENT_ERROR
    if status is not None and status >= 400:
        known = et if et in _TYPE_FAILURE else ec
        return classify_status(status, known or None)
    # No usable status: go by the words.  vLLM puts the HTTP status in ``code``.
    if isinstance(error_code, int) and not isinstance(error_code, bool) and 400 <= error_code < 600:
        return classify_status(error_code, et or None)
    return _TYPE_FAILURE.get(et) or _TYPE_FAILURE.get(ec) or Failure.SERVER_ERROR


class ProviderError(Exception):
    """A provider call that did not produce a usable answer.

    ``partial`` holds what a stream delivered before it broke (text, tool
    calls, usage when the provider had reported it): a billed failure.
    ``retry_after_s`` is the server's hint (``retry-after-ms`` first, then
    ``retry-after``).  ``should_retry`` is OpenAI's ``x-should-retry`` header
    when present.
    """

    def __init__(
        self,
        failure: Failure,
        message: str,
        *,
        provider: str | None = None,
        status_code: int | None = None,
        error_type: str | None = None,
        error_code: str | None = None,
        retry_after_s: float | None = None,
        rate_limits: RateLimitInfo | None = None,
        request_id: str | None = None,
        should_retry: bool | None = None,
        partial: ChatResult | None = None,
    ) -> None:
        self.failure = failure
        self.message = redact(message)
        self.provider = provider
        self.status_code = status_code
        self.error_type = error_type
        self.error_code = error_code
        self.retry_after_s = retry_after_s
        self.rate_limits = rate_limits
        self.request_id = request_id
        self.should_retry = should_retry
        self.partial = partial
        super().__init__(self.message)

    @property
    def retryable(self) -> bool:
        """Semantics 4, with the server's ``x-should-retry: false`` as a veto."""
        return self.failure.retryable and self.should_retry is not False

    def __str__(self) -> str:
        where = f"{self.provider}: " if self.provider else ""
        status = f" (HTTP {self.status_code})" if self.status_code is not None else ""
        return f"{where}{self.failure.value}{status}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"ProviderError(failure={self.failure.value!r}, status_code={self.status_code!r}, "
            f"error_type={self.error_type!r}, provider={self.provider!r}, message={self.message!r})"
        )
