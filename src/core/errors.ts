/**
 * Every failure Fennec reports carries a stable `code`. Codes starting with `FN_` are the
 * function's fault (its code or its config); the rest are the platform's or the caller's.
 * The HTTP status for each code is chosen in one place: `gateway/error-status.ts`.
 */
export const ErrorCodes = [
  // the caller's request
  "BAD_REQUEST",
  "BAD_NAME",
  "BODY_TOO_LARGE",
  "UNAUTHORIZED",
  /** An admin or upload request a browser could have sent from another site (CSRF). */
  "CROSS_SITE_REFUSED",
  /** A request for a host name the gateway does not answer to (DNS rebinding). */
  "HOST_NOT_ALLOWED",
  /** A body of a type the route does not take (deploys are JSON, uploads wasm bytes). */
  "UNSUPPORTED_MEDIA_TYPE",
  "NOT_FOUND",
  "METHOD_NOT_ALLOWED",
  "FUNCTION_NOT_FOUND",
  "CONFIG_INVALID",
  "MODULE_INVALID",
  /** The client went away (closed its connection) before the invocation finished; it is cancelled. */
  "CLIENT_GONE",
  // capacity and lifecycle
  "QUEUE_FULL",
  "QUEUE_TIMEOUT",
  "NO_CAPACITY",
  "SHUTTING_DOWN",
  "SANDBOX_START_FAILED",
  "INSTANCE_GONE",
  "DRIVER_UNAVAILABLE",
  /** A service a sandbox needs (the Docker engine) cannot be reached. */
  "BACKEND_DOWN",
  "INTERNAL",
  // durable invocations
  /** No call with that id (it never existed, or retention removed it). */
  "CALL_NOT_FOUND",
  /** A call in a state the operation does not apply to (replaying a call that is not dead). */
  "CALL_STATE",
  /** The invocation store's disk is full: nothing was accepted. */
  "STORE_FULL",
  /** The invocation store's file is not a database Fennec can use (found at start). */
  "STORE_CORRUPT",
  /** The store failed otherwise (I/O error, locked by another process). */
  "STORE_UNAVAILABLE",
  /** An async call older than its function's `[async] max-age` before it could run (dead-lettered). */
  "CALL_EXPIRED",
  /** An X-Callback-Url that is not http(s) or not on the allow-list. */
  "CALLBACK_NOT_ALLOWED",
  /** A chain deeper than the limit (a cycle ends here too). */
  "CHAIN_TOO_DEEP",
  /** A function chained a function of another user. */
  "CHAIN_OTHER_USER",
  /** An awaited child that nothing can run: the node's memory budget is spent. */
  "CHAIN_NO_CAPACITY",
  /** A per-user state value or key over its size limit. */
  "STATE_TOO_LARGE",
  // the cluster (NATS JetStream)
  /** `--cluster` names a NATS server that cannot be reached, or lacks JetStream (found at start). */
  "CLUSTER_UNREACHABLE",
  /** `--cluster-replicas` out of 1–5, without `--cluster`, or more copies than the NATS cluster can hold (found at start). */
  "CLUSTER_REPLICAS",
  /**
   * The cluster's NATS server refused this node's credentials (a wrong password, token, nkey or
   * .creds file; or none where the server requires some): found at start, like CLUSTER_UNREACHABLE.
   */
  "CLUSTER_AUTH",
  /** A function shared by another node that this node will not unpack (a bad path, a link, a wrong digest). */
  "ARTEFACT_INVALID",
  /** Another live node already uses this `--node` name: the second is refused at start. */
  "NODE_NAME_TAKEN",
  /** The node a call was forwarded to died or left while the call ran: it failed fast, not at its timeout. */
  "NODE_LOST",
  /**
   * A request that carries the headers of a call forwarded between nodes (`x-fennec-forwarded-by`,
   * ...) without a valid signature of the cluster's forwarding key: refused, never served as one.
   */
  "FORWARD_UNAUTHENTICATED",
  /** No live node of the cluster has the function's sandbox (a heterogeneous cluster). */
  "NO_NODE_FOR_SANDBOX",
  // the function's fault
  "FN_CONFIG_INVALID",
  "FN_BAD_MODULE",
  "FN_INIT_TIMEOUT",
  "FN_TIMEOUT",
  "FN_TRAP",
  "FN_EXIT",
  "FN_OOM",
  "FN_CRASHED",
  "FN_BAD_RESPONSE",
  /**
   * A response over the function's `max-response-body` (a wasm module's: over the driver's output
   * cap when it sets none), or larger than Fennec may hold where it keeps a copy (async results).
   */
  "FN_RESPONSE_TOO_LARGE",
  /** An async call's last attempt answered a status its function's `[async] retry-statuses` lists. */
  "FN_RETRYABLE_STATUS",
] as const;

export type ErrorCode = (typeof ErrorCodes)[number];

/**
 * The details of an error about a sandbox that ended on its own (FN_CRASHED, FN_OOM): its exit
 * status, 128 + n when signal n ended it, and that signal's name. The gateway sends details with
 * the error, so a caller sees the exit code too.
 */
export type ExitDetails = {
  readonly exitCode: number;
  readonly signal: string | null;
  /** For FN_OOM: the limit it exceeded. */
  readonly memoryMiB?: number;
};

/** The one error class of Fennec: a stable code, a human message, optional structured details. */
export class FennecError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options?: { cause?: unknown; details?: Record<string, unknown> },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = "FennecError";
    this.code = code;
    this.details = options?.details;
  }

  /** True when the function (its code or config) is to blame rather than the platform. */
  get isFunctionFault(): boolean {
    return this.code.startsWith("FN_");
  }
}

/** Wraps anything thrown into a FennecError, keeping FennecErrors as they are. */
export function toFennecError(err: unknown, fallback: ErrorCode = "INTERNAL"): FennecError {
  if (err instanceof FennecError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new FennecError(fallback, message, { cause: err });
}
