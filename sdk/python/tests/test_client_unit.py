"""The client against a test double at the HTTP boundary (`httpx.MockTransport`, named
`FakeServer` here): what goes on the wire, how answers and errors are read, and the
retry rule. No server, no VM; the real server's side is `test_integration_*.py`."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any, Callable, Dict, List, Optional, Type, Union

import httpx
import pytest

import tvm_client
from tvm_client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    ExecuteResult,
    ExecutionState,
    Gone,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    StreamError,
    TransportError,
    TvmError,
    Unauthorized,
    Unavailable,
)
from tvm_client._base import RetryBudget, quote_path
from tvm_client._errors import error_from_response, parse_retry_after

RESULT: Dict[str, Any] = {
    "id": "01J",
    "status": "completed",
    "exit_code": 0,
    "signal": None,
    "stdout": "42\n",
    "stderr": "",
    "stdout_truncated": False,
    "stderr_truncated": False,
    "timings_ms": {"queued": 0, "vm_start": 5, "exec": 7, "total": 12},
    "backend": "qemu-tcg",
}

Reply = Union[httpx.Response, Callable[[httpx.Request], httpx.Response], Exception]


def err(status: int, code: str, retry_after: Optional[str] = None) -> httpx.Response:
    headers = {"x-request-id": "req-1"}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    return httpx.Response(
        status, json={"error": {"code": code, "message": f"{code} says no"}}, headers=headers
    )


class FakeServer:
    """TEST DOUBLE at the HTTP boundary: answers each request with the next scripted
    reply (the last one repeats) and records every request."""

    def __init__(self, *replies: Reply) -> None:
        self.replies: List[Reply] = list(replies)
        self.requests: List[httpx.Request] = []
        self.slept: List[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        if callable(reply):
            return reply(request)
        return reply

    def body(self, i: int = -1) -> Any:
        return json.loads(self.requests[i].content)

    def client(self, **kw: Any) -> "Client":
        c = Client("http://tvm.test/base", "tok", transport=httpx.MockTransport(self), **kw)
        c._sleep = self.slept.append
        return c

    def async_client(self, **kw: Any) -> AsyncClient:
        async def handler(request: httpx.Request) -> httpx.Response:
            return self(request)

        c = AsyncClient("http://tvm.test/base", "tok", transport=httpx.MockTransport(handler), **kw)

        async def sleep(s: float) -> None:
            self.slept.append(s)

        c._sleep = sleep
        return c


# -- the wire ---------------------------------------------------------------------


def test_execute_sends_the_api_body_with_files_base64_and_the_token() -> None:
    fake = FakeServer(
        httpx.Response(
            200,
            json=dict(
                RESULT,
                files=[
                    {
                        "path": "out/a.bin",
                        "content": base64.b64encode(b"\x00\xff").decode(),
                        "encoding": "base64",
                        "size": 2,
                    }
                ],
                files_truncated=False,
            ),
        )
    )
    with fake.client() as c:
        r = c.execute(
            "python",
            "print(42)",
            stdin="in",
            args=["-x"],
            env={"A": "b"},
            files={"data/in.txt": "héllo", "b.bin": b"\x00\x01"},
            files_out="out/*",
            limits={"timeout_ms": 5000},
            network=["pypi.org"],
            tests=[{"stdin": "1", "expected_stdout": "2"}],
        )
    req = fake.requests[0]
    assert req.method == "POST" and req.url.path == "/base/v1/execute"
    assert req.headers["authorization"] == "Bearer tok"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"].startswith("tvm-client-python/")
    assert fake.body() == {
        "language": "python",
        "code": "print(42)",
        "stdin": "in",
        "args": ["-x"],
        "env": {"A": "b"},
        "files": [
            {
                "path": "data/in.txt",
                "content": base64.b64encode("héllo".encode()).decode(),
                "encoding": "base64",
            },
            {"path": "b.bin", "content": "AAE=", "encoding": "base64"},
        ],
        "files_out": ["out/*"],
        "limits": {"timeout_ms": 5000},
        "network": {"allow": ["pypi.org"]},
        "tests": [{"stdin": "1", "expected_stdout": "2"}],
    }
    assert isinstance(r, ExecuteResult)
    assert (r.status, r.stdout, r.exit_code, r.signal, r.ok) == ("completed", "42\n", 0, None, True)
    assert r.timings_ms.total == 12 and r.timings_ms.vm_start == 5
    assert r.files == {"out/a.bin": b"\x00\xff"} and r.files_truncated is False
    assert r.raw["backend"] == "qemu-tcg" and r.compile is None and r.tests is None


def test_only_given_fields_are_sent_and_bad_arguments_are_refused_locally() -> None:
    fake = FakeServer(httpx.Response(200, json=RESULT))
    with fake.client() as c:
        c.execute("bash", "true")
        assert fake.body() == {"language": "bash", "code": "true"}
        with pytest.raises(TypeError):
            c.execute("bash", "true", args="-x")  # a string is not a list of args
        with pytest.raises(TypeError):
            c.execute("bash", "true", files={"a": 1})  # type: ignore[dict-item]
        with pytest.raises(TypeError):
            c.submit_batch([{"language": "bash", "code": "x", "bogus": 1}])
    assert len(fake.requests) == 1


def test_results_with_compile_tests_and_network_are_typed() -> None:
    stage = {
        "status": "completed",
        "exit_code": 0,
        "signal": None,
        "stdout": "",
        "stderr": "w",
        "stdout_truncated": False,
        "stderr_truncated": False,
        "duration_ms": 900,
    }
    case = dict(stage, verdict="wrong_answer", stdout="3\n")
    net = {
        "bytes_in": 10,
        "bytes_out": 2,
        "connections": 1,
        "refused": [{"host": "evil.test", "port": 443, "reason": "not_allowed"}],
    }
    fake = FakeServer(
        httpx.Response(
            200, json=dict(RESULT, compile=stage, tests=[case], verdict="wrong_answer", network=net)
        )
    )
    with fake.client() as c:
        r = c.execute("c", "int main(){}")
    assert r.compile is not None and r.compile.duration_ms == 900 and r.compile.stderr == "w"
    assert (
        r.tests is not None and r.tests[0].verdict == "wrong_answer" and r.tests[0].stdout == "3\n"
    )
    assert r.verdict == "wrong_answer"
    assert r.network is not None and r.network.refused[0].host == "evil.test"


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TVM_SERVER", "http://env.test:9/")
    monkeypatch.setenv("TVM_TOKEN", "envtok")
    fake = FakeServer(httpx.Response(200, json=[]))
    c = Client(transport=httpx.MockTransport(fake))
    assert c.base_url == "http://env.test:9"
    c.languages()
    assert str(fake.requests[0].url) == "http://env.test:9/v1/languages"
    assert fake.requests[0].headers["authorization"] == "Bearer envtok"
    monkeypatch.delenv("TVM_SERVER")
    monkeypatch.delenv("TVM_TOKEN")
    c = Client(transport=httpx.MockTransport(fake))
    assert c.base_url == "http://127.0.0.1:8080"
    c.languages()
    assert "authorization" not in fake.requests[-1].headers


def test_paths_are_encoded_and_dot_segments_reach_the_server() -> None:
    assert quote_path("a b/c?d#e/%") == "a%20b/c%3Fd%23e/%25"
    assert quote_path("../x/./y") == "%2E%2E/x/%2E/y"
    info = {"id": "sb-1", "limits": {"memory_mb": 256}}
    fake = FakeServer(
        httpx.Response(201, json=info),
        httpx.Response(200, json={"path": "a b/c", "size": 2}),
        httpx.Response(
            200, content=b"\x00\x01", headers={"content-type": "application/octet-stream"}
        ),
        err(400, "invalid_path"),
        httpx.Response(
            200,
            json={
                "path": "",
                "entries": [{"name": "d", "type": "dir", "size": 0}],
                "truncated": False,
            },
        ),
        httpx.Response(200, json={"path": "d", "entries": [], "truncated": False}),
        httpx.Response(204),
    )
    with fake.client() as c, c.sandbox(ttl_s=60, limits={"disk_mb": 8}, env={"K": "v"}) as sb:
        assert fake.body(0) == {"ttl_s": 60, "limits": {"disk_mb": 8}, "env": {"K": "v"}}
        assert sb.id == "sb-1" and sb.info.limits.memory_mb == 256
        assert sb.write_file("a b/c", b"hi").size == 2
        assert fake.requests[1].method == "PUT"
        assert fake.requests[1].url.raw_path == b"/base/v1/sandboxes/sb-1/files/a%20b/c"
        assert fake.requests[1].content == b"hi"
        assert fake.requests[1].headers["content-type"] == "application/octet-stream"
        assert sb.read_file("x.bin") == b"\x00\x01"
        with pytest.raises(BadRequest):
            sb.read_file("../etc/passwd")
        assert fake.requests[3].url.raw_path == b"/base/v1/sandboxes/sb-1/files/%2E%2E/etc/passwd"
        assert sb.list().names == ["d"]
        assert fake.requests[4].url.raw_path == b"/base/v1/sandboxes/sb-1/files/"
        assert sb.list("d/").entries == []
        assert fake.requests[5].url.raw_path == b"/base/v1/sandboxes/sb-1/files/d/"
        with pytest.raises(ValueError):
            sb.read_file("dir/")
    assert fake.requests[-1].method == "DELETE"
    assert fake.requests[-1].url.path == "/base/v1/sandboxes/sb-1"


def test_leaving_a_sandbox_that_already_ended_is_quiet() -> None:
    fake = FakeServer(httpx.Response(201, json={"id": "sb-2"}), err(410, "sandbox_ended"))
    with fake.client() as c:
        with c.sandbox() as sb:
            with pytest.raises(Gone) as e:
                sb.execute("bash", "true")
            assert isinstance(e.value, NotFound) and e.value.code == "sandbox_ended"
        # __exit__ tried DELETE, got 410, and did not raise
        assert [r.method for r in fake.requests] == ["POST", "POST", "DELETE"]


def test_async_executions_read_results_and_states() -> None:
    fake = FakeServer(
        httpx.Response(202, json={"id": "ex-1", "status": "queued", "age_ms": 0}),
        httpx.Response(200, json={"id": "ex-1", "status": "running", "age_ms": 5}),
        httpx.Response(200, json=dict(RESULT, id="ex-1")),
        httpx.Response(
            200,
            json={
                "id": "ex-2",
                "status": "rejected",
                "age_ms": 9,
                "error": {"code": "queue_timeout", "message": "m"},
            },
        ),
        httpx.Response(
            202,
            json={
                "executions": [
                    {"id": "a", "status": "queued", "age_ms": 0},
                    {"id": "b", "status": "queued", "age_ms": 0},
                ]
            },
        ),
        httpx.Response(200, json={"executions": [{"id": "a", "status": "completed", "age_ms": 3}]}),
        httpx.Response(204),
    )
    with fake.client() as c:
        assert c.submit("bash", "echo", files={"f": b"x"}) == "ex-1"
        assert fake.body(0)["files"] == [{"path": "f", "content": "eA==", "encoding": "base64"}]
        s = c.get("ex-1")
        assert isinstance(s, ExecutionState) and s.status == "running" and s.age_ms == 5
        r = c.get("ex-1", wait=True, timeout_ms=2000)
        assert isinstance(r, ExecuteResult) and r.stdout == "42\n"
        assert fake.requests[2].url.params == httpx.QueryParams(
            {"wait": "true", "timeout_ms": "2000"}
        )
        rej = c.get("ex-2")
        assert isinstance(rej, ExecutionState) and rej.error is not None
        assert rej.error.code == "queue_timeout"
        ids = c.submit_batch(
            [
                {"language": "bash", "code": "1", "files": {"a": "b"}},
                {"language": "bash", "code": "2"},
            ]
        )
        assert ids == ["a", "b"]
        assert fake.body(4)["executions"][0]["files"][0]["content"] == "Yg=="
        assert [e.status for e in c.executions()] == ["completed"]
        c.cancel("a")
        assert (
            fake.requests[-1].method == "DELETE"
            and fake.requests[-1].url.path == "/base/v1/executions/a"
        )


# -- errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "status,cls",
    [
        (400, BadRequest),
        (401, Unauthorized),
        (404, NotFound),
        (409, Conflict),
        (410, Gone),
        (413, PayloadTooLarge),
        (429, RateLimited),
        (503, Unavailable),
        (500, ServerError),
        (502, ServerError),
        (408, TvmError),
    ],
)
def test_each_status_maps_to_its_exception(status: int, cls: Type[TvmError]) -> None:
    fake = FakeServer(
        err(status, f"code_{status}", retry_after="0" if status in (429, 503) else None)
    )
    with fake.client(max_retries=0) as c:
        with pytest.raises(cls) as e:
            c.execute("python", "1")
    assert type(e.value) is cls
    assert e.value.code == f"code_{status}" and e.value.status == status
    assert e.value.message == f"code_{status} says no" and e.value.request_id == "req-1"
    assert f"code_{status}" in str(e.value) and str(status) in str(e.value)
    assert len(fake.requests) == 1


def test_error_bodies_that_are_not_the_api_shape() -> None:
    r = httpx.Response(502, text="<html>bad gateway</html>")
    e = error_from_response(r)
    assert isinstance(e, ServerError) and e.code == "http_502" and "bad gateway" in e.message
    e = error_from_response(httpx.Response(400, json={"message": "python-9 runtime is unknown"}))
    assert e.code == "http_400" and e.message == "python-9 runtime is unknown"
    e = error_from_response(httpx.Response(404))
    assert e.message == "Not Found"


def test_retry_after_parses_seconds_and_dates() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("-1") is None
    assert parse_retry_after("soon") is None
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    v = parse_retry_after(later)
    assert v is not None and 25 <= v <= 31
    past = format_datetime(datetime.now(timezone.utc) - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(past) == 0.0


def test_an_unreachable_server_is_a_transport_error_and_not_retried() -> None:
    fake = FakeServer(httpx.ConnectError("refused"))
    with fake.client() as c:
        with pytest.raises(TransportError) as e:
            c.languages()
    assert e.value.code == "connection_error" and e.value.status is None
    assert len(fake.requests) == 1 and fake.slept == []
    fake = FakeServer(httpx.ReadTimeout("slow"))
    with fake.client() as c:
        with pytest.raises(TransportError) as e:
            c.languages()
    assert e.value.code == "timeout"


# -- retries ----------------------------------------------------------------------


def test_429_and_503_are_retried_after_retry_after_then_succeed() -> None:
    fake = FakeServer(
        err(429, "at_capacity", "2"),
        err(503, "not_ready", "1"),
        httpx.Response(200, json=RESULT),
    )
    with fake.client() as c:
        r = c.execute("python", "print(42)")
    assert r.stdout == "42\n"
    assert len(fake.requests) == 3 and fake.slept == [2.0, 1.0]
    # every try sent the same body
    assert {r.content for r in fake.requests} == {fake.requests[0].content}


def test_without_retry_after_the_backoff_doubles() -> None:
    fake = FakeServer(
        err(503, "no_space"),
        err(503, "no_space"),
        err(503, "no_space"),
        httpx.Response(200, json=[]),
    )
    with fake.client() as c:
        assert c.languages() == []
    assert fake.slept == [0.5, 1.0, 2.0]


def test_retries_are_bounded_by_count() -> None:
    fake = FakeServer(err(429, "at_capacity", "1"))
    with fake.client(max_retries=3) as c:
        with pytest.raises(RateLimited) as e:
            c.execute("python", "1")
    assert len(fake.requests) == 4 and fake.slept == [1.0, 1.0, 1.0]
    assert e.value.code == "at_capacity" and e.value.retry_after == 1.0
    fake = FakeServer(err(429, "at_capacity", "1"))
    with fake.client(max_retries=0) as c:
        with pytest.raises(RateLimited):
            c.execute("python", "1")
    assert len(fake.requests) == 1 and fake.slept == []


def test_retries_are_bounded_by_total_wait_and_retry_after_is_never_shortened() -> None:
    fake = FakeServer(err(429, "queue_timeout", "20"))
    with fake.client(max_retries=10, max_retry_wait=50) as c:
        with pytest.raises(RateLimited) as e:
            c.execute("python", "1")
    assert fake.slept == [20.0, 20.0] and len(fake.requests) == 3
    assert e.value.retry_after == 20.0
    fake = FakeServer(err(503, "shutting_down", "120"))
    with fake.client() as c:
        with pytest.raises(Unavailable):
            c.languages()
    assert fake.slept == [] and len(fake.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 404, 409, 410, 413, 500, 502, 504])
def test_nothing_else_is_retried(status: int) -> None:
    fake = FakeServer(err(status, "nope", "1"), httpx.Response(200, json=RESULT))
    with fake.client() as c:
        with pytest.raises(TvmError):
            c.execute("python", "1")
    assert len(fake.requests) == 1 and fake.slept == []


def test_retry_budget_rule() -> None:
    b = RetryBudget(max_retries=2, max_wait=10)
    assert b.next_delay(200, None) is None
    assert b.next_delay(429, None) == 0.5
    assert b.next_delay(503, 9.6) is None  # would exceed 10 s in all: give up
    assert b.next_delay(503, 9.0) == 9.0
    assert b.next_delay(429, 0) is None  # two retries used


# -- streams ----------------------------------------------------------------------


def sse_reply(*events: str) -> httpx.Response:
    return httpx.Response(
        200, content="".join(events).encode(), headers={"content-type": "text/event-stream"}
    )


EXIT = (
    "event: exit\ndata: "
    + json.dumps({k: v for k, v in RESULT.items() if k not in ("stdout", "stderr")})
    + "\n\n"
)


def test_stream_is_retried_on_429_then_yields_events_in_order() -> None:
    fake = FakeServer(
        err(429, "at_capacity", "0"),
        sse_reply(
            "event: stdout\ndata: one\ndata: \n\n",
            ": keep-alive\n\n",
            "event: stderr\ndata: oops\n\n",
            "event: stdout\ndata: two\ndata: \n\n",
            EXIT,
        ),
    )
    with fake.client() as c:
        events = list(c.stream("bash", "echo one; echo oops >&2; echo two", stdin="x"))
    assert len(fake.requests) == 2 and fake.slept == [0.0]
    assert fake.requests[-1].url.path == "/base/v1/execute/stream"
    assert fake.requests[-1].headers["accept"] == "text/event-stream"
    assert fake.body()["stdin"] == "x"
    assert [(e.event, e.text) for e in events[:3]] == [
        ("stdout", "one\n"),
        ("stderr", "oops"),
        ("stdout", "two\n"),
    ]
    assert events[-1].event == "exit"
    res = events[-1].result
    assert (
        res is not None
        and res.stdout == "one\ntwo\n"
        and res.stderr == "oops"
        and res.exit_code == 0
    )


def test_a_stream_error_is_raised_on_first_next_and_a_cut_stream_is_an_error() -> None:
    fake = FakeServer(err(400, "unknown_language"))
    with fake.client() as c:
        s = c.stream("cobol", "x")
        assert fake.requests == []  # nothing sent before iteration
        with pytest.raises(BadRequest) as e:
            next(s)
    assert e.value.code == "unknown_language"
    fake = FakeServer(sse_reply("event: stdout\ndata: partial\n\n"))
    with fake.client() as c:
        with pytest.raises(StreamError):
            list(c.stream("bash", "x"))


# -- the async client -------------------------------------------------------------


def test_async_client_mirrors_the_sync_one() -> None:
    fake = FakeServer(
        err(429, "at_capacity", "1"),
        httpx.Response(200, json=RESULT),
        sse_reply("event: stdout\ndata: hi\n\n", EXIT),
        httpx.Response(201, json={"id": "sb-9"}),
        httpx.Response(200, json={"path": "f", "size": 1}),
        httpx.Response(200, content=b"z"),
        httpx.Response(
            200,
            json={
                "path": "",
                "entries": [{"name": "f", "type": "file", "size": 1}],
                "truncated": False,
            },
        ),
        httpx.Response(204),
        err(401, "unauthorized"),
    )

    async def main() -> None:
        async with fake.async_client() as c:
            r = await c.execute("python", "print(42)")
            assert r.stdout == "42\n" and fake.slept == [1.0]
            evs = [e async for e in c.stream("bash", "echo hi")]
            assert [e.event for e in evs] == ["stdout", "exit"]
            async with c.sandbox(ttl_s=5) as sb:
                assert sb.id == "sb-9"
                assert (await sb.write_file("f", "z")).size == 1
                assert await sb.read_file("f") == b"z"
                assert (await sb.list()).names == ["f"]
            assert fake.requests[-1].method == "DELETE"
            with pytest.raises(Unauthorized) as e:
                await c.languages()
            assert e.value.code == "unauthorized" and e.value.status == 401

    asyncio.run(main())


def test_the_package_exports_its_api() -> None:
    for name in tvm_client.__all__:
        assert hasattr(tvm_client, name), name
    assert tvm_client.__version__


def test_a_long_poll_outlasts_a_short_client_timeout() -> None:
    fake = FakeServer(httpx.Response(200, json=dict(RESULT, id="ex-1")))
    with fake.client(timeout=5) as c:
        c.get("ex-1")
        c.get("ex-1", wait=True, timeout_ms=30000)
        c.get("ex-1", wait=True)
    reads = [r.extensions["timeout"]["read"] for r in fake.requests]
    assert reads == [5, 45, 75]
    with fake.client(timeout=600) as c:
        c.get("ex-1", wait=True)
    assert fake.requests[-1].extensions["timeout"]["read"] == 600
