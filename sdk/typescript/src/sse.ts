// Server-Sent Events, as the HTML standard parses them ("Interpreting an event
// stream"): lines end in CRLF, LF or CR, `data:` lines join with LF, `:` lines are
// comments (the server's keep-alives), a blank line dispatches. Text arrives in
// chunks cut anywhere: mid-line, between CR and LF, mid-UTF-8 sequence (the bytes go
// through one streaming TextDecoder first).

export interface SseMessage {
  /** The `event:` field (`"message"` when absent). */
  event: string;
  data: string;
}

export class SseParser {
  private readonly decoder = new TextDecoder("utf-8");
  private buffer = "";
  /** The last chunk ended in CR: an LF starting the next one belongs to it. */
  private skipLf = false;
  private eventType = "";
  private dataLines: string[] = [];

  /** Feeds bytes; returns the events they completed. */
  push(bytes: Uint8Array): SseMessage[] {
    return this.feed(this.decoder.decode(bytes, { stream: true }));
  }

  /** The end of the stream: a final event without its blank line is dropped (per the standard). */
  finish(): SseMessage[] {
    return this.feed(this.decoder.decode());
  }

  private feed(text: string): SseMessage[] {
    const out: SseMessage[] = [];
    if (this.skipLf && text.length > 0) {
      if (text.charCodeAt(0) === 10) text = text.slice(1);
      this.skipLf = false;
    }
    let buf = this.buffer + text;
    let start = 0;
    for (let i = 0; i < buf.length; i++) {
      const c = buf.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.line(buf.slice(start, i), out);
      if (c === 13) {
        if (i + 1 === buf.length) this.skipLf = true;
        else if (buf.charCodeAt(i + 1) === 10) i++;
      }
      start = i + 1;
    }
    buf = buf.slice(start);
    this.buffer = buf;
    return out;
  }

  private line(line: string, out: SseMessage[]): void {
    if (line === "") {
      if (this.dataLines.length > 0) {
        out.push({ event: this.eventType || "message", data: this.dataLines.join("\n") });
      }
      this.eventType = "";
      this.dataLines = [];
      return;
    }
    if (line.charCodeAt(0) === 58) return; // ":" comment (keep-alive)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (field === "event") this.eventType = value;
    else if (field === "data") this.dataLines.push(value);
    // `id` and `retry` mean nothing here: a stream is never resumed.
  }
}
