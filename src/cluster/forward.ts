/**
 * A call forwarded to another node: the client's request streamed to that node's gateway, its
 * response streamed back (docs/cluster.md, "Forwarding"). Straight gateway to gateway over HTTP
 * with undici, one keep-alive pool per node, so a body crosses once and never through NATS.
 *
 * The receiving gateway serves a request that carries FORWARDED_BY_HEADER where it lands: a call
 * is forwarded at most once, whatever the two nodes' views of the cluster say.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { Pool, errors as undiciErrors } from "undici";
import { WHOLE_BODY_BYTES } from "../core/body.js";
import type { AbortLike } from "../core/call-abort.js";
import { FennecError } from "../core/errors.js";
import { HOP_BY_HOP } from "../core/hop-by-hop.js";
import { CHAIN_DEPTH_HEADER } from "../invocations/call-host.js";
import { CALL_ID_HEADER, REQUEST_ID_HEADER } from "../gateway/http-util.js";
import { readSmallBody, smallBody } from "../gateway/request-body.js";
import { FORWARDED_BY_HEADER } from "./contract.js";
import { FORWARD_AUTH_HEADER } from "./forward-auth.js";

/** The placement's reason, told to the node that serves a forwarded call (for its record). */
export const PLACEMENT_HEADER = "x-fennec-placement";

/** Request headers of this hop only: one hop's, `expect` (answered here) and `host` (the remote's). */
const NOT_SENT = new Set([
  ...HOP_BY_HOP,
  "expect",
  "host",
  CHAIN_DEPTH_HEADER,
  FORWARDED_BY_HEADER,
  PLACEMENT_HEADER,
  FORWARD_AUTH_HEADER,
]);
/** The caller's credentials: they cross to another node only for a function that takes them. */
const CREDENTIALS = new Set(["authorization", "proxy-authorization", "cookie"]);
/** Response headers not copied back: one hop's, and the ids this gateway has already set (the same values). */
const NOT_RETURNED = new Set([...HOP_BY_HOP, REQUEST_ID_HEADER, CALL_ID_HEADER]);

/** What one forwarded call needs. */
export interface ForwardCall {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  /** The request's path and query on the receiving gateway (`/f/alice/fn/x?y=1`): the client's. */
  readonly url: string;
  readonly callId: string;
  readonly requestId: string;
  /** This node (FORWARDED_BY_HEADER). */
  readonly from: string;
  /** The node it goes to, its gateway's base URL, and why (PLACEMENT_HEADER). */
  readonly to: { readonly name: string; readonly url: string; readonly reason: string };
  /** The request's signature (forward-auth.ts): the receiving node trusts the headers above only with it. */
  readonly signature: string;
  /** Whether the caller's credentials may reach the function (its `forward-credentials`). */
  readonly forwardCredentials: boolean;
  /**
   * Aborted when the call must end: the client went away, or the node left the cluster. The
   * gateway's `CallAbort` itself: a real `AbortSignal` per call would cost an `AbortController`.
   */
  readonly signal: AbortLike;
}

/** How a forwarded call ended. */
export interface ForwardOutcome {
  /** The remote's status; undefined when it never answered. */
  readonly status: number | undefined;
  /** The failure, when there was one (the response was then cut, or not sent). */
  readonly error: FennecError | undefined;
  /** Whether no connection could be made at all (the node is not reachable: place elsewhere). */
  readonly unreachable: boolean;
  /** Whether the call may go to another node: unreachable, and none of its body read yet. */
  readonly resendable: boolean;
}

/** undici's codes for a connection that could not be opened. */
const CONNECT_FAILURES = new Set([
  "ECONNREFUSED",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "UND_ERR_CONNECT_TIMEOUT",
  "ENOTFOUND",
]);

function connectFailed(err: unknown): boolean {
  const code = (err as { code?: string } | undefined)?.code;
  if (code !== undefined && CONNECT_FAILURES.has(code)) return true;
  return err instanceof undiciErrors.ConnectTimeoutError;
}

const NONE: ReadonlySet<string> = new Set();

