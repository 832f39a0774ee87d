"""The asyncio client: the same methods as :class:`~tvm_client.Client`, as coroutines."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import (
    Any,
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Generator,
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

__all__ = ["AsyncClient", "AsyncSandbox", "AsyncExecutionStream", "SandboxCreation"]


class AsyncExecutionStream(AsyncIterator[StreamEvent]):
    """The events of one streamed execution (``async for ev in ...``): ``stdout`` /
    ``stderr`` as they happen, then ``exit``. Use ``async with`` (or ``aclose()``) to
    disconnect early; the server then stops the job."""

    def __init__(self, events: AsyncGenerator[StreamEvent, None]) -> None:
        self._events = events

    def __aiter__(self) -> "AsyncExecutionStream":
        return self

    async def __anext__(self) -> StreamEvent:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()

    async def __aenter__(self) -> "AsyncExecutionStream":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()


class AsyncClient:
    """The asyncio twin of :class:`~tvm_client.Client` (same arguments, same
    defaults, same retry rule); use ``async with AsyncClient() as client:`` or call
    :meth:`aclose`."""

    def __init__(
        self,
        base_url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: Union[float, httpx.Timeout, None] = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        self.base_url = resolve_base_url(base_url)
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=default_headers(resolve_token(token)),
            timeout=make_timeout(timeout),
            transport=transport,
        )
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    # -- lifecycle -----------------------------------------------------------------

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient(base_url={self.base_url!r})"

    # -- plumbing ------------------------------------------------------------------

    async def _send(
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
                response = await self._http.send(request, stream=stream)
                if response.status_code < 400:
                    return response
                try:
                    body = await response.aread()
                finally:
                    await response.aclose()
            except httpx.TransportError as e:
                raise transport_error(e) from e
            err = error_from_response(response, body)
            delay = budget.next_delay(response.status_code, err.retry_after)
            if delay is None:
                raise err
            await self._sleep(delay)

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        return read_json(await self._send(method, path, **kw))

    async def _events(self, path: str, body: Dict[str, Any]) -> AsyncGenerator[StreamEvent, None]:
        response = await self._send(
            "POST", path, json=body, headers={"accept": "text/event-stream"}, stream=True
        )
        try:
            decoder = SSEDecoder()
            state = StreamState()
            try:
                async for chunk in response.aiter_bytes():
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
            await response.aclose()

    # -- one-shot executions -------------------------------------------------------

    async def execute(
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
        """See :meth:`tvm_client.Client.execute`."""
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
        data = await self._json("POST", "/v1/execute", json=body)
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
        network: Optional[Network] = None,
        tests: Optional[Sequence[Mapping[str, Any]]] = None,
    ) -> AsyncExecutionStream:
        """An async iterator of the execution's events (not a coroutine:
        ``async for ev in client.stream(...)``). See :meth:`tvm_client.Client.stream`."""
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
        return AsyncExecutionStream(self._events("/v1/execute/stream", body))

    async def languages(self) -> List[Language]:
        data = await self._json("GET", "/v1/languages")
        return [Language.from_json(d) for d in data if isinstance(d, dict)]

    # -- async executions ----------------------------------------------------------

    async def submit(
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
        data = await self._json("POST", "/v1/executions", json=body)
        return ExecutionState.from_json(json_object(data, "submit")).id

    async def submit_batch(self, executions: Sequence[Mapping[str, Any]]) -> List[str]:
        body = {"executions": [batch_item(e) for e in executions]}
        data = json_object(
            await self._json("POST", "/v1/executions/batch", json=body), "submit_batch"
        )
        return [
            ExecutionState.from_json(s).id
            for s in data.get("executions", [])
            if isinstance(s, dict)
        ]

    async def get(
        self, id: str, wait: bool = False, timeout_ms: Optional[int] = None
    ) -> Union[ExecuteResult, ExecutionState]:
        params: Dict[str, str] = {}
        if wait:
            params["wait"] = "true"
        if timeout_ms is not None:
            params["timeout_ms"] = str(int(timeout_ms))
        data = await self._json(
            "GET",
            f"/v1/executions/{quote_id(id)}",
            params=params or None,
            timeout=wait_timeout(self._http.timeout, timeout_ms) if wait else None,
        )
        return execution_outcome(json_object(data, "get"))

    async def cancel(self, id: str) -> None:
        await (await self._send("DELETE", f"/v1/executions/{quote_id(id)}")).aclose()

    async def executions(self) -> List[ExecutionSummary]:
        data = json_object(await self._json("GET", "/v1/executions"), "executions")
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
    ) -> "SandboxCreation":
        """``async with client.sandbox() as sb:`` creates a sandbox and deletes it on
        exit; ``sb = await client.sandbox()`` just creates it."""
        body = sandbox_body(
            ttl_s=ttl_s, idle_timeout_s=idle_timeout_s, limits=limits, env=env, network=network
        )
        return SandboxCreation(self, body)

    async def _create_sandbox(self, body: Dict[str, Any]) -> "AsyncSandbox":
        data = await self._json("POST", "/v1/sandboxes", json=body)
        return AsyncSandbox(self, SandboxInfo.from_json(json_object(data, "sandbox")))

    async def sandboxes(self) -> List[SandboxInfo]:
        data = json_object(await self._json("GET", "/v1/sandboxes"), "sandboxes")
        return [SandboxInfo.from_json(s) for s in data.get("sandboxes", []) if isinstance(s, dict)]


class SandboxCreation:
    """What :meth:`AsyncClient.sandbox` returns: awaitable (creates the sandbox) and
    an async context manager (creates it, and deletes it on exit)."""

    def __init__(self, client: AsyncClient, body: Dict[str, Any]) -> None:
        self._client = client
        self._body = body
        self._sandbox: Optional[AsyncSandbox] = None

    def __await__(self) -> Generator[Any, None, "AsyncSandbox"]:
        return self._client._create_sandbox(self._body).__await__()

    async def __aenter__(self) -> "AsyncSandbox":
        self._sandbox = await self._client._create_sandbox(self._body)
        return self._sandbox

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self._sandbox is not None:
            await self._sandbox.__aexit__(exc_type, exc, tb)


class AsyncSandbox:
    """The asyncio twin of :class:`~tvm_client.Sandbox`."""

    def __init__(self, client: AsyncClient, info: SandboxInfo) -> None:
        self._client = client
        self.info = info
        self.id = info.id
        self._deleted = False

    def __repr__(self) -> str:
        return f"AsyncSandbox(id={self.id!r})"

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if not self._deleted:
            try:
                await self.delete()
            except NotFound:  # ended already (410) or gone (404)
                self._deleted = True

    def _path(self, rest: str = "") -> str:
        return f"/v1/sandboxes/{quote_id(self.id)}{rest}"

    async def execute(
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
        data = await self._client._json("POST", self._path("/execute"), json=body)
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
    ) -> AsyncExecutionStream:
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
        return AsyncExecutionStream(self._client._events(self._path("/execute/stream"), body))

    async def write_file(
        self, path: str, data: Union[bytes, bytearray, memoryview, str]
    ) -> FileWritten:
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        resp = await self._client._send(
            "PUT",
            file_url(self.id, path),
            content=raw,
            headers={"content-type": "application/octet-stream"},
        )
        return FileWritten.from_json(json_object(read_json(resp), "write_file"))

    async def read_file(self, path: str) -> bytes:
        resp = await self._client._send(
            "GET", file_url(self.id, path), headers={"accept": "application/octet-stream"}
        )
        return resp.content

    async def list(self, path: str = "") -> FileListing:
        data = await self._client._json("GET", listing_url(self.id, path))
        return FileListing.from_json(json_object(data, "list"))

    async def refresh(self) -> SandboxInfo:
        data = await self._client._json("GET", self._path())
        self.info = SandboxInfo.from_json(json_object(data, "info"))
        return self.info

    async def delete(self) -> None:
        await (await self._client._send("DELETE", self._path())).aclose()
        self._deleted = True
