import { chown } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import type { CallHost, ChainedResult } from "../core/call-host.js";
import { FennecError, toFennecError, type ErrorCode } from "../core/errors.js";
import type { CleanupStack } from "./cleanup-stack.js";
import { SANDBOX_USER } from "./unprivileged.js";

/**
 * The host side of the binding a fetch handler uses to reach Fennec (chain, await, state):
 * one small HTTP server per instance, listening on a Unix socket in the directory the sandbox
 * already shares with the host (or fed the guest channel's streams a VM guest opens), never on
 * an IP address. Each request names its call in `x-fennec-call-id`, the header Fennec put on
 * the invocation; only calls in flight on this very instance are answered, each through its own
 * `CallHost`, so a function can neither act as another instance's call nor as one that ended.
 * The wire protocol is in docs/architecture.md ("The handler binding").
 */

/** The request header naming the call a binding request acts for (set by Fennec on each invocation). */
export const CALL_ID_HEADER = "x-fennec-call-id";

/** The socket's name in the shared directory, and what the sandbox finds in `FENNEC_HOST_SOCKET`. */
export const BINDING_SOCKET = "fennec-host.sock";

/** A request body to the binding (a chained call's input, a state value) is at most this. */
export const BINDING_MAX_BODY = 16 * 1024 * 1024;

/** Connections one instance may hold open at once (each awaited child holds one). */
const MAX_CONNECTIONS = 256;

/** A binding answer's status for a refusal: the code is the contract, the status a courtesy. */
function statusOf(code: ErrorCode): number {
  if (code === "CALL_NOT_FOUND" || code === "NOT_FOUND" || code === "FUNCTION_NOT_FOUND") return 404;
  if (code === "BODY_TOO_LARGE" || code === "STATE_TOO_LARGE") return 413;
  if (code === "METHOD_NOT_ALLOWED") return 405;
  if (code === "CHAIN_OTHER_USER") return 403;
  if (code === "BAD_REQUEST" || code === "BAD_NAME") return 400;
  if (code === "CHAIN_TOO_DEEP") return 508;
  if (code.startsWith("FN_")) return 502;
  return code === "INTERNAL" ? 500 : 503;
}

export class HostBinding {
  readonly #server: Server;
  /** The calls in flight on this instance, by id. */
  readonly #calls = new Map<string, CallHost>();
  /** Connections handed to `accept` (the server tracks only those it accepted while listening). */
  readonly #streams = new Set<Duplex>();
  #closed = false;

  private constructor() {
    this.#server = createServer(
      {
        // Bounded like any server facing untrusted code: headers, idle time; no request timeout,
        // since an await lasts as long as its child (the caller's own timeout bounds it).
        maxHeaderSize: 16 * 1024,
        headersTimeout: 30_000,
        requestTimeout: 0,
        keepAliveTimeout: 5_000,
      },
      (req, res) => void this.#serve(req, res),
    );
    this.#server.maxConnections = MAX_CONNECTIONS;
  }

  /**
   * A binding listening at `path`. With `sandboxUser` the socket is handed to the sandbox's
   * uid (it must be writable to connect to); the directory around it decides who else can reach it.
   */
  static async listen(path: string, opts: { sandboxUser: boolean }): Promise<HostBinding> {
    const binding = new HostBinding();
    await new Promise<void>((resolve, reject) => {
      binding.#server.once("error", reject);
      binding.#server.listen(path, () => {
        binding.#server.off("error", reject);
        resolve();
      });
    });
    if (opts.sandboxUser) await chown(path, SANDBOX_USER.uid, SANDBOX_USER.gid);
    return binding;
  }

  /** A binding with no socket, served over streams handed to `accept` (a VM guest's channel). */
  static streams(): HostBinding {
    return new HostBinding();
  }

  /** Serves one connection that arrived some other way than the socket. */
  accept(stream: Duplex): void {
    if (this.#closed) return void stream.destroy();
    this.#streams.add(stream);
    stream.once("close", () => this.#streams.delete(stream));
    this.#server.emit("connection", stream);
  }

  /**
   * Lets binding requests act for `call` until the returned release is called (when the
   * invocation ends, its response body included).
   */
  admit(call: CallHost): () => void {
    this.#calls.set(call.callId, call);
    return () => {
      if (this.#calls.get(call.callId) === call) this.#calls.delete(call.callId);
    };
  }

  /** Stops answering and drops every connection (the instance is gone); the socket file goes with the server. */
  close(): Promise<void> {
    this.#closed = true;
    this.#calls.clear();
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
      for (const s of this.#streams) s.destroy();
    });
  }

  async #serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const id = req.headers[CALL_ID_HEADER];
      const call = typeof id === "string" ? this.#calls.get(id) : undefined;
      if (!call)
        throw new FennecError(
          "CALL_NOT_FOUND",
          typeof id === "string"
            ? `no call ${id.slice(0, 64)} is in flight on this instance`
            : `a binding request names its call in ${CALL_ID_HEADER}`,
        );
      await route(call, req, res);
    } catch (err) {
      const error = toFennecError(err);
      if (res.headersSent) return void res.destroy();
      const body = JSON.stringify({ error: error.code, message: error.message });
      const headers: Record<string, string | number> = {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(body),
        "x-fennec-error": error.code,
      };
      // A body left unread (refused before or while reading it) is not drained: the connection ends.
      if (!req.complete) headers["connection"] = "close";
      res.writeHead(statusOf(error.code), headers);
      res.end(body);
    }
  }
}