/** The headers a message's `Connection` names: of this hop only (RFC 9110 §7.6.1), never passed on. */
function namedByConnection(value: string | string[] | undefined): ReadonlySet<string> {
  // What almost every message says, naming nothing that is not one hop's anyway: no Set per call.
  if (value === undefined || value === "keep-alive" || value === "close") return NONE;
  const text = Array.isArray(value) ? value.join(",") : value;
  return new Set(
    text
      .split(",")
      .map((t) => t.trim().toLowerCase())
      .filter((t) => t !== ""),
  );
}

/**
 * The client's body as undici reads it: `req` is only read from once undici reads (after it has
 * connected), and undici's destroying it on a failure leaves `req` whole. So a call whose node
 * could not be reached still has its whole body, for another node or this one.
 */
function lazyBody(req: IncomingMessage): { body: Readable; started: () => boolean } {
  let started = false;
  const body = new Readable({
    read() {
      if (started) {
        req.resume();
        return;
      }
      started = true;
      req.on("data", (chunk: Buffer) => {
        if (!body.push(chunk)) req.pause();
      });
      req.once("end", () => body.push(null));
      req.once("error", (err) => body.destroy(err));
      req.once("aborted", () => body.destroy(new Error("the client went away")));
    },
  });
  return { body, started: () => started };
}

/** The request's headers as sent to the other node: the client's, less one hop's, plus the call's. */
function sentHeaders(call: ForwardCall): Record<string, string> {
  const { req } = call;
  const headers: Record<string, string> = {};
  const hop = namedByConnection(req.headers.connection);
  const all = req.headers;
  for (const name in all) {
    const value = all[name];
    if (value === undefined || NOT_SENT.has(name) || hop.has(name)) continue;
    if (!call.forwardCredentials && CREDENTIALS.has(name)) continue;
    headers[name] = Array.isArray(value) ? value.join(", ") : value;
  }
  headers[FORWARDED_BY_HEADER] = call.from;
  headers[PLACEMENT_HEADER] = call.to.reason;
  headers[CALL_ID_HEADER] = call.callId;
  headers[REQUEST_ID_HEADER] = call.requestId;
  headers[FORWARD_AUTH_HEADER] = call.signature;
  return headers;
}

/** The remote's status and headers on the client's response, less one hop's and the ids already set. */
function copyHead(
  answer: { statusCode: number; headers: Record<string, string | string[] | undefined> },
  res: ServerResponse,
): void {
  res.statusCode = answer.statusCode;
  const all = answer.headers;
  const hop = namedByConnection(all.connection);
  for (const name in all) {
    const value = all[name];
    if (value === undefined || NOT_RETURNED.has(name) || hop.has(name)) continue;
    res.setHeader(name, value);
  }
}

/** A call that failed before any of its answer was sent (the caller answers `error`). */
function failed(error: FennecError): ForwardOutcome {
  return { status: undefined, error, unreachable: false, resendable: false };
}

/** Keep-alive pools to the other nodes' gateways, one per base URL. */
export class Forwarder {
  readonly #pools = new Map<string, Pool>();

