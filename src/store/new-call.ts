import type { CallRecord, NewAsyncCall, SyncCallEnd } from "./contract.js";

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
 * The record of a sync call that has ended: what every store keeps for `recordSync(end)` (the
 * columns of record-batch.ts say the same, field by field).
 */
export function syncCallRecord(end: SyncCallEnd): CallRecord {
  const r = end.figures;
  const failed = r.errorCode !== undefined;
  // No start type: it failed before any instance took it (no slot, no start), so it never ran.
  const ran = r.startType !== undefined;
  // A status of 0: the function never answered.
  const answered = r.status !== 0;
  return {
    id: end.id,
    function: r.function,
    kind: "sync",
    state: failed ? "failed" : "succeeded",
    node: end.node,
    parentId: undefined,
    attempt: 1,
    submittedAt: end.submittedAt,
    // The function started running once it had waited for its slot and its instance's start.
    startedAt: ran ? Math.round(end.submittedAt + r.queueWaitMs + r.initMs) : undefined,
    finishedAt: end.finishedAt,
    startType: r.startType,
    queueWaitMs: r.queueWaitMs,
    initMs: r.initMs,
    ttfbMs: answered ? r.ttfbMs : undefined,
    execMs: ran ? r.execMs : undefined,
    status: answered ? r.status : undefined,
    errorCode: r.errorCode,
    errorMessage: failed ? (end.errorMessage ?? r.errorMessage) : undefined,
    notBefore: undefined,
    idempotencyKey: undefined,
    callbackUrl: undefined,
    // Only when forwarded: a record of a call that ran where it came in is as it always was.
    ...(end.via === undefined ? {} : { via: end.via }),
    ...(end.placement ? { placement: end.placement } : {}),
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
