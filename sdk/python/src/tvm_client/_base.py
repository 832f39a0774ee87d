"""What the sync and async clients share: settings, request bodies, paths, the retry
rule, and reading answers. No I/O here."""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union
from urllib.parse import quote

import httpx

from ._errors import StreamError, TransportError, TvmError
from ._sse import ServerSentEvent
from ._types import ExecuteResult, StreamEvent

__version__ = "0.1.0"

DEFAULT_SERVER = "http://127.0.0.1:8080"
#: Seconds to wait for the server: an execution can wait in the queue (30 s), compile
#: (60 s) and run (60 s) before the answer starts, so the default is generous.
DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_RETRIES = 3
#: The most the client sleeps for retries of one call, in seconds, in total.
DEFAULT_MAX_RETRY_WAIT = 60.0
#: Only these are retried: at capacity (429) and not ready / recovering (503). The
#: server refuses both before it runs anything.
RETRY_STATUSES = frozenset({429, 503})

FileContent = Union[bytes, bytearray, memoryview, str]
Files = Mapping[str, FileContent]
Network = Union[Mapping[str, Any], Sequence[str]]


def resolve_base_url(base_url: Optional[str]) -> str:
    url = base_url or os.environ.get("TVM_SERVER") or DEFAULT_SERVER
    return url.rstrip("/")


def resolve_token(token: Optional[str]) -> Optional[str]:
    t = token if token is not None else os.environ.get("TVM_TOKEN")
    return t or None


def default_headers(token: Optional[str]) -> Dict[str, str]:
    h = {"user-agent": f"tvm-client-python/{__version__}", "accept": "application/json"}
    if token:
        h["authorization"] = f"Bearer {token}"
    return h


def make_timeout(timeout: Union[float, httpx.Timeout, None]) -> httpx.Timeout:
    if isinstance(timeout, httpx.Timeout):
        return timeout
    if timeout is None:
        return httpx.Timeout(None, connect=30.0)
    return httpx.Timeout(timeout, connect=min(timeout, 30.0))


def wait_timeout(current: httpx.Timeout, timeout_ms: Optional[int]) -> httpx.Timeout:
    """The timeout of a long poll (``get(wait=True)``): the read timeout is raised to
    outlast the server's hold (``timeout_ms``, else its 60 s default) if it is shorter."""
    need = (timeout_ms if timeout_ms is not None else 60_000) / 1000 + 15
    if current.read is None or current.read >= need:
        return current
    return httpx.Timeout(connect=current.connect, read=need, write=current.write, pool=current.pool)


def backoff(retry: int) -> float:
    """Delay before retry number ``retry`` (0-based) when no ``Retry-After`` came."""
    return float(min(0.5 * (2**retry), 8.0))


class RetryBudget:
    """Bounds the retries of one call: at most ``max_retries`` of them, sleeping at
    most ``max_wait`` seconds in total. A ``Retry-After`` is honoured, never shortened:
    if it does not fit in what is left of the budget, the call gives up at once."""

    def __init__(self, max_retries: int, max_wait: float) -> None:
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.retries = 0
        self.waited = 0.0

    def next_delay(self, status: int, retry_after: Optional[float]) -> Optional[float]:
        """Seconds to sleep before the next try, or ``None``: do not retry."""
        if status not in RETRY_STATUSES or self.retries >= self.max_retries:
            return None
        delay = retry_after if retry_after is not None else backoff(self.retries)
        if self.waited + delay > self.max_wait:
            return None
        self.retries += 1
        self.waited += delay
        return delay


def _as_list(name: str, v: Union[Sequence[str], str]) -> List[str]:
    if isinstance(v, str):
        raise TypeError(f"{name} must be a list of strings, not a string")
    return [str(x) for x in v]


def encode_files(files: Files) -> List[Dict[str, str]]:
    """``{path: bytes|str}`` → the API's ``files`` (always base64)."""
    out = []
    for path, content in files.items():
        if isinstance(content, str):
            raw = content.encode("utf-8")
        elif isinstance(content, (bytes, bytearray, memoryview)):
            raw = bytes(content)
        else:
            raise TypeError(f"files[{path!r}] must be bytes or str, not {type(content).__name__}")
        out.append(
            {"path": path, "content": base64.b64encode(raw).decode("ascii"), "encoding": "base64"}
        )
    return out


def network_body(network: Network) -> Dict[str, Any]:
    if isinstance(network, str):
        return {"allow": [network]}
    if isinstance(network, Mapping):
        return dict(network)
    return {"allow": [str(x) for x in network]}


def execute_body(
    language: str,
    code: str,
    *,
    stdin: Union[str, bytes, None] = None,
    args: Optional[Sequence[str]] = None,
    env: Optional[Mapping[str, str]] = None,
    files: Optional[Files] = None,
    files_out: Union[Sequence[str], str, None] = None,
    limits: Optional[Mapping[str, int]] = None,
    network: Optional[Network] = None,
    tests: Optional[Sequence[Mapping[str, Any]]] = None,
) -> Dict[str, Any]:
    """The JSON body of ``POST /v1/execute`` (and of the other execute endpoints)."""
    body: Dict[str, Any] = {"language": language, "code": code}
    if stdin is not None:
        body["stdin"] = stdin.decode("utf-8") if isinstance(stdin, bytes) else stdin
    if args is not None:
        body["args"] = _as_list("args", args)
    if env is not None:
        body["env"] = {str(k): str(v) for k, v in env.items()}
    if files is not None:
        body["files"] = encode_files(files)
    if files_out is not None:
        body["files_out"] = [files_out] if isinstance(files_out, str) else list(files_out)
    if limits is not None:
        body["limits"] = dict(limits)
    if network is not None:
        body["network"] = network_body(network)
    if tests is not None:
        body["tests"] = [dict(t) for t in tests]
    return body


