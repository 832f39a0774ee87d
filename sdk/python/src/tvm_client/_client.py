"""The blocking client."""

from __future__ import annotations

import time
from types import TracebackType
from typing import (
    Any,
    Callable,
    Dict,
    Generator,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Type,
    Union,
)

import httpx

from ._base import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_WAIT,
    DEFAULT_TIMEOUT,
    Files,
    Network,
    RetryBudget,
    StreamState,
    batch_item,
    default_headers,
    execute_body,
    file_url,
    json_object,
    listing_url,
    make_timeout,
    quote_id,
    read_json,
    resolve_base_url,
    resolve_token,
    sandbox_body,
    transport_error,
    wait_timeout,
)
from ._errors import NotFound, error_from_response
from ._sse import SSEDecoder
from ._types import (
    ExecuteResult,
    ExecutionState,
    ExecutionSummary,
    FileListing,
    FileWritten,
    Language,
    SandboxInfo,
    StreamEvent,
    execution_outcome,
)

__all__ = ["Client", "Sandbox", "ExecutionStream"]


class ExecutionStream(Iterator[StreamEvent]):
    """The events of one streamed execution: ``stdout``/``stderr`` as they happen,
    then ``exit``. The request is sent when iteration starts; an error answer (e.g.
    an unknown language) is raised from the first ``next()``. Closing the stream
    early (``close()``, or leaving a ``with`` block) disconnects, and the server then
    stops the job."""

    def __init__(self, events: Generator[StreamEvent, None, None]) -> None:
        self._events = events

    def __iter__(self) -> "ExecutionStream":
        return self

    def __next__(self) -> StreamEvent:
        return next(self._events)

    def close(self) -> None:
        self._events.close()

    def __enter__(self) -> "ExecutionStream":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


