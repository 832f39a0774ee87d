"""Exceptions: every failure the client raises is a :class:`TvmError`.

An error answer of the API is ``{"error": {"code": "...", "message": "..."}}`` with an
HTTP status; the exception carries all three (``code``, ``message``, ``status``), the
``Retry-After`` the server sent (seconds, or ``None``) and the response's
``x-request-id``. The class is chosen by the HTTP status.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Type

import httpx

__all__ = [
    "TvmError",
    "BadRequest",
    "Unauthorized",
    "NotFound",
    "Gone",
    "Conflict",
    "PayloadTooLarge",
    "RateLimited",
    "Unavailable",
    "ServerError",
    "TransportError",
    "StreamError",
    "error_from_response",
]


class TvmError(Exception):
    """Base class of every error the client raises.

    ``status`` is the HTTP status (``None`` when no answer came: see
    :class:`TransportError`); ``code`` is the API's stable error code, e.g.
    ``unknown_language`` or ``at_capacity``.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: Optional[int] = None,
        retry_after: Optional[float] = None,
        request_id: Optional[str] = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.retry_after = retry_after
        self.request_id = request_id
        self.body = body

    def __str__(self) -> str:
        where = f"HTTP {self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, "
            f"message={self.message!r})"
        )


class BadRequest(TvmError):
    """400: the request was refused before anything ran (unknown language, a limit out
    of range, bad base64, a path leaving the work dir, ...)."""


class Unauthorized(TvmError):
    """401: a missing or wrong bearer token."""


class NotFound(TvmError):
    """404: no such sandbox, execution or file (or another token's)."""


class Gone(NotFound):
    """410: the sandbox has ended (TTL, idle timeout, its VM died, shutdown)."""


class Conflict(TvmError):
    """409: the sandbox stayed busy with another request (``sandbox_busy``)."""


class PayloadTooLarge(TvmError):
    """413: the body, or a file, is larger than the server accepts."""


class RateLimited(TvmError):
    """429: at capacity, the queue timed out, or a cap was reached; ``retry_after``
    says when to come back. Retried by the client within its bounds."""


class Unavailable(TvmError):
    """503: not ready, shutting down, out of disk, or a VM failed to start. Retried by
    the client within its bounds."""


class ServerError(TvmError):
    """500 and other 5xx answers."""


class TransportError(TvmError):
    """No HTTP answer: the connection failed or timed out (never retried)."""


class StreamError(TvmError):
    """An event stream ended without its ``exit`` event, or sent one that could not
    be read."""


_BY_STATUS: Dict[int, Type[TvmError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    429: RateLimited,
    503: Unavailable,
}


def error_class(status: int) -> Type[TvmError]:
    """The exception class for an HTTP error status."""
    cls = _BY_STATUS.get(status)
    if cls is not None:
        return cls
    if status >= 500:
        return ServerError
    return TvmError


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or ``None``."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        secs = float(value)
    except ValueError:
        pass
    else:
        if secs != secs or secs < 0:  # NaN or negative
            return None
        return secs
    import email.utils
    from datetime import datetime, timezone

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:  # some Python versions return None instead of raising
        return None  # pragma: no cover
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def error_from_response(response: httpx.Response, body: Optional[bytes] = None) -> TvmError:
    """The exception for an error answer. ``body`` is the response's bytes when they
    have been read already (a streamed response)."""
    raw = response.content if body is None else body
    status = response.status_code
    code = f"http_{status}"
    message = ""
    parsed: Any = None
    try:
        parsed = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, ValueError):
        parsed = None
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, dict):
            if isinstance(err.get("code"), str):
                code = err["code"]
            if isinstance(err.get("message"), str):
                message = err["message"]
        elif isinstance(parsed.get("message"), str):
            message = parsed["message"]
    if not message:
        text = raw.decode("utf-8", errors="replace").strip()
        message = text[:500] if text else (response.reason_phrase or f"HTTP {status}")
    return error_class(status)(
        message,
        code=code,
        status=status,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        request_id=response.headers.get("x-request-id"),
        body=parsed,
    )
