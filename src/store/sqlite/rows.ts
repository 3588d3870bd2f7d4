import type { CallRecord, CallState, CallbackState, StoredRequest, StoredResponse } from "../contract.js";

/** A `calls` row as SQLite returns it (NULL for what a record leaves undefined). */
export interface CallRow {
  id: string;
  function: string;
  kind: string;
  state: string;
  node: string | null;
  parent_id: string | null;
  attempt: number;
  submitted_at: number;
  started_at: number | null;
  finished_at: number | null;
  start_type: string | null;
  queue_wait_ms: number | null;
  init_ms: number | null;
  ttfb_ms: number | null;
  exec_ms: number | null;
  status: number | null;
  error_code: string | null;
  error_message: string | null;
  not_before: number | null;
  idempotency_key: string | null;
  callback_url: string | null;
  /** Schema 2; INSERT_CALL leaves it NULL (a call's delivery starts when it ends). */
  callback_state: string | null;
  /** Schema 3: a forwarded call's entry node and placement reason (absent from rows built here). */
  via?: string | null;
  placement?: string | null;
}

const opt = <T>(v: T | null): T | undefined => (v === null ? undefined : v);
const nul = <T>(v: T | undefined): T | null => (v === undefined ? null : v);

export function recordOf(row: CallRow): CallRecord {
  return {
    id: row.id,
    function: row.function,
    kind: row.kind as CallRecord["kind"],
    state: row.state as CallState,
    node: opt(row.node),
    parentId: opt(row.parent_id),
    attempt: row.attempt,
    submittedAt: row.submitted_at,
    startedAt: opt(row.started_at),
    finishedAt: opt(row.finished_at),
    startType: opt(row.start_type),
    queueWaitMs: opt(row.queue_wait_ms),
    initMs: opt(row.init_ms),
    ttfbMs: opt(row.ttfb_ms),
    execMs: opt(row.exec_ms),
    status: opt(row.status),
    errorCode: opt(row.error_code),
    errorMessage: opt(row.error_message),
    notBefore: opt(row.not_before),
    idempotencyKey: opt(row.idempotency_key),
    callbackUrl: opt(row.callback_url),
    // Only when set: a record without a callback reads back as it was handed over.
    ...(row.callback_state === null ? {} : { callbackState: row.callback_state as CallbackState }),
    ...(row.via == null ? {} : { via: row.via }),
    ...(row.placement == null ? {} : { placement: row.placement }),
  };
}

/** The record's columns in the order of `INSERT_CALL` (positional: the cheapest bind). */
export function rowOf(r: CallRecord, bytes: number): unknown[] {
  return [
    r.id,
    r.function,
    r.kind,
    r.state,
    nul(r.node),
    nul(r.parentId),
    r.attempt,
    r.submittedAt,
    nul(r.startedAt),
    nul(r.finishedAt),
    nul(r.startType),
    nul(r.queueWaitMs),
    nul(r.initMs),
    nul(r.ttfbMs),
    nul(r.execMs),
    nul(r.status),
    nul(r.errorCode),
    nul(r.errorMessage),
    nul(r.notBefore),
    nul(r.idempotencyKey),
    nul(r.callbackUrl),
    bytes,
    nul(r.via),
    nul(r.placement),
  ];
}

export const INSERT_CALL = `INSERT INTO calls (id, function, kind, state, node, parent_id, attempt,
  submitted_at, started_at, finished_at, start_type, queue_wait_ms, init_ms, ttfb_ms, exec_ms, status,
  error_code, error_message, not_before, idempotency_key, callback_url, bytes, via, placement)
  VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`;

/** The figures an attempt may report, as columns; anything else in a Partial<CallRecord> is ignored. */
const FIGURES: ReadonlyArray<readonly [keyof CallRecord, string]> = [
  ["startType", "start_type"],
  ["queueWaitMs", "queue_wait_ms"],
  ["initMs", "init_ms"],
  ["ttfbMs", "ttfb_ms"],
  ["execMs", "exec_ms"],
  ["status", "status"],
  ["errorCode", "error_code"],
  ["errorMessage", "error_message"],
  ["startedAt", "started_at"],
  // The async engine gives an attempt back when the platform, not the function, failed it.
  ["attempt", "attempt"],
];

/** `SET` clauses and their values for the figures present in `figures`. */
export function figureColumns(figures: Partial<CallRecord>): { sets: string[]; values: unknown[] } {
  const sets: string[] = [];
  const values: unknown[] = [];
  for (const [field, column] of FIGURES) {
    if (!(field in figures)) continue;
    sets.push(`${column} = ?`);
    values.push(nul(figures[field]));
  }
  return { sets, values };
}

export interface RequestRow {
  method: string;
  path: string;
  query: string;
  headers: string;
  body: Buffer;
}

export const requestOf = (row: RequestRow): StoredRequest => ({
  method: row.method,
  path: row.path,
  query: row.query,
  headers: JSON.parse(row.headers) as Record<string, string>,
  body: new Uint8Array(row.body.buffer, row.body.byteOffset, row.body.byteLength),
});

export interface ResponseRow {
  status: number;
  headers: string;
  body: Buffer;
}

export const responseOf = (row: ResponseRow): StoredResponse => ({
  status: row.status,
  headers: JSON.parse(row.headers) as Array<[string, string]>,
  body: new Uint8Array(row.body.buffer, row.body.byteOffset, row.body.byteLength),
});

/** A Uint8Array as a Buffer SQLite binds as a BLOB, without copying. */
export const blob = (bytes: Uint8Array): Buffer =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