class Client:
    """A client of a TVM server (pyrovm or pyroshell).

    ``base_url`` defaults to ``$TVM_SERVER``, else ``http://127.0.0.1:8080``;
    ``token`` to ``$TVM_TOKEN`` (sent as ``Authorization: Bearer``). ``timeout`` is in
    seconds (or an ``httpx.Timeout``). Answers 429 and 503 are retried after the
    server's ``Retry-After`` (else a short backoff), at most ``max_retries`` times and
    for at most ``max_retry_wait`` seconds of sleeping in all; nothing else is
    retried. ``transport`` replaces httpx's network transport (for tests, proxies).
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: Union[float, httpx.Timeout, None] = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        self.base_url = resolve_base_url(base_url)
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=default_headers(resolve_token(token)),
            timeout=make_timeout(timeout),
            transport=transport,
        )
        self._sleep: Callable[[float], None] = time.sleep

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r})"

    # -- plumbing ------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: Optional[bytes] = None,
        params: Optional[Mapping[str, str]] = None,
        headers: Optional[Mapping[str, str]] = None,
        stream: bool = False,
        timeout: Optional[httpx.Timeout] = None,
    ) -> httpx.Response:
        """One call, with the retries of 429/503; an error answer raises."""
        budget = RetryBudget(self.max_retries, self.max_retry_wait)
        while True:
            request = self._http.build_request(
                method,
                path,
                json=json,
                content=content,
                params=params,
                headers=headers,
                timeout=self._http.timeout if timeout is None else timeout,
            )
            try:
                response = self._http.send(request, stream=stream)
                if response.status_code < 400:
                    return response
                try:
                    body = response.read()
                finally:
                    response.close()
            except httpx.TransportError as e:
                raise transport_error(e) from e
            err = error_from_response(response, body)
            delay = budget.next_delay(response.status_code, err.retry_after)
            if delay is None:
                raise err
            self._sleep(delay)

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return read_json(self._send(method, path, **kw))

    def _events(self, path: str, body: Dict[str, Any]) -> Generator[StreamEvent, None, None]:
        response = self._send(
            "POST", path, json=body, headers={"accept": "text/event-stream"}, stream=True
        )
        try:
            decoder = SSEDecoder()
            state = StreamState()
            try:
                for chunk in response.iter_bytes():
                    for sse in decoder.feed(chunk):
                        ev = state.event(sse)
                        if ev is not None:
                            yield ev
                            if ev.event == "exit":
                                return
                for sse in decoder.flush():
                    ev = state.event(sse)
                    if ev is not None:
                        yield ev
                        if ev.event == "exit":
                            return
            except httpx.TransportError as e:
                raise transport_error(e) from e
            state.finish()
        finally:
            response.close()

    # -- one-shot executions -------------------------------------------------------

    def execute(
        self,
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
    ) -> ExecuteResult:
        """Runs ``code`` in a fresh microVM and returns its result.

        ``files`` maps work-dir paths to contents (bytes, or str as UTF-8), sent as
        base64; ``files_out`` are globs whose matches come back in ``result.files``;
        ``limits`` e.g. ``{"timeout_ms": 5000, "memory_mb": 256}``; ``network`` the
        destinations the job may reach (``["pypi.org"]`` or ``{"allow": [...]}``);
        ``tests`` test cases (``{"stdin", "args", "expected_stdout", "limits"}``).
        """
        body = execute_body(
            language,
            code,
            stdin=stdin,
            args=args,
            env=env,
            files=files,
            files_out=files_out,
            limits=limits,
            network=network,
            tests=tests,
        )
        return ExecuteResult.from_json(
            json_object(self._json("POST", "/v1/execute", json=body), "execute")
        )

    def stream(
        self,
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
    ) -> ExecutionStream:
        """As :meth:`execute`, but yields the output as it is printed: events
        ``stdout``/``stderr`` (``.data`` is text), then ``exit`` (``.data`` is the
        :class:`ExecuteResult`)."""
        body = execute_body(
            language,
            code,
            stdin=stdin,
            args=args,
            env=env,
            files=files,
            files_out=files_out,
            limits=limits,
            network=network,
            tests=tests,
        )
        return ExecutionStream(self._events("/v1/execute/stream", body))

    def languages(self) -> List[Language]:
        """The languages the server runs."""
        data = self._json("GET", "/v1/languages")
        return [Language.from_json(d) for d in data if isinstance(d, dict)]

    # -- async executions ----------------------------------------------------------

    def submit(
        self,
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
    ) -> str:
        """Queues an execution to run when a slot is free; returns its id (read the
        result with :meth:`get`)."""
        body = execute_body(
            language,
            code,
            stdin=stdin,
            args=args,
            env=env,
            files=files,
            files_out=files_out,
            limits=limits,
            network=network,
            tests=tests,
        )
        state = ExecutionState.from_json(
            json_object(self._json("POST", "/v1/executions", json=body), "submit")
        )
        return state.id

    def submit_batch(self, executions: Sequence[Mapping[str, Any]]) -> List[str]:
        """Queues several executions, all or none; each is a dict of :meth:`execute`'s
        arguments (``{"language": ..., "code": ..., "stdin": ...}``). Returns their ids
        in order."""
        body = {"executions": [batch_item(e) for e in executions]}
        data = json_object(self._json("POST", "/v1/executions/batch", json=body), "submit_batch")
        return [
            ExecutionState.from_json(s).id
            for s in data.get("executions", [])
            if isinstance(s, dict)
        ]

    def get(
        self, id: str, wait: bool = False, timeout_ms: Optional[int] = None
    ) -> Union[ExecuteResult, ExecutionState]:
        """An async execution's result once it ran, else its :class:`ExecutionState`
        (``queued``, ``running``, or ``rejected``). ``wait=True`` holds the request
        until it finishes (at most ``timeout_ms``, capped by the server at 60 s)."""
        params: Dict[str, str] = {}
        if wait:
            params["wait"] = "true"
        if timeout_ms is not None:
            params["timeout_ms"] = str(int(timeout_ms))
        data = self._json(
            "GET",
            f"/v1/executions/{quote_id(id)}",
            params=params or None,
            timeout=wait_timeout(self._http.timeout, timeout_ms) if wait else None,
        )
        return execution_outcome(json_object(data, "get"))

    def cancel(self, id: str) -> None:
        """Cancels an async execution (a queued one leaves the queue, a running one's
        VM is destroyed) and forgets it."""
        self._send("DELETE", f"/v1/executions/{quote_id(id)}").close()

    def executions(self) -> List[ExecutionSummary]:
        """This token's async executions on the server, oldest first."""
        data = json_object(self._json("GET", "/v1/executions"), "executions")
        return [
            ExecutionSummary.from_json(e) for e in data.get("executions", []) if isinstance(e, dict)
        ]

    # -- sandboxes -----------------------------------------------------------------

    def sandbox(
        self,
        *,
        ttl_s: Optional[int] = None,
        idle_timeout_s: Optional[int] = None,
        limits: Optional[Mapping[str, int]] = None,
        env: Optional[Mapping[str, str]] = None,
        network: Optional[Network] = None,
    ) -> "Sandbox":
        """Creates a sandbox: one microVM kept for a session. Use it as a context
        manager (``with client.sandbox() as sb:``) to delete it on exit, or call
        :meth:`Sandbox.delete`. ``limits``: ``memory_mb``, ``vcpus``,
        ``max_processes``, ``disk_mb``."""
        body = sandbox_body(
            ttl_s=ttl_s, idle_timeout_s=idle_timeout_s, limits=limits, env=env, network=network
        )
        info = SandboxInfo.from_json(
            json_object(self._json("POST", "/v1/sandboxes", json=body), "sandbox")
        )
        return Sandbox(self, info)

    def sandboxes(self) -> List[SandboxInfo]:
        """This token's live sandboxes, oldest first."""
        data = json_object(self._json("GET", "/v1/sandboxes"), "sandboxes")
        return [SandboxInfo.from_json(s) for s in data.get("sandboxes", []) if isinstance(s, dict)]


