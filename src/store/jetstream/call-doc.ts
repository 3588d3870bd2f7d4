import type { CallRecord, CallState, CallbackState } from "../contract.js";
import { recordBytes } from "../new-call.js";

/**
 * A call as the `calls` bucket keeps it: the record (JSON drops what is undefined) plus what only
 * the queue needs. Every change is a compare-and-set on the key's revision, so two nodes never
 * both lease, end or replay one call.
 */
export interface CallDoc {
  readonly id: string;
  readonly function: string;
  readonly kind: "sync" | "async";
  readonly state: CallState;
  readonly node?: string | undefined;
  readonly parentId?: string | undefined;
  readonly attempt: number;
  readonly submittedAt: number;
  readonly startedAt?: number | undefined;
  readonly finishedAt?: number | undefined;
  readonly startType?: string | undefined;
  readonly queueWaitMs?: number | undefined;
  readonly initMs?: number | undefined;
  readonly ttfbMs?: number | undefined;
  readonly execMs?: number | undefined;
  readonly status?: number | undefined;
  readonly errorCode?: string | undefined;
  readonly errorMessage?: string | undefined;
  readonly notBefore?: number | undefined;
  readonly idempotencyKey?: string | undefined;
  readonly callbackUrl?: string | undefined;
  readonly callbackState?: CallbackState | undefined;
  /**
   * Who delivers a pending callback when it is not `node`, the node that ended the call: a live
   * node that took it over from one gone (`takeCallbacks`).
   */
  readonly callbackNode?: string | undefined;
  /** A forwarded sync call: its entry node, and why it went where it ran (docs/cluster.md). */
  readonly via?: string | undefined;
  readonly placement?: string | undefined;
  /** While running: when the lease runs out (the `now` of the taker's clock plus leaseMs). */
  readonly leaseUntil?: number | undefined;
  /** What retention counts for the call: strings, request and result (as the embedded store). */
  readonly bytes: number;
  /** The name of the result's entry (`r.<id>.<this>`): fresh per write, so a late loser cannot overwrite it. */
  readonly result?: string | undefined;
  readonly resultBytes?: number | undefined;
}

export function recordOf(d: CallDoc): CallRecord {
  return {
    id: d.id,
    function: d.function,
    kind: d.kind,
    state: d.state,
    node: d.node,
    parentId: d.parentId,
    attempt: d.attempt,
    submittedAt: d.submittedAt,
    startedAt: d.startedAt,
    finishedAt: d.finishedAt,
    startType: d.startType,
    queueWaitMs: d.queueWaitMs,
    initMs: d.initMs,
    ttfbMs: d.ttfbMs,
    execMs: d.execMs,
    status: d.status,
    errorCode: d.errorCode,
    errorMessage: d.errorMessage,
    notBefore: d.notBefore,
    idempotencyKey: d.idempotencyKey,
    callbackUrl: d.callbackUrl,
    // Only when set: a record without a callback reads back as it was handed over.
    ...(d.callbackState === undefined ? {} : { callbackState: d.callbackState }),
    ...(d.via === undefined ? {} : { via: d.via }),
    ...(d.placement === undefined ? {} : { placement: d.placement }),
  };
}

/** The figures an attempt may report; anything else in a Partial<CallRecord> is ignored. */
const FIGURES = [
  "startType",
  "queueWaitMs",
  "initMs",
  "ttfbMs",
  "execMs",
  "status",
  "errorCode",
  "errorMessage",
  "startedAt",
  // The async engine gives an attempt back when the platform, not the function, failed it.
  "attempt",
] as const satisfies ReadonlyArray<keyof CallRecord>;

/** `doc` with `fixed` set and the figures present in `figures` (an undefined one clears it). */
export function updated(doc: CallDoc, fixed: Partial<CallDoc>, figures: Partial<CallRecord> = {}): CallDoc {
  const out: Record<string, unknown> = { ...doc, ...fixed };
  for (const f of FIGURES) if (f in figures) out[f] = figures[f];
  // JSON keeps no undefined: a cleared field is absent, as it reads back after a round trip.
  for (const k of Object.keys(out)) if (out[k] === undefined) delete out[k];
  return out as unknown as CallDoc;
}

export const encodeDoc = (d: CallDoc): Uint8Array => Buffer.from(JSON.stringify(d), "utf8");
export const decodeDoc = (b: Uint8Array): CallDoc =>
  JSON.parse(Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("utf8")) as CallDoc;

/** A sync call's record as a doc. */
export const docOfRecord = (r: CallRecord): CallDoc => updated({ ...r, bytes: recordBytes(r) }, {});
