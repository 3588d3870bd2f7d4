/**
 * The fetch handlers of the warm-hop and streaming benchmarks, as plain JavaScript modules so the
 * very same text runs in Fennec's handler runtime (bundled by `fennec`'s esbuild step) and in
 * workerd (loaded as an ES module). Written to a scratch directory by the benchmarks.
 */

/** Answers with the request body and its content type (what `echo` does). */
export const ECHO = `export default {
  async fetch(request) {
    return new Response(await request.arrayBuffer(), {
      headers: { "content-type": request.headers.get("content-type") ?? "application/octet-stream" },
    });
  },
};
`;

/** Milliseconds between two server-sent events. */
export const SSE_INTERVAL_MS = 400;
/** Events per response: a buffering hop shows the first one only after all of them. */
export const SSE_EVENTS = 5;

/**
 * Server-sent events, one every SSE_INTERVAL_MS, the first after one interval: a hop that streams
 * shows it ≈ 400 ms after the call, a hop that buffers only when the last is sent. The
 * `x-accel-buffering: no` header is how an SSE endpoint tells nginx not to buffer (the usual setup).
 */
export const SSE = `export default {
  fetch() {
    const encoder = new TextEncoder();
    let n = 0;
    const body = new ReadableStream({
      start(controller) {
        const tick = () => {
          n++;
          controller.enqueue(encoder.encode("data: event " + n + " at " + Date.now() + "\\n\\n"));
          if (n === ${SSE_EVENTS}) controller.close();
          else setTimeout(tick, ${SSE_INTERVAL_MS});
        };
        setTimeout(tick, ${SSE_INTERVAL_MS});
      },
    });
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
      },
    });
  },
};
`;

/** `?bytes=N` bytes of "x", produced 64 KiB at a time as the reader asks for them (pull). */
export const DOWNLOAD = `export default {
  fetch(request) {
    const total = Number(new URL(request.url).searchParams.get("bytes") ?? 1048576);
    const chunk = new Uint8Array(65536).fill(120);
    let sent = 0;
    const body = new ReadableStream({
      pull(controller) {
        if (sent >= total) return controller.close();
        const n = Math.min(chunk.byteLength, total - sent);
        controller.enqueue(chunk.slice(0, n));
        sent += n;
      },
    });
    return new Response(body, { headers: { "content-type": "application/octet-stream" } });
  },
};
`;

/** Reads the request body as a stream and answers with its length and SHA-256 (Node's runtime only). */
export const HASH = `import { createHash } from "node:crypto";
export default {
  async fetch(request) {
    const hash = createHash("sha256");
    let bytes = 0;
    if (request.body) {
      for await (const chunk of request.body) {
        hash.update(chunk);
        bytes += chunk.byteLength;
      }
    }
    return Response.json({ bytes, sha256: hash.digest("hex") });
  },
};
`;