/**
 * Opens the binding of an instance in `dir` (its run or socket directory) and closes it with the
 * instance: `cleanup` releases it before the directory that holds its socket is removed.
 */
export async function openBinding(
  cleanup: CleanupStack,
  dir: string,
  opts: { sandboxUser: boolean },
): Promise<HostBinding> {
  const binding = await HostBinding.listen(join(dir, BINDING_SOCKET), opts);
  cleanup.defer(() => binding.close());
  return binding;
}

/** Routes of the binding (docs/architecture.md, "The handler binding"). */
async function route(call: CallHost, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? "/", "http://binding");
  const [version, what, raw, tail, ...rest] = url.pathname.split("/").slice(1);
  if (version !== "v1" || !what || raw === undefined || rest.length > 0)
    throw new FennecError("NOT_FOUND", `no binding route ${req.method} ${url.pathname}`);
  const name = decode(raw);
  const method = req.method ?? "GET";
  if (what === "chain" && tail === undefined && method === "POST") {
    const callId = await call.chain(name, await readBody(req));
    return json(res, { callId });
  }
  if (what === "calls" && tail === undefined && method === "GET") return result(res, await call.await(name));
  if (what === "state" && tail === undefined) {
    if (method === "GET") {
      const value = await call.state.get(name);
      if (value === undefined) {
        res.writeHead(404, { "x-fennec-state": "absent", "content-length": 0 });
        return void res.end();
      }
      return bytes(res, value);
    }
    if (method === "PUT") {
      await call.state.set(name, await readBody(req));
      return json(res, {});
    }
    if (method === "PATCH") {
      const offset = Number(url.searchParams.get("offset"));
      if (!Number.isSafeInteger(offset) || offset < 0)
        throw new FennecError("BAD_REQUEST", "a state write needs ?offset= (a non-negative integer)");
      await call.state.write(name, offset, await readBody(req));
      return json(res, {});
    }
    if (method === "DELETE") return json(res, { deleted: await call.state.delete(name) });
  }
  if (what === "state" && tail === "appended") {
    if (method === "GET") {
      const values = await call.state.appended(name);
      return json(res, { values: values.map((v) => Buffer.from(v).toString("base64")) });
    }
    if (method === "POST") {
      await call.state.append(name, await readBody(req));
      return json(res, {});
    }
    if (method === "DELETE") {
      await call.state.clearAppended(name);
      return json(res, {});
    }
  }
  throw new FennecError("METHOD_NOT_ALLOWED", `no binding route ${method} ${url.pathname}`);
}

function decode(segment: string): string {
  try {
    const decoded = decodeURIComponent(segment);
    if (decoded.length === 0) throw new Error("empty");
    return decoded;
  } catch {
    throw new FennecError("BAD_NAME", `not a name: ${segment.slice(0, 64)}`);
  }
}

/** The request's body, refused past BINDING_MAX_BODY (declared or counted). */
async function readBody(req: IncomingMessage): Promise<Uint8Array> {
  const tooLarge = () =>
    new FennecError("BODY_TOO_LARGE", `a binding request's body is at most ${BINDING_MAX_BODY} bytes`);
  if (Number(req.headers["content-length"] ?? 0) > BINDING_MAX_BODY) throw tooLarge();
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.byteLength;
    if (size > BINDING_MAX_BODY) throw tooLarge();
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

function json(res: ServerResponse, value: unknown): void {
  const body = JSON.stringify(value);
  res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}

function bytes(res: ServerResponse, value: Uint8Array): void {
  res.writeHead(200, { "content-type": "application/octet-stream", "content-length": value.byteLength });
  res.end(value);
}

/** A finished child: its output as the body, its status and error code in headers (200 means "here it is"). */
function result(res: ServerResponse, done: ChainedResult): void {
  const headers: Record<string, string | number> = {
    "content-type": "application/octet-stream",
    "content-length": done.output.byteLength,
    "x-fennec-call-status": done.status,
    [CALL_ID_HEADER]: done.callId,
  };
  if (done.errorCode) headers["x-fennec-call-error"] = done.errorCode;
  res.writeHead(200, headers);
  res.end(done.output);
}