_EXECUTE_KEYS = frozenset(
    {"language", "code", "stdin", "args", "env", "files", "files_out", "limits", "network", "tests"}
)


def batch_item(item: Mapping[str, Any]) -> Dict[str, Any]:
    """One entry of ``submit_batch``: the keyword arguments of ``execute`` as a dict."""
    unknown = set(item) - _EXECUTE_KEYS
    if unknown:
        raise TypeError(f"unknown execution fields: {', '.join(sorted(unknown))}")
    if "language" not in item or "code" not in item:
        raise TypeError("each execution needs 'language' and 'code'")
    rest = {k: v for k, v in item.items() if k not in ("language", "code")}
    return execute_body(item["language"], item["code"], **rest)


def sandbox_body(
    *,
    ttl_s: Optional[int] = None,
    idle_timeout_s: Optional[int] = None,
    limits: Optional[Mapping[str, int]] = None,
    env: Optional[Mapping[str, str]] = None,
    network: Optional[Network] = None,
) -> Dict[str, Any]:
    """The JSON body of ``POST /v1/sandboxes``."""
    body: Dict[str, Any] = {}
    if ttl_s is not None:
        body["ttl_s"] = ttl_s
    if idle_timeout_s is not None:
        body["idle_timeout_s"] = idle_timeout_s
    if limits is not None:
        body["limits"] = dict(limits)
    if env is not None:
        body["env"] = {str(k): str(v) for k, v in env.items()}
    if network is not None:
        body["network"] = network_body(network)
    return body


def quote_id(value: str) -> str:
    """An id as one path segment."""
    if value in ("", ".", ".."):
        raise ValueError(f"not a valid id: {value!r}")
    return quote(value, safe="")


def quote_path(path: str) -> str:
    """A work-dir path for a URL: each segment percent-encoded, and ``.``/``..``
    encoded too so that no HTTP layer folds them away (the server, which refuses a
    path leaving the work dir, sees exactly what was asked)."""
    segs = []
    for seg in path.split("/"):
        if seg == ".":
            segs.append("%2E")
        elif seg == "..":
            segs.append("%2E%2E")
        else:
            segs.append(quote(seg, safe=""))
    return "/".join(segs)


def file_url(sandbox_id: str, path: str) -> str:
    if not path or path.endswith("/"):
        raise ValueError(f"not a file path: {path!r}")
    return f"/v1/sandboxes/{quote_id(sandbox_id)}/files/{quote_path(path)}"


def listing_url(sandbox_id: str, path: str) -> str:
    p = path.rstrip("/")
    if p in ("", "."):
        return f"/v1/sandboxes/{quote_id(sandbox_id)}/files/"
    return f"/v1/sandboxes/{quote_id(sandbox_id)}/files/{quote_path(p)}/"


def transport_error(e: httpx.TransportError) -> TransportError:
    code = "timeout" if isinstance(e, httpx.TimeoutException) else "connection_error"
    return TransportError(str(e) or type(e).__name__, code=code)


def read_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as e:
        raise TvmError(
            f"the server's answer is not JSON: {response.text[:200]!r}",
            code="invalid_response",
            status=response.status_code,
            request_id=response.headers.get("x-request-id"),
        ) from e


def json_object(value: Any, what: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise TvmError(f"{what}: expected a JSON object", code="invalid_response")
    return value


class StreamState:
    """Turns the SSE events of an execution into :class:`StreamEvent` values and
    collects the streamed output for the final result."""

    def __init__(self) -> None:
        self.stdout: List[str] = []
        self.stderr: List[str] = []
        self.done = False

    def event(self, sse: ServerSentEvent) -> Optional[StreamEvent]:
        if self.done:
            return None
        if sse.event == "stdout":
            self.stdout.append(sse.data)
            return StreamEvent("stdout", sse.data)
        if sse.event == "stderr":
            self.stderr.append(sse.data)
            return StreamEvent("stderr", sse.data)
        if sse.event == "exit":
            try:
                d = json.loads(sse.data)
            except ValueError as e:
                raise StreamError(
                    f"the exit event is not JSON: {sse.data[:200]!r}", code="invalid_response"
                ) from e
            if not isinstance(d, dict):
                raise StreamError("the exit event is not a JSON object", code="invalid_response")
            self.done = True
            result = ExecuteResult.from_json(
                d, stdout="".join(self.stdout), stderr="".join(self.stderr)
            )
            return StreamEvent("exit", result)
        return None  # an event this client does not know: skipped

    def finish(self) -> None:
        if not self.done:
            raise StreamError(
                "the event stream ended before its exit event", code="stream_incomplete"
            )
