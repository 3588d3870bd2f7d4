import type { Readable } from "node:stream";
import type { CallHost } from "./call-host.js";

/** A function's identity: `user/name`; functions directly under the registry belong to user `default`. */
export interface FunctionId {
  readonly user: string;
  readonly name: string;
}

export function functionKey(id: FunctionId): string {
  return `${id.user}/${id.name}`;
}

/**
 * Bodies are Node `Readable`s, not web `ReadableStream`s: the gateway receives one from node:http
 * (`IncomingMessage`), undici (the hop to out-of-process instances) takes and returns them, and
 * `pipeline` carries back-pressure and cancellation between them; a web stream would be converted
 * back and forth at each end. Whoever receives a body owns it: they read it to its end or destroy
 * it, and an invocation lasts until its response body has ended, failed or been destroyed.
 */
export type Body = Readable;

/**
 * What reaches a sandbox: the HTTP request, its body streamed as it arrives from the client
 * (bounded by the body limit as it is received). `content-length` stays in the headers when the
 * client sent one; without it the body's length is known only at its end.
 */
export interface InvokeRequest {
  readonly method: string;
  /** The path inside the function, always starting with `/`. */
  readonly path: string;
  /** The raw query string without the leading `?` ("" when absent). */
  readonly query: string;
  /** Lower-cased header names; repeated headers joined with ", " as HTTP allows. */
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Body;
  /**
   * The call this request is, and what it may ask of Fennec (chain, await, state); set by the
   * invocation layer for calls it records. A driver that supports chaining exposes it to the guest.
   */
  readonly call?: CallHost;
}

export interface InvokeResponse {
  readonly status: number;
  /** Ordered pairs so repeated headers (set-cookie) survive. */
  readonly headers: ReadonlyArray<readonly [string, string]>;
  /** Streamed from the sandbox; the status and headers above arrive before it. */
  readonly body: Body;
}

/** A response read whole into memory, where a copy must be kept (an asynchronous call's result). */
export type BufferedResponse = Omit<InvokeResponse, "body"> & { readonly body: Uint8Array };

/** How an invocation found its instance. */
export type StartType = "cold" | "warm" | "prebooted" | "restored";

/** The record kept for every invocation; feeds /stats, /metrics and the benchmarks. */
export interface InvocationRecord {
  /** The scheduler (node) that served it: several can share a process, and channels are global. */
  readonly node: string;
  readonly function: string;
  readonly instanceId: string | undefined;
  readonly startType: StartType | undefined;
  /** Milliseconds spent waiting in the queue for a slot (includes waiting for a cold start). */
  readonly queueWaitMs: number;
  /** Milliseconds the instance took to become ready; 0 unless this invocation started it. */
  readonly initMs: number;
  /**
   * Milliseconds from the start of execution to the first byte of the response body (to its end
   * for an empty body): what a client waits before output starts, e.g. a server-sent event.
   */
  readonly ttfbMs: number;
  /** Milliseconds from the start of execution to the end of the response body. */
  readonly execMs: number;
  /** The function's status; 0 when it never answered. */
  readonly status: number;
  /**
   * Why the invocation failed, if it did; with a status, the failure came after the response
   * started (the body was cut: the function failed or timed out, or the client went away).
   */
  readonly errorCode: string | undefined;
  /** The failure's message, for the call's record. */
  readonly errorMessage?: string | undefined;
}