class Sandbox:
    """A live sandbox: files written and processes started in one exec are there for
    the next. Deleted when its ``with`` block ends; it also ends by itself at its TTL
    or idle timeout (then every call raises :class:`~tvm_client.Gone`)."""

    def __init__(self, client: Client, info: SandboxInfo) -> None:
        self._client = client
        self.info = info
        self.id = info.id
        self._deleted = False

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r})"

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if not self._deleted:
            try:
                self.delete()
            except NotFound:  # ended already (410) or gone (404): nothing to delete
                self._deleted = True

    def _path(self, rest: str = "") -> str:
        return f"/v1/sandboxes/{quote_id(self.id)}{rest}"

    def execute(
        self,
        language: str,
        code: str,
        *,
        stdin: Union[str, bytes, None] = None,
        args: Optional[Sequence[str]] = None,
        env: Optional[Mapping[str, str]] = None,
        files: Optional[Files] = None,
        files_out: Union[Sequence[str], str, None] = None,
        limits: Optional[Mapping[str, int]] = None,
    ) -> ExecuteResult:
        """Runs code in the sandbox's work dir. ``limits`` may set only
        ``timeout_ms`` and ``max_output_bytes`` (the rest belong to the sandbox)."""
        body = execute_body(
            language,
            code,
            stdin=stdin,
            args=args,
            env=env,
            files=files,
            files_out=files_out,
            limits=limits,
        )
        data = self._client._json("POST", self._path("/execute"), json=body)
        return ExecuteResult.from_json(json_object(data, "execute"))

    def stream(
        self,
        language: str,
        code: str,
        *,
        stdin: Union[str, bytes, None] = None,
        args: Optional[Sequence[str]] = None,
        env: Optional[Mapping[str, str]] = None,
        files: Optional[Files] = None,
        files_out: Union[Sequence[str], str, None] = None,
        limits: Optional[Mapping[str, int]] = None,
    ) -> ExecutionStream:
        """As :meth:`execute`, streamed (see :meth:`Client.stream`)."""
        body = execute_body(
            language,
            code,
            stdin=stdin,
            args=args,
            env=env,
            files=files,
            files_out=files_out,
            limits=limits,
        )
        return ExecutionStream(self._client._events(self._path("/execute/stream"), body))

    def write_file(self, path: str, data: Union[bytes, bytearray, memoryview, str]) -> FileWritten:
        """Writes a file (parents are made; an existing file is replaced)."""
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        resp = self._client._send(
            "PUT",
            file_url(self.id, path),
            content=raw,
            headers={"content-type": "application/octet-stream"},
        )
        return FileWritten.from_json(json_object(read_json(resp), "write_file"))

    def read_file(self, path: str) -> bytes:
        """A file's bytes."""
        resp = self._client._send(
            "GET", file_url(self.id, path), headers={"accept": "application/octet-stream"}
        )
        return resp.content

    def list(self, path: str = "") -> FileListing:
        """A directory of the work dir (``""``: the work dir itself)."""
        data = self._client._json("GET", listing_url(self.id, path))
        return FileListing.from_json(json_object(data, "list"))

    def refresh(self) -> SandboxInfo:
        """Reads the sandbox's info again (execs, last activity, deadlines)."""
        self.info = SandboxInfo.from_json(
            json_object(self._client._json("GET", self._path()), "info")
        )
        return self.info

    def delete(self) -> None:
        """Ends the sandbox now; its VM is gone when this returns."""
        self._client._send("DELETE", self._path()).close()
        self._deleted = True
