"""An incremental Server-Sent Events decoder (the WHATWG "event stream" rules).

Bytes go in as they arrive, in chunks of any size; complete events come out. Lines end
with CRLF, LF or CR (a CR at the end of one chunk and an LF at the start of the next are
one line end); ``data`` lines of one event are joined with LF; lines starting with
``:`` are comments (the server's keep-alives); a UTF-8 sequence split across chunks is
kept whole.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import List, Optional

__all__ = ["SSEDecoder", "ServerSentEvent"]


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: Optional[str] = None


class SSEDecoder:
    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line = ""  # the unfinished line
        self._skip_lf = False  # the last chunk ended with CR
        self._event = ""
        self._data: List[str] = []
        self._has_data = False
        self._id: Optional[str] = None

    def feed(self, chunk: bytes) -> List[ServerSentEvent]:
        """Decodes a chunk; returns the events it completed."""
        return self._feed_text(self._text.decode(chunk))

    def flush(self) -> List[ServerSentEvent]:
        """End of stream. An event without its terminating blank line is dropped, as
        the standard says."""
        out = self._feed_text(self._text.decode(b"", final=True))
        self._line = ""
        self._event, self._data, self._has_data = "", [], False
        return out

    def _feed_text(self, text: str) -> List[ServerSentEvent]:
        out: List[ServerSentEvent] = []
        i = 0
        n = len(text)
        if self._skip_lf and n:
            if text[0] == "\n":
                i = 1
            self._skip_lf = False
        start = i
        while i < n:
            c = text[i]
            if c == "\r" or c == "\n":
                line = self._line + text[start:i]
                self._line = ""
                out += self._take_line(line)
                if c == "\r":
                    if i + 1 < n:
                        if text[i + 1] == "\n":
                            i += 1
                    else:
                        self._skip_lf = True
                start = i + 1
            i += 1
        self._line += text[start:]
        return out

    def _take_line(self, line: str) -> List[ServerSentEvent]:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return []
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "id":
            if "\0" not in value:
                self._id = value
        # `retry` and unknown fields are ignored.
        return []

    def _dispatch(self) -> List[ServerSentEvent]:
        if not self._has_data:
            self._event = ""
            return []
        ev = ServerSentEvent(
            event=self._event or "message", data="\n".join(self._data), id=self._id
        )
        self._event, self._data, self._has_data = "", [], False
        return [ev]
