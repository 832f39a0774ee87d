"""The SSE decoder, fed the way pyrovm (axum) writes events, in chunks of any size."""

from __future__ import annotations

from typing import List, Tuple

import pytest

from tvm_client._base import StreamState
from tvm_client._errors import StreamError
from tvm_client._sse import ServerSentEvent, SSEDecoder


def axum_event(name: str, data: str) -> bytes:
    """How axum 0.8's `Event::default().event(name).data(data)` is written: each CR
    or LF in the data ends a line (kept) and starts a new `data: ` field."""
    out = f"event: {name}\ndata: "
    for c in data:
        out += c
        if c in "\r\n":
            out += "data: "
    return (out + "\n\n").encode("utf-8")


def decode(chunks: List[bytes]) -> List[Tuple[str, str]]:
    d = SSEDecoder()
    out: List[ServerSentEvent] = []
    for c in chunks:
        out += d.feed(c)
    out += d.flush()
    return [(e.event, e.data) for e in out]


def every_split(raw: bytes) -> List[List[bytes]]:
    """The stream whole, byte by byte, and cut in two at every position."""
    splits = [[raw], [raw[i : i + 1] for i in range(len(raw))]]
    splits += [[raw[:i], raw[i:]] for i in range(1, len(raw))]
    return splits


def test_events_with_newlines_round_trip_in_any_chunking() -> None:
    stream = (
        axum_event("stdout", "one\n")
        + b": keep-alive\n\n"
        + axum_event("stderr", "a\nb\n\nc")
        + axum_event("stdout", "h\u00e9llo \u20ac \U0001f600")
        + axum_event("exit", '{"status":"completed"}')
    )
    want = [
        ("stdout", "one\n"),
        ("stderr", "a\nb\n\nc"),
        ("stdout", "h\u00e9llo \u20ac \U0001f600"),
        ("exit", '{"status":"completed"}'),
    ]
    for chunks in every_split(stream):
        assert decode(chunks) == want


def test_line_endings_crlf_cr_and_lf_are_all_line_ends() -> None:
    for sep in (b"\n", b"\r\n", b"\r"):
        raw = sep.join([b"event: x", b"data: 1", b"data:2", b"", b"data: y", b"", b""])
        for chunks in every_split(raw):
            assert decode(chunks) == [("x", "1\n2"), ("message", "y")], (sep, chunks)


def test_a_carriage_return_in_output_arrives_as_a_line_break() -> None:
    # axum writes a CR in the data as a line end, and the standard reads CR, LF and
    # CRLF alike: over SSE "a\r\nb" cannot be told from "a\n\nb" (the unary answer
    # keeps it exact).
    assert decode([axum_event("stdout", "a\r\nb")]) == [("stdout", "a\n\nb")]


def test_comments_fields_and_an_unterminated_event() -> None:
    raw = (
        b": hello\nid: 7\nretry: 100\nfoo: bar\nevent: stdout\ndata: x\n\nevent: stdout\ndata: lost"
    )
    d = SSEDecoder()
    evs = d.feed(raw) + d.flush()
    assert evs == [ServerSentEvent("stdout", "x", "7")]
    # a blank line without data dispatches nothing, and resets the event name
    d = SSEDecoder()
    assert d.feed(b"event: a\n\ndata: z\n\n") == [ServerSentEvent("message", "z")]
    # no space after the colon; a field without a colon
    d = SSEDecoder()
    assert d.feed(b"event:exit\ndata\ndata:{}\n\n") == [ServerSentEvent("exit", "\n{}")]


def test_invalid_utf8_is_replaced() -> None:
    assert decode([b"data: \xff\xfe ok\n\n"]) == [("message", "\ufffd\ufffd ok")]


def test_stream_state_builds_the_result_from_the_streamed_output() -> None:
    st = StreamState()
    evs = [
        st.event(ServerSentEvent("stdout", "1\n")),
        st.event(ServerSentEvent("stderr", "e")),
        st.event(ServerSentEvent("mystery", "?")),
        st.event(ServerSentEvent("stdout", "2\n")),
        st.event(
            ServerSentEvent(
                "exit",
                '{"id":"x","status":"completed","exit_code":0,"signal":null,'
                '"stdout_truncated":false,"stderr_truncated":false,'
                '"timings_ms":{"queued":1,"vm_start":2,"exec":3,"total":6},"backend":"qemu-tcg"}',
            )
        ),
    ]
    assert [e.event if e else None for e in evs] == ["stdout", "stderr", None, "stdout", "exit"]
    last = evs[-1]
    assert last is not None and last.result is not None
    assert last.text == ""
    assert last.result.stdout == "1\n2\n" and last.result.stderr == "e"
    assert last.result.ok and last.result.timings_ms.total == 6
    st.finish()  # complete: no error


def test_a_stream_without_exit_is_an_error() -> None:
    st = StreamState()
    st.event(ServerSentEvent("stdout", "x"))
    with pytest.raises(StreamError) as e:
        st.finish()
    assert e.value.code == "stream_incomplete"
    with pytest.raises(StreamError):
        StreamState().event(ServerSentEvent("exit", "not json"))
