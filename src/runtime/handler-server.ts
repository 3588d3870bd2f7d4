/**
 * Fennec's runtime for fetch-style handlers (the handler shape of Workers, Deno and Hono):
 *
 *     export default { fetch(request, env) { return new Response("hello") } }
 *
 * `env.fennec` is the call's binding to Fennec (chain, await, state; `fennec-binding` below), over
 * the Unix socket in FENNEC_HOST_SOCKET that Fennec serves for this instance.
 *
 * It serves the handler over HTTP as a Fennec instance: on the Unix socket in FENNEC_SOCKET or on
 * 127.0.0.1:$PORT, then calls the readiness callback given as the last argument (the UniFaaS guest
 * contract). Self-contained on purpose (Node built-ins only): it is copied next to the handler
 * into whatever each sandbox needs. Usage: node handler-server.js BUNDLE.mjs CALLBACK-URL
 */
import {
  Agent,
  createServer,
  request as httpRequest,
  type IncomingMessage,
  type ServerResponse,
} from "node:http";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { pathToFileURL } from "node:url";

interface Handler {
  fetch(request: Request, env: { readonly fennec: FennecBinding }): Response | Promise<Response>;
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

// ---- fennec-binding: what a handler may ask of Fennec (docs/architecture.md, "The handler binding").
// In this file because the runtime is copied into sandboxes as one self-contained file.

const CALL_ID_HEADER = "x-fennec-call-id";
const HOST_SOCKET = process.env["FENNEC_HOST_SOCKET"];
/** Kept-alive connections to Fennec's binding socket, shared by every call of this instance. */
const bindingAgent = new Agent({ keepAlive: true });

type Bytes = string | Uint8Array | ArrayBuffer;

/** What Fennec refused, with its stable code (`CHAIN_TOO_DEEP`, `STATE_TOO_LARGE`, ...). */
class FennecBindingError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = "FennecBindingError";
    this.code = code;
  }
}

interface FennecBinding {
  /** This call's id (also in the request's `x-fennec-call-id`); undefined when Fennec named none. */
  readonly callId: string | undefined;
  /** Queues a call of `name` (a function of the same user) and returns its id at once. */
  chain(name: string, body?: Bytes): Promise<string>;
  /** Waits for a call this call chained: its status, output and (`x-fennec-call-error`) error code. */
  await(callId: string): Promise<Response>;
  /** `chain` then `await`. */
  call(name: string, body?: Bytes): Promise<Response>;
  readonly state: {
    get(key: string): Promise<Uint8Array | undefined>;
    set(key: string, value: Bytes): Promise<void>;
    write(key: string, offset: number, value: Bytes): Promise<void>;
    append(key: string, value: Bytes): Promise<void>;
    appended(key: string): Promise<Uint8Array[]>;
    clearAppended(key: string): Promise<void>;
    delete(key: string): Promise<boolean>;
  };
}

interface Answer {
  readonly status: number;
  readonly headers: IncomingMessage["headers"];
  readonly body: Buffer;
}

const toBytes = (b: Bytes | undefined): Uint8Array =>
  b === undefined
    ? new Uint8Array()
    : typeof b === "string"
      ? Buffer.from(b)
      : b instanceof Uint8Array
        ? b
        : new Uint8Array(b);

/** One request to Fennec on behalf of `callId`; a refusal throws its code. */
function ask(callId: string | undefined, method: string, path: string, body?: Bytes): Promise<Answer> {
  if (!HOST_SOCKET)
    return Promise.reject(
      new FennecBindingError("NOT_FOUND", "this sandbox has no Fennec binding (FENNEC_HOST_SOCKET unset)"),
    );
  if (!callId)
    return Promise.reject(
      new FennecBindingError("CALL_NOT_FOUND", "Fennec named no call for this request: it has no binding"),
    );
  const bytes = toBytes(body);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        socketPath: HOST_SOCKET,
        agent: bindingAgent,
        method,
        path,
        headers: { [CALL_ID_HEADER]: callId, "content-length": bytes.byteLength },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", reject);
        res.on("end", () => {
          const answer = { status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) };
          const code = res.headers["x-fennec-error"];
          if (typeof code !== "string") return resolve(answer);
          let message = code;
          try {
            message = (JSON.parse(answer.body.toString()) as { message?: string }).message ?? code;
          } catch {
            // the code alone says enough
          }
          reject(new FennecBindingError(code, message));
        });
      },
    );
    req.on("error", reject);
    req.end(bytes);
  });
}

const seg = encodeURIComponent;
const NULL_BODY = new Set([101, 204, 205, 304]);

/** The binding of one call: every request it makes names that call. */
function bindingFor(callId: string | undefined): FennecBinding {
  const okJson = async <T>(p: Promise<Answer>) => JSON.parse((await p).body.toString()) as T;
  const binding: FennecBinding = {
    callId,
    chain: async (name, body) =>
      (await okJson<{ callId: string }>(ask(callId, "POST", `/v1/chain/${seg(name)}`, body))).callId,
    await: async (child) => {
      const a = await ask(callId, "GET", `/v1/calls/${seg(child)}`);
      // A child that never answered (status 0) reads as a bad gateway, as the gateway would say.
      const status = Number(a.headers["x-fennec-call-status"]) || 502;
      const headers = new Headers({ [CALL_ID_HEADER]: child });
      const error = a.headers["x-fennec-call-error"];
      if (typeof error === "string") headers.set("x-fennec-call-error", error);
      return new Response(NULL_BODY.has(status) ? null : new Uint8Array(a.body), { status, headers });
    },
    call: async (name, body) => binding.await(await binding.chain(name, body)),
    state: {
      get: async (key) => {
        const a = await ask(callId, "GET", `/v1/state/${seg(key)}`);
        // Absent is a 404 without an error code (the binding's x-fennec-state: absent).
        return a.status === 404 ? undefined : new Uint8Array(a.body);
      },
      set: async (key, value) => void (await ask(callId, "PUT", `/v1/state/${seg(key)}`, value)),
      write: async (key, offset, value) =>
        void (await ask(callId, "PATCH", `/v1/state/${seg(key)}?offset=${offset}`, value)),
      append: async (key, value) => void (await ask(callId, "POST", `/v1/state/${seg(key)}/appended`, value)),
      appended: async (key) =>
        (await okJson<{ values: string[] }>(ask(callId, "GET", `/v1/state/${seg(key)}/appended`))).values.map(
          (v) => new Uint8Array(Buffer.from(v, "base64")),
        ),
      clearAppended: async (key) => void (await ask(callId, "DELETE", `/v1/state/${seg(key)}/appended`)),
      delete: async (key) =>
        (await okJson<{ deleted: boolean }>(ask(callId, "DELETE", `/v1/state/${seg(key)}`))).deleted,
    },
  };
  return binding;
}

const server = createServer((req, res) => {
  void (async () => {
    try {
      const callId = req.headers[CALL_ID_HEADER];
      const env = { fennec: bindingFor(typeof callId === "string" ? callId : undefined) };
      const response = await fetchHandler.fetch(toRequest(req), env);
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
