import type { FunctionConfig } from "../config/function-config.js";
import type { InvokeRequest, InvokeResponse } from "../core/types.js";
import type { InstanceLog } from "./call-log.js";

/**
 * The sandbox driver contract: small on purpose. A driver names itself, says what it can do and
 * starts instances; an instance can be invoked, closed gracefully and destroyed. Timeouts, states,
 * idempotence and events live once in `instance.ts`, not in each driver.
 */
export interface DriverCapabilities {
  /** Instances can be started from a snapshot (a start may then be `restored` rather than `cold`). */
  readonly snapshot: boolean;
  /**
   * Exceeding the function's memory limit ends the invocation with FN_OOM: the driver enforces the
   * limit and recognises its kill. Absent means no (the conformance suite then skips its OOM case, saying so).
   */
  readonly oomDetection?: boolean;
}

export interface StartContext {
  readonly instanceId: string;
  readonly config: FunctionConfig;
  /** URL an out-of-process instance calls (GET or POST) once it serves (UniFaaS `%callback`). */
  readonly callbackUrl: string;
  /** Resolves when the callback URL has been called; rejects when `signal` aborts. */
  readonly waitForCallback: () => Promise<void>;
  /** Aborted when the start phase times out or the platform shuts down. */
  readonly signal: AbortSignal;
  /**
   * Where the instance's output goes as function logs (call-log.ts), made when first read: an
   * out-of-process driver hands it what the sandbox writes; the lifecycle tells it of calls.
   */
  readonly log?: InstanceLog;
}

export interface InvokeContext {
  /**
   * Aborted when the invocation times out (the shared lifecycle then destroys the instance), the
   * instance is destroyed, or the client goes away; it stays live until the response body ends.
   */
  readonly signal: AbortSignal;
}

/** A running sandbox as a driver sees it. */
export interface SandboxHandle {
  /**
   * Sends the request, its body streamed as it arrives, and resolves with the response head as
   * soon as it is known, its body still streaming. The lifecycle reads or destroys that body;
   * destroying it must stop the function's work for this request.
   */
  invoke(request: InvokeRequest, ctx: InvokeContext): Promise<InvokeResponse>;
  /**
   * Optional: as `invoke`, but answers at once (a response, not a promise) when it ran the call to
   * its end synchronously (the wasm driver's calls on the gateway's thread), and throws at once
   * what it would reject with then. The lifecycle arms no timer and no listener for such a call:
   * nothing can time out or be cancelled while the thread is running it. Otherwise it returns what
   * `invoke` would.
   */
  invokeNow?(request: InvokeRequest, ctx: InvokeContext): InvokeResponse | Promise<InvokeResponse>;
  /** Stop after in-flight work (drain). Called at most once by the lifecycle. */
  close(): Promise<void>;
  /** Stop now (kill). Called at most once by the lifecycle; must release every resource. */
  destroy(): Promise<void>;
  /** True when the sandbox was restored from a snapshot rather than booted (start type `restored`). */
  readonly restored?: boolean;
  /** Registers a listener for the sandbox dying on its own (crash, OOM kill). */
  onExit?(listener: (reason: Error) => void): void;
}

/** What a start-up sweep removed, and what it found but left alone because it is not provably its own. */
export interface CleanupReport {
  readonly removed: string[];
  readonly leftAlone: Array<{ readonly path: string; readonly reason: string }>;
}

export interface SandboxDriver {
  readonly name: string;
  readonly capabilities: DriverCapabilities;
  /** Checks and prepares a function's artefacts (e.g. compiles and caches a module); may throw FN_BAD_MODULE. */
  prepare?(config: FunctionConfig): Promise<void>;
  /** Starts one instance; resolves once it is ready to serve. */
  start(ctx: StartContext): Promise<SandboxHandle>;
  /** Memory in MiB that one instance of this function is accounted for in the node budget. */
  memoryMiB(config: FunctionConfig): number;
  /**
   * Removes what an earlier crashed run of this driver left behind: only what it can prove a Fennec
   * that is gone created; what it cannot prove is its own is left alone and reported.
   */
  cleanupStale?(): Promise<CleanupReport>;
  /** Releases driver-wide resources (worker pools, caches) at shutdown. */
  close?(): Promise<void>;
}
