import type { FunctionId } from "../core/types.js";

/**
 * The sandbox configs by kind. Each sandbox kind adds its own from its folder
 * (`src/sandbox/drivers/<kind>/kind.ts`), by declaration merging:
 *
 * ```ts
 * declare module "../../../config/function-config.js" {
 *   interface SandboxConfigs { oci: OciSandboxConfig }
 * }
 * ```
 *
 * so the config layer never imports a driver, and `config.sandbox.kind` still narrows to one.
 */
// eslint-disable-next-line @typescript-eslint/no-empty-object-type -- filled by declaration merging
export interface SandboxConfigs {}

/** The typed, validated view of one function's sandbox table; `kind` names the table. */
export type SandboxConfig = SandboxConfigs[keyof SandboxConfigs];

// The drivers written before the kinds owned their configs import these names from here.
export type WasmSandboxConfig = SandboxConfigs["wasm"];
export type VmSandboxConfig = SandboxConfigs["vm"];
export type ContainerSandboxConfig = SandboxConfigs["container"];
export type ProcessSandboxConfig = SandboxConfigs["process"];
export type OciSandboxConfig = SandboxConfigs["oci"];

/** `[async]`: how the function's asynchronous calls are retried (times in ms). */
export interface AsyncConfig {
  /** Runs of one call at most, the first included; then it is dead-lettered. */
  readonly attempts: number;
  /** The first retry's backoff ceiling; it doubles per attempt up to `maxBackoffMs` (full jitter). */
  readonly backoffMs: number;
  readonly maxBackoffMs: number;
  /** A call older than this (from its submission) is dead-lettered instead of run. */
  readonly maxAgeMs: number;
  /** Statuses the function declares retryable; any other status it answers is final. */
  readonly retryStatuses: readonly number[];
  /** Async calls of this function run at once at most (beside its instance limits); unset: those limits only. */
  readonly concurrency: number | undefined;
}

/** What a function.toml without `[async]` gets. */
export const DEFAULT_ASYNC: AsyncConfig = {
  attempts: 3,
  backoffMs: 1000,
  maxBackoffMs: 300_000,
  maxAgeMs: 6 * 3_600_000,
  retryStatuses: [],
  concurrency: undefined,
};

/** The typed, validated view of one function.toml that flows inward from the registry. */
export interface FunctionConfig {
  readonly id: FunctionId;
  /** `user/name`. */
  readonly key: string;
  /** Absolute path of the function directory. */
  readonly dir: string;
  /**
   * function.toml as messages name it: relative to the registry (`hello/function.toml`,
   * `@alice/fn/function.toml`), so no error shown to a caller carries an absolute host path.
   */
  readonly file: string;
  readonly keepaliveMs: number;
  readonly concurrentRequests: number;
  readonly singleUse: boolean;
  readonly timeoutMs: number;
  readonly minInstances: number;
  readonly maxInstances: number;
  readonly maxQueue: number;
  readonly queueTimeoutMs: number;
  /**
   * Whether the caller's `Authorization`, `Proxy-Authorization` and `Cookie` headers reach the
   * function; off unless its function.toml opts in, so the admin token a client sends, or a
   * browser's cookies for this host, are never handed to function code by default.
   */
  readonly forwardCredentials: boolean;
  /**
   * Largest request body the function takes, in bytes (`max-request-body`); unset, the gateway's
   * `--body-limit` applies. It may be larger than that (an upload function) or smaller.
   */
  readonly maxRequestBodyBytes?: number;
  /**
   * Largest response body the function may send, in bytes (`max-response-body`); past it the
   * response is cut with FN_RESPONSE_TOO_LARGE. Unset, a streamed response has no limit.
   */
  readonly maxResponseBodyBytes?: number;
  readonly async: AsyncConfig;
  readonly sandbox: SandboxConfig;
  /** A fingerprint of the file's content: instances started from older settings are recycled. */
  readonly revision: string;
}