  #pool(url: string): Pool {
    let pool = this.#pools.get(url);
    if (!pool) {
      pool = new Pool(url, {
        connections: 256,
        // The remote's own function timeout ends a slow call; undici's 300 s limits would cut a
        // long event stream the function may keep open. A dead node is found by its socket
        // (reset) or by the membership (left): neither waits for these.
        headersTimeout: 0,
        bodyTimeout: 0,
        connectTimeout: 5_000,
        keepAliveTimeout: 30_000,
      });
      this.#pools.set(url, pool);
    }
    return pool;
  }

  /** Closes the pool to a node that left (its sockets are gone or going). */
  drop(url: string): void {
    const pool = this.#pools.get(url);
    if (!pool) return;
    this.#pools.delete(url);
    void pool.destroy().catch(() => undefined);
  }

  async close(): Promise<void> {
    const pools = [...this.#pools.values()];
    this.#pools.clear();
    await Promise.all(pools.map((p) => p.destroy().catch(() => undefined)));
  }

  /**
   * Streams the call to `to` and its answer back to the client. Never throws: before the response
   * head the caller answers the error (NODE_LOST, CLIENT_GONE); after it, the response is cut here
   * (the client sees a short body), and the outcome says why.
   *
   * Small bodies cross whole, as on the hop to an instance (http-transport.ts): a request body of
   * declared length up to WHOLE_BODY_BYTES is read before the call is sent and goes as one buffer,
   * and an answer of declared length up to that is read whole and sent with one `res.end`. Larger
   * or chunked bodies stream both ways.
   */
  async forward(call: ForwardCall): Promise<ForwardOutcome> {
    const { req, res } = call;
    // A request with neither a length nor chunks has no body (RFC 9112 §6.3): none is sent.
    let body: Buffer | Readable | null = null;
    let lazy: ReturnType<typeof lazyBody> | undefined;
    if (smallBody(req)) {
      try {
        // Kept by request (readSmallBody): a call placed again, here or on another node, has it.
        body = await readSmallBody(req);
      } catch {
        return failed(new FennecError("CLIENT_GONE", "the client went away while sending the request body"));
      }
    } else if (
      (req.headers["content-length"] !== undefined && req.headers["content-length"] !== "0") ||
      req.headers["transfer-encoding"] !== undefined
    ) {
      lazy = lazyBody(req);
      body = lazy.body;
    } else req.resume();
    let answer: Awaited<ReturnType<Pool["request"]>>;
    try {
      answer = await this.#pool(call.to.url).request({
        method: req.method ?? "GET",
        path: call.url,
        headers: sentHeaders(call),
        body,
        // undici takes any EventTarget-like signal (addEventListener, aborted, reason), as a CallAbort is.
        signal: call.signal,
      });
    } catch (err) {
      const unreachable = !call.signal.aborted && connectFailed(err);
      return {
        status: undefined,
        error: this.#failure(call, err),
        unreachable,
        // No connection was made, so no streamed body was read: it can go to another node. A
        // small one was read whole and is kept for that.
        resendable: unreachable && !(lazy?.started() ?? false),
      };
    }
    // The remote may answer before the whole body was sent (a refusal, or a function that does
    // not read it): what is left unread then is not read, and the connection is closed once the
    // answer is out rather than reused with a body half read. (A small body was read whole.)
    if (lazy)
      res.once("finish", () => {
        if (!req.complete) req.socket?.destroy();
      });
    if (Number(answer.headers["content-length"]) <= WHOLE_BODY_BYTES) {
      // Read before anything is sent: a node lost meanwhile is answered as one lost before its head.
      let bytes: Buffer;
      try {
        bytes = Buffer.from(await answer.body.arrayBuffer());
      } catch (err) {
        return failed(this.#failure(call, err));
      }
      copyHead(answer, res);
      res.end(bytes);
      return { status: answer.statusCode, error: undefined, unreachable: false, resendable: false };
    }
    copyHead(answer, res);
    try {
      await pipeline(answer.body, res);
      return { status: answer.statusCode, error: undefined, unreachable: false, resendable: false };
    } catch (err) {
      // After the head the response can only be cut: the client sees a short body or no last chunk.
      if (!res.destroyed) res.destroy();
      return {
        status: answer.statusCode,
        error: this.#failure(call, err),
        unreachable: false,
        resendable: false,
      };
    }
  }

  #failure(call: ForwardCall, err: unknown): FennecError {
    const { signal, to } = call;
    if (signal.aborted) {
      if (signal.reason instanceof FennecError) return signal.reason;
      return new FennecError("CLIENT_GONE", "the client went away before the forwarded call ended");
    }
    if (err instanceof FennecError) return err;
    const why = err instanceof Error ? err.message : String(err);
    if (connectFailed(err))
      return new FennecError("NODE_LOST", `node ${to.name} (${to.url}) could not be reached: ${why}`, {
        cause: err,
        details: { node: to.name },
      });
    return new FennecError("NODE_LOST", `the connection to node ${to.name} broke during the call: ${why}`, {
      cause: err,
      details: { node: to.name },
    });
  }
}
