// A test double at the HTTP boundary: a `fetch` that records each request and
// answers from a script, so the client's own code (bodies, headers, retries, SSE
// parsing, errors) runs unchanged without a server.

export interface RecordedRequest {
  method: string;
  url: URL;
  headers: Headers;
  /** The body as text (JSON bodies) and as bytes (raw uploads). */
  text: string | undefined;
  bytes: Uint8Array | undefined;
  signal: AbortSignal | undefined;
  at: number;
}

export type Answer = (req: RecordedRequest) => Response | Promise<Response>;

export class FetchDouble {
  readonly requests: RecordedRequest[] = [];
  readonly #answers: Answer[];
  readonly #fallback: Answer | undefined;

  /** Answers in order; once they run out, `fallback` answers every request (else a failure). */
  constructor(answers: Answer[], fallback?: Answer) {
    this.#answers = [...answers];
    this.#fallback = fallback;
  }

  readonly fetch = async (input: string | URL | Request, init: RequestInit = {}): Promise<Response> => {
    if (init.signal?.aborted) throw init.signal.reason;
    const url = new URL(typeof input === "string" ? input : input instanceof URL ? input.href : input.url);
    let bytes: Uint8Array | undefined;
    let text: string | undefined;
    if (typeof init.body === "string") {
      text = init.body;
      bytes = new TextEncoder().encode(init.body);
    } else if (init.body instanceof Uint8Array) {
      bytes = new Uint8Array(init.body);
      text = new TextDecoder().decode(bytes);
    } else if (init.body != null) {
      throw new Error("FetchDouble: unexpected body type");
    }
    const req: RecordedRequest = {
      method: init.method ?? "GET",
      url,
      headers: new Headers(init.headers),
      text,
      bytes,
      signal: init.signal ?? undefined,
      at: Date.now(),
    };
    this.requests.push(req);
    const answer = this.#answers.shift() ?? this.#fallback;
    if (answer === undefined) throw new Error(`FetchDouble: no answer scripted for ${req.method} ${url.pathname}`);
    return answer(req);
  };

  /** The JSON body of request `i`. */
  json(i: number): unknown {
    const t = this.requests[i]?.text;
    if (t === undefined) throw new Error(`request ${i} has no body`);
    return JSON.parse(t);
  }
}

export function json(status: number, body: unknown, headers: Record<string, string> = {}): Answer {
  return () =>
    new Response(JSON.stringify(body), {
      status,
      headers: { "content-type": "application/json", ...headers },
    });
}

export function apiError(status: number, code: string, headers: Record<string, string> = {}): Answer {
  return json(status, { error: { code, message: `${code} (test)` } }, headers);
}

export function noContent(): Answer {
  return () => new Response(null, { status: 204 });
}

export function bytes(data: Uint8Array): Answer {
  return () =>
    new Response(new Uint8Array(data), { status: 200, headers: { "content-type": "application/octet-stream" } });
}

/** An event stream delivered in exactly these chunks, one per read. */
export function sse(chunks: Uint8Array[], onCancel?: () => void): Answer {
  return () => {
    let i = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        const c = chunks[i++];
        if (c === undefined) controller.close();
        else controller.enqueue(c);
      },
      cancel() {
        onCancel?.();
      },
    });
    return new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } });
  };
}

/** An event stream that sends `first`, then nothing until the request is aborted (or cancelled). */
export function hangingSse(first: Uint8Array, events: { cancelled: boolean }): Answer {
  return (req) => {
    let sent = false;
    let fail: ((e: unknown) => void) | undefined;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (!sent) {
          sent = true;
          controller.enqueue(first);
          return undefined;
        }
        return new Promise<void>((_, reject) => {
          fail = reject;
        }).catch((e: unknown) => controller.error(e));
      },
      cancel() {
        events.cancelled = true;
      },
    });
    req.signal?.addEventListener("abort", () => fail?.(req.signal?.reason));
    return new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } });
  };
}
