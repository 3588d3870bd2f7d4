/** A function's identity: `user/name`; functions directly under the registry belong to user `default`. */
export interface FunctionId {
  readonly user: string;
  readonly name: string;
}

export function functionKey(id: FunctionId): string {
  return `${id.user}/${id.name}`;
}

/** What reaches a sandbox: the HTTP request with its body fully read (bounded by the body limit). */
export interface InvokeRequest {
  readonly method: string;
  /** The path inside the function, always starting with `/`. */
  readonly path: string;
  /** The raw query string without the leading `?` ("" when absent). */
  readonly query: string;
  /** Lower-cased header names; repeated headers joined with ", " as HTTP allows. */
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Uint8Array;
}

export interface InvokeResponse {
  readonly status: number;
  /** Ordered pairs so repeated headers (set-cookie) survive. */
  readonly headers: ReadonlyArray<readonly [string, string]>;
  readonly body: Uint8Array;
}

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
  /** Milliseconds inside the sandbox. */
  readonly execMs: number;
  readonly status: number;
  readonly errorCode: string | undefined;
}
