/**
 * Fennec's runtime for fetch-style handlers (the handler shape of Workers, Deno and Hono):
 *
 *     export default { fetch(request) { return new Response("hello") } }
 *
 * It serves the handler over HTTP as a Fennec instance: on the Unix socket in FENNEC_SOCKET or on
 * 127.0.0.1:$PORT, then calls the readiness callback given as the last argument (the UniFaaS guest
 * contract). Self-contained on purpose (Node built-ins only): it is copied next to the handler
 * into whatever each sandbox needs. Usage: node handler-server.js BUNDLE.mjs CALLBACK-URL
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { pathToFileURL } from "node:url";

interface Handler {
  fetch(request: Request): Response | Promise<Response>;
}

const [bundle, callback] = process.argv.slice(2);
if (!bundle || !callback) {
  console.error("usage: handler-server BUNDLE.mjs CALLBACK-URL");
  process.exit(2);
}

const loaded = (await import(pathToFileURL(bundle).href)) as { default?: Partial<Handler> };
const handler = loaded.default;
if (!handler || typeof handler.fetch !== "function") {
  console.error(`${bundle}: the handler must \`export default { fetch(request) { ... } }\``);
  process.exit(2);
}
const fetchHandler = handler as Handler;

/**
 * The request as a fetch `Request` whose body streams from the socket as it arrives: a handler
 * can read a large or slow upload piece by piece.
 */
function toRequest(req: IncomingMessage): Request {
  const headers = new Headers();
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2)
    headers.append(req.rawHeaders[i]!, req.rawHeaders[i + 1]!);
  const method = req.method ?? "GET";
  const empty =
    method === "GET" ||
    method === "HEAD" ||
    (req.headers["content-length"] === "0" && req.headers["transfer-encoding"] === undefined);
  const init: RequestInit & { duplex?: "half" } = { method, headers };
  if (!empty) {
    init.body = Readable.toWeb(req) as ReadableStream<Uint8Array>;
    init.duplex = "half"; // fetch's word for a body that streams in
  } else req.resume();
  return new Request(`http://${req.headers.host ?? "fennec.local"}${req.url ?? "/"}`, init);
}

const immediate = () => new Promise<"later">((resolve) => setImmediate(() => resolve("later")));

/**
 * Writes the response chunk by chunk as the handler's body produces it, with back-pressure (a
 * slow reader pauses the handler's stream; one that leaves cancels it). A body that is already
 * whole (`new Response("text")`: its chunks come without waiting) gets a `content-length`; one
 * still being produced is sent chunked, its first chunk at once.
 */
async function send(res: ServerResponse, response: Response): Promise<void> {
  res.statusCode = response.status;
  response.headers.forEach((value, name) => {
    if (name !== "set-cookie" && name !== "content-length") res.setHeader(name, value);
  });
  const cookies = response.headers.getSetCookie();
  if (cookies.length > 0) res.setHeader("set-cookie", cookies);
  if (!response.body) {
    res.setHeader("content-length", 0);
    res.end();
    return;
  }
  const reader = response.body.getReader();
  const first = await reader.read();
  if (first.done) {
    res.setHeader("content-length", 0);
    res.end();
    return;
  }
  const pending = reader.read();
  const next = await Promise.race([pending, immediate()]);
  if (next !== "later" && next.done) {
    res.setHeader("content-length", first.value.byteLength);
    res.end(first.value);
    return;
  }
  res.write(first.value);
  const rest = async function* () {
    try {
      const second = next === "later" ? await pending : next;
      if (second.done) return;
      yield second.value;
      for (;;) {
        const r = await reader.read();
        if (r.done) return;
        yield r.value;
      }
    } finally {
      reader.releaseLock();
    }
  };
  const body = Readable.from(rest(), { objectMode: false });
  // Cancels the handler's stream when the reader goes away mid-body (pipeline destroys `body`).
  body.once("close", () => {
    if (!body.readableEnded) void reader.cancel().catch(() => undefined);
  });
  await pipeline(body, res);
}

const server = createServer((req, res) => {
  void (async () => {
    try {
      const response = await fetchHandler.fetch(toRequest(req));
      if (!(response instanceof Response)) throw new TypeError("fetch() must return a Response");
      await send(res, response);
    } catch (err) {
      // The handler's own failure is its response: a 500 that says why, and a line in its log.
      // After the head is out it can only cut the response.
      console.error(err);
      if (res.headersSent) return void res.destroy();
      const message = err instanceof Error ? err.message : String(err);
      res.writeHead(500, { "content-type": "text/plain; charset=utf-8" });
      res.end(`handler error: ${message}\n`);
    }
  })();
});

const socket = process.env["FENNEC_SOCKET"];
const announce = () => {
  if (callback === "ignore") return; // as in UniFaaS: the host learns readiness another way
  fetch(callback).catch((err: unknown) => {
    console.error(`readiness callback to ${callback} failed:`, err);
    // On a socket the host also learns readiness from the socket accepting (a container without a
    // network cannot reach the callback); on TCP the callback is the only signal, so give up.
    if (!socket) process.exit(1);
  });
};
if (socket) server.listen(socket, announce);
else server.listen(Number(process.env["PORT"] ?? 8080), "127.0.0.1", announce);
process.on("SIGTERM", () => server.close(() => process.exit(0)));
