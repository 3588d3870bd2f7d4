import { FennecError } from "../core/errors.js";
import type { AsyncConfig } from "../config/function-config.js";

/**
 * Capacity and lifecycle faults: the platform had no room (or was stopping), the function did
 * nothing wrong. Such a call is put back without spending an attempt, bounded by its max-age.
 */
const PLATFORM_TRANSIENT = new Set<string>([
  "QUEUE_FULL",
  "QUEUE_TIMEOUT",
  "NO_CAPACITY",
  "SHUTTING_DOWN",
  "INSTANCE_GONE",
  "BACKEND_DOWN",
  "SANDBOX_START_FAILED",
  "STORE_UNAVAILABLE",
]);

/** How long a call put back for the platform's sake waits before it is taken again. */
export const REQUEUE_DELAY_MS = 1000;

/** How one attempt ended. */
export type AttemptOutcome = { readonly status: number } | { readonly error: FennecError };

/** What to do with the call after an attempt. */
export type Verdict =
  /** Keep the result: `succeeded` (the function answered), `failed` (a fault not worth retrying). */
  | { readonly kind: "finish"; readonly state: "succeeded" | "failed" }
  /** Run again at `notBefore`, the attempt counted. */
  | { readonly kind: "retry"; readonly notBefore: number; readonly error: FennecError }
  /** Run again at `notBefore`, the attempt given back (the platform's fault). */
  | { readonly kind: "requeue"; readonly notBefore: number; readonly error: FennecError }
  /** Dead-letter it with this error. */
  | { readonly kind: "bury"; readonly error: FennecError };

/** Exponential backoff with full jitter: uniform in [0, min(max, initial × 2^(attempt-1))). */
export function backoffMs(config: AsyncConfig, attempt: number, random = Math.random): number {
  const ceiling = Math.min(config.maxBackoffMs, config.backoffMs * 2 ** Math.min(attempt - 1, 40));
  return Math.floor(random() * ceiling);
}

/** The error a call too old to run is dead-lettered with. */
export function expired(
  config: AsyncConfig,
  key: string,
  submittedAt: number,
  now: number,
): FennecError | undefined {
  if (now - submittedAt <= config.maxAgeMs) return undefined;
  return new FennecError(
    "CALL_EXPIRED",
    `${key}: the call is ${Math.round((now - submittedAt) / 1000)} s old, past its [async] max-age of ${Math.round(config.maxAgeMs / 1000)} s`,
  );
}

/**
 * The retry rule (docs/architecture.md, "Asynchronous calls"): a status the function answered is
 * final unless it declares it retryable; the function's faults (`FN_*`) and declared statuses are
 * retried with backoff until `attempts`, then dead-lettered; the platform's capacity faults are put
 * back without spending an attempt; anything else (the function was deleted, its sandbox kind is
 * not on this node, a bug) fails at once. Nothing is retried past `max-age`.
 */
export function decide(
  config: AsyncConfig,
  call: { readonly key: string; readonly attempt: number; readonly submittedAt: number },
  outcome: AttemptOutcome,
  now: number,
  random = Math.random,
): Verdict {
  let error: FennecError;
  if ("status" in outcome) {
    if (!config.retryStatuses.includes(outcome.status)) return { kind: "finish", state: "succeeded" };
    error = new FennecError(
      "FN_RETRYABLE_STATUS",
      `${call.key} answered ${outcome.status}, a status its [async] retry-statuses lists`,
    );
  } else {
    error = outcome.error;
    if (PLATFORM_TRANSIENT.has(error.code)) {
      const notBefore = now + REQUEUE_DELAY_MS;
      const old = expired(config, call.key, call.submittedAt, notBefore);
      return old ? { kind: "bury", error: old } : { kind: "requeue", notBefore, error };
    }
    if (!error.isFunctionFault) return { kind: "finish", state: "failed" };
  }
  if (call.attempt >= config.attempts) return { kind: "bury", error };
  const notBefore = now + backoffMs(config, call.attempt, random);
  if (expired(config, call.key, call.submittedAt, notBefore)) return { kind: "bury", error };
  return { kind: "retry", notBefore, error };
}
