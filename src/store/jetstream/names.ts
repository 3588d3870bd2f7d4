import { createHash } from "node:crypto";

/**
 * The NATS resources one JetStream store uses, all named from one prefix (`fennec` in a cluster;
 * a test gives each case its own, so cases share a server without seeing each other).
 */
export interface StoreNames {
  /** Key-value: one key per call (`c.<id>`), its record and lease as JSON. */
  readonly calls: string;
  /** Key-value: a call's request (`q.<id>`) and result (`r.<id>`), inline or a pointer to `blobs`. */
  readonly payloads: string;
  /** Object store: payloads and state values too large for one message (over max_payload). */
  readonly blobs: string;
  /** Key-value: `i.<hash of function and key>` → the id of the call an idempotency key made. */
  readonly idempotency: string;
  /** Key-value: per-user state values, `v.<user>.<key>`. */
  readonly state: string;
  /** Stream: state append logs, a subject per (user, key). */
  readonly appended: string;
  readonly appendedSubject: (user: string, key: string) => string;
  readonly appendedUserFilter: (user: string) => string;
  /** Stream: function log lines, a subject per function. */
  readonly logs: string;
  readonly logSubject: (fn: string) => string;
  readonly logFilter: string;
}

/** Valid NATS names: letters, digits, `-` and `_`. */
const PREFIX = /^[A-Za-z0-9_-]{1,32}$/;

export function storeNames(prefix: string): StoreNames {
  if (!PREFIX.test(prefix)) throw new Error(`invalid store prefix ${JSON.stringify(prefix)}`);
  return {
    calls: `${prefix}-calls`,
    payloads: `${prefix}-payloads`,
    blobs: `${prefix}-blobs`,
    idempotency: `${prefix}-idempotency`,
    state: `${prefix}-state`,
    appended: `${prefix}-state-appended`,
    appendedSubject: (user, key) => `${prefix}.appended.${token(user)}.${token(key)}`,
    appendedUserFilter: (user) => `${prefix}.appended.${token(user)}.*`,
    logs: `${prefix}-logs`,
    logSubject: (fn) => `${prefix}.logs.${token(fn)}`,
    logFilter: `${prefix}.logs.>`,
  };
}

/**
 * A string as one subject token (and key-value key token): base64url, which has no `.`, `*`, `>`
 * or space, behind a `_` so an empty string is a token too. Reversible (`untoken`), so listing
 * keys needs no second index.
 */
export function token(s: string): string {
  return `_${Buffer.from(s, "utf8").toString("base64url")}`;
}

export function untoken(t: string): string {
  return Buffer.from(t.slice(1), "base64url").toString("utf8");
}

/** The key of a call's record. */
export const callKey = (id: string): string => `c.${token(id)}`;
export const requestKey = (id: string): string => `q.${token(id)}`;
export const responseKey = (id: string, result: string): string => `r.${token(id)}.${result}`;
export const stateKey = (user: string, key: string): string => `v.${token(user)}.${token(key)}`;

/** Idempotency keys are the callers' strings of any length: hashed with the function to one token. */
export const idempotencyKey = (fn: string, key: string): string =>
  `i.${createHash("sha256").update(fn).update("\0").update(key).digest("base64url")}`;
