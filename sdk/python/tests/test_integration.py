"""Every method of both clients against a real pyrovm booting real microVMs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import List, Tuple

import pytest
from conftest import TOKEN, PyrovmServer

from tvm_client import (
    AsyncClient,
    BadRequest,
    Client,
    ExecuteResult,
    ExecutionState,
    NotFound,
    StreamEvent,
    Unauthorized,
)

pytestmark = pytest.mark.integration


def client(srv: PyrovmServer) -> Client:
    return Client(srv.url, TOKEN, timeout=120)


def wait_running(c: Client, id: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while True:
        s = c.get(id)
        assert isinstance(s, ExecutionState), f"finished before it was seen running: {s}"
        if s.status == "running":
            return
        assert s.status == "queued", s
        assert time.monotonic() < end, "never started running"
        time.sleep(0.1)


def test_languages(tvm_server: PyrovmServer) -> None:
    with client(tvm_server) as c:
        langs = {lang.name: lang for lang in c.languages()}
    assert {"python", "bash", "c"} <= set(langs)
    assert "py" in langs["python"].aliases and langs["python"].version
    assert langs["c"].compiled and not langs["python"].compiled


def test_execute_with_every_input_and_files_out(tvm_server: PyrovmServer) -> None:
    code = (
        "import os, sys\n"
        "data = open('data/in.bin', 'rb').read()\n"
        "note = open('note.txt').read()\n"
        "print(input(), sys.argv[1:], os.environ['GREETING'], data.hex(), note)\n"
        "os.makedirs('out', exist_ok=True)\n"
        "open('out/all.bin', 'wb').write(bytes(range(256)))\n"
        "open('out/skip.txt', 'w').write('x')\n"
    )
    with client(tvm_server) as c:
        r = c.execute(
            "python",
            code,
            stdin="hi\n",
            args=["--flag"],
            env={"GREETING": "world"},
            files={"data/in.bin": b"\x00\xff\x10", "note.txt": "h\u00e9llo"},
            files_out=["out/*.bin"],
            limits={"timeout_ms": 20000, "memory_mb": 256},
        )
    assert r.status == "completed" and r.exit_code == 0 and r.ok, r
    assert r.stdout == "hi ['--flag'] world 00ff10 h\u00e9llo\n"
    assert r.stderr == "" and r.signal is None
    assert r.files == {"out/all.bin": bytes(range(256))} and r.files_truncated is False
    assert r.timings_ms.total > 0 and r.backend and r.id and r.raw["id"] == r.id
    assert r.network is None and r.compile is None and r.tests is None and r.verdict is None


def test_a_failing_program_is_a_result_not_an_exception(tvm_server: PyrovmServer) -> None:
    with client(tvm_server) as c:
        r = c.execute("python", "import sys; sys.stderr.write('bad\\n'); sys.exit(3)")
        assert (r.status, r.exit_code, r.stderr, r.ok) == ("completed", 3, "bad\n", False)
        r = c.execute("bash", "kill -9 $$")
        assert r.signal == "SIGKILL" and r.exit_code is None
        r = c.execute("bash", "sleep 10", limits={"timeout_ms": 700})
        assert r.status == "timeout"


def test_test_cases_and_their_verdict(tvm_server: PyrovmServer) -> None:
    with client(tvm_server) as c:
        r = c.execute(
            "python",
            "print(int(input()) * 2)",
            tests=[{"stdin": "2", "expected_stdout": "4"}, {"stdin": "5", "expected_stdout": "11"}],
        )
    assert r.verdict == "wrong_answer"
    assert r.tests is not None and [t.verdict for t in r.tests] == ["accepted", "wrong_answer"]
    assert r.tests[1].stdout == "10\n"


def test_an_error_carries_the_api_code(tvm_server: PyrovmServer) -> None:
    with client(tvm_server) as c:
        with pytest.raises(BadRequest) as e:
            c.execute("cobol", "DISPLAY 'HI'.")
        assert e.value.code == "unknown_language" and e.value.status == 400
        assert "cobol" in e.value.message and e.value.request_id
        with pytest.raises(BadRequest) as e:
            c.execute("python", "1", limits={"timeout_ms": 10**9})
        assert e.value.code == "limit_out_of_range"


def test_a_bad_token_is_401(tvm_server: PyrovmServer) -> None:
    for token in ("wrong-token", ""):
        with Client(tvm_server.url, token) as c:
            with pytest.raises(Unauthorized) as e:
                c.languages()
        assert e.value.status == 401 and e.value.code == "unauthorized"


def test_stream_events_arrive_in_order_as_they_happen_and_exit_is_last(
    tvm_server: PyrovmServer,
) -> None:
    got: List[Tuple[float, StreamEvent]] = []
    with client(tvm_server) as c:
        t0 = time.monotonic()
        for ev in c.stream("bash", "echo one; sleep 1; echo two >&2; sleep 0.3; echo three"):
            got.append((time.monotonic() - t0, ev))
    events = [ev for _, ev in got]
    assert [ev.event for ev in events].count("exit") == 1 and events[-1].event == "exit"
    out = [(ev.event, ev.text) for ev in events[:-1]]
    assert "".join(t for _, t in out) == "one\ntwo\nthree\n", out
    assert "".join(t for e, t in out if e == "stdout") == "one\nthree\n"
    assert "".join(t for e, t in out if e == "stderr") == "two\n"
    # the first line came a second before the end: streamed, not buffered
    assert got[-1][0] - got[0][0] > 0.8, [(round(t, 2), e.event) for t, e in got]
    res = events[-1].result
    assert res is not None and res.status == "completed" and res.exit_code == 0
    assert res.stdout == "one\nthree\n" and res.stderr == "two\n"


def test_stream_refusal_is_raised_before_any_event(tvm_server: PyrovmServer) -> None:
    with client(tvm_server) as c:
        with pytest.raises(BadRequest) as e:
            next(c.stream("cobol", "x"))
        assert e.value.code == "unknown_language"


def test_sandbox_session(tvm_server: PyrovmServer) -> None:
    blob = bytes(range(256)) * 4
    with client(tvm_server) as c:
        with c.sandbox(ttl_s=120, idle_timeout_s=60, env={"STAGE": "test"}) as sb:
            assert sb.id.startswith("sb-") and sb.info.ttl_s == 120
            assert sb.info.env_keys == ["STAGE"]
            assert sb.write_file("data/in.bin", blob).size == len(blob)
            r = sb.execute(
                "python",
                "import os; d = open('data/in.bin','rb').read(); "
                "open('out.txt','w').write(f\"{len(d)} {os.environ['STAGE']}\"); "
                "print(d[:4].hex())",
            )
            assert r.ok and r.stdout == "00010203\n", r
            assert sb.read_file("out.txt") == b"1024 test"
            assert sb.read_file("data/in.bin") == blob
            root = sb.list()
            assert {"data", "out.txt"} <= set(root.names), root
            assert {e.name: e.type for e in root.entries}["data"] == "dir"
            sub = sb.list("data")
            assert [(e.name, e.type, e.size) for e in sub.entries] == [
                ("in.bin", "file", len(blob))
            ]
            # state persists between execs; a streamed exec in the sandbox
            evs = list(sb.stream("bash", "cat out.txt; echo; ls data"))
            assert evs[-1].result is not None and evs[-1].result.stdout == "1024 test\nin.bin\n"
            assert sb.refresh().execs == 2
            assert sb.id in [s.id for s in c.sandboxes()]
            with pytest.raises(BadRequest) as e:
                sb.read_file("../etc/passwd")
            assert e.value.code == "invalid_path"
            with pytest.raises(NotFound) as nf:
                sb.read_file("missing.txt")
            assert nf.value.code == "file_not_found"
        # deleted on exit: the id is gone
        assert sb.id not in [s.id for s in c.sandboxes()]
        with pytest.raises(NotFound):
            sb.execute("bash", "true")
        with pytest.raises(NotFound):
            sb.read_file("out.txt")
        with pytest.raises(NotFound):
            sb.delete()


def test_async_executions(tvm_server: PyrovmServer) -> None:
    with client(tvm_server) as c:
        id = c.submit("python", "print(sum(range(10)))")
        r = c.get(id, wait=True, timeout_ms=60000)
        assert isinstance(r, ExecuteResult) and r.stdout == "45\n" and r.id == id
        assert id in [e.id for e in c.executions()]
        ids = c.submit_batch(
            [
                {"language": "bash", "code": "echo a"},
                {"language": "python", "code": "print(input())", "stdin": "b"},
            ]
        )
        assert len(ids) == 2
        outs = []
        for i in ids:
            r = c.get(i, wait=True)
            assert isinstance(r, ExecuteResult), r
            outs.append(r.stdout)
        assert outs == ["a\n", "b\n"]
        c.cancel(id)  # forget a finished one
        with pytest.raises(NotFound):
            c.get(id)
        # cancel a running one: its VM is destroyed at once
        long = c.submit("bash", "sleep 30", limits={"timeout_ms": 40000})
        wait_running(c, long)
        t0 = time.monotonic()
        c.cancel(long)
        with pytest.raises(NotFound):
            c.get(long)
        assert time.monotonic() - t0 < 10
        with pytest.raises(BadRequest) as e:
            c.submit_batch(
                [{"language": "bash", "code": "true"}, {"language": "cobol", "code": "x"}]
            )
        assert e.value.code == "unknown_language" and "executions[1]" in e.value.message


def test_async_client_end_to_end(tvm_server: PyrovmServer) -> None:
    async def main() -> None:
        async with AsyncClient(tvm_server.url, TOKEN, timeout=120) as c:
            names = [lang.name for lang in await c.languages()]
            assert "python" in names
            r = await c.execute("python", "print(input()[::-1])", stdin="olleh")
            assert r.ok and r.stdout == "hello\n"
            events = [ev async for ev in c.stream("bash", "echo x; echo y >&2")]
            assert events[-1].event == "exit" and events[-1].result is not None
            assert events[-1].result.stdout == "x\n" and events[-1].result.stderr == "y\n"
            with pytest.raises(BadRequest) as e:
                await c.execute("cobol", "x")
            assert e.value.code == "unknown_language"
            async with c.sandbox(ttl_s=60) as sb:
                await sb.write_file("a.txt", "async")
                r = await sb.execute("bash", "cat a.txt > b.txt; wc -c < a.txt")
                assert r.stdout.strip() == "5"
                assert await sb.read_file("b.txt") == b"async"
                assert {"a.txt", "b.txt"} <= set((await sb.list()).names)
                evs = [ev async for ev in sb.stream("bash", "echo s")]
                assert evs[0].text == "s\n"
                assert (await sb.refresh()).execs == 2
                assert sb.id in [s.id for s in await c.sandboxes()]
            with pytest.raises(NotFound):
                await sb.read_file("a.txt")
            sb2 = await c.sandbox()
            await sb2.delete()
            with pytest.raises(NotFound):
                await sb2.execute("bash", "true")
            id = await c.submit("bash", "echo done")
            res = await c.get(id, wait=True)
            assert isinstance(res, ExecuteResult) and res.stdout == "done\n"
            ids = await c.submit_batch([{"language": "bash", "code": "echo 1"}])
            assert [e.id for e in await c.executions()][-1] == ids[0]
            res = await c.get(ids[0], wait=True)
            assert isinstance(res, ExecuteResult) and res.stdout == "1\n"
            await c.cancel(ids[0])
            with pytest.raises(NotFound):
                await c.get(ids[0])
        async with AsyncClient(tvm_server.url, "bad") as bad:
            with pytest.raises(Unauthorized):
                await bad.languages()

    asyncio.run(main())


def test_the_readme_example_runs_as_written(
    tvm_server: PyrovmServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("TVM_SERVER", tvm_server.url)
    monkeypatch.setenv("TVM_TOKEN", TOKEN)
    exec(compile(example, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "completed 0 hello ['-v']", lines
    assert lines[1:3] == ["stdout 'one\\n'", "stdout 'two\\n'"], lines
    assert lines[3].startswith("exit ExecuteResult(") and "status='completed'" in lines[3]
    assert lines[4] == "b'A,B\\n1,2\\n' ['data', 'out.txt']", lines
