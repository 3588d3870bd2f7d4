import type { CallRecord, NewAsyncCall } from "./contract.js";

/** The record of an async call just accepted, as every store keeps it: queued, not run yet. */
export function queuedRecord(call: NewAsyncCall): CallRecord {
  return {
    id: call.id,
    function: call.function,
    kind: "async",
    state: "queued",
    node: undefined,
    parentId: call.parentId,
    attempt: 0,
    submittedAt: call.submittedAt,
    startedAt: undefined,
    finishedAt: undefined,
    startType: undefined,
    queueWaitMs: undefined,
    initMs: undefined,
    ttfbMs: undefined,
    execMs: undefined,
    status: undefined,
    errorCode: undefined,
    errorMessage: undefined,
    notBefore: undefined,
    idempotencyKey: call.idempotencyKey,
    callbackUrl: call.callbackUrl,
  };
}

/**
 * What a record's strings weigh, for retention by bytes (UTF-16 length: close enough, cheap).
 * Every store counts alike, so one retention setting means the same on one node and on many.
 */
export function recordBytes(r: CallRecord): number {
  return (
    r.id.length +
    r.function.length +
    (r.errorMessage?.length ?? 0) +
    (r.callbackUrl?.length ?? 0) +
    (r.idempotencyKey?.length ?? 0)
  );
}

/** A replayed call's figures: those of its earlier attempts no longer describe it. */
export const CLEARED_FIGURES: Partial<CallRecord> = {
  startType: undefined,
  queueWaitMs: undefined,
  initMs: undefined,
  ttfbMs: undefined,
  execMs: undefined,
  status: undefined,
  errorCode: undefined,
  errorMessage: undefined,
};
