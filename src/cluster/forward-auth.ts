/**
 * Proof that a forwarded call comes from a member of the cluster (docs/cluster.md, "Security").
 *
 * The forwarding node signs each forwarded request with the cluster's forwarding key (a secret
 * every member reads from NATS: cluster-secret.ts): HMAC-SHA256 over the fields the receiving
 * node acts on — the forwarding node, the node it is meant for, the call id it is to run under,
 * the correlation id, the placement's reason, the method, the path and query — and the time of
 * signing. The receiving node checks it before it trusts any of those headers. The body is not
 * signed: it streams, and is not read before the call is placed.
 *
 * What it stops: a client (or anything that reaches a gateway but is not a member) cannot pin a
 * call to a node, choose its call id (and so overwrite another call's record), or forge the
 * `via` and `placement` of records. A captured request cannot be replayed after `WINDOW_MS`,
 * to another node (the receiver is signed), or a second time within it (seen signatures are
 * kept for the window). Not stopped: reading the traffic itself (plain HTTP between gateways;
 * a private network, or TLS in front, keeps it from others).
 */
import { createHmac, createSecretKey, timingSafeEqual, type KeyObject } from "node:crypto";
import { FennecError } from "../core/errors.js";

/** The request header carrying the signature: `v1.<ms since epoch>.<base64url HMAC>`. */
export const FORWARD_AUTH_HEADER = "x-fennec-forward-auth";

/** How far the signing time may be from the receiver's clock, either way (clock skew + transit). */
export const WINDOW_MS = 30_000;

/** What a signature covers. Every field is a header value or the request line: no newline in any. */
export interface ForwardFields {
  /** The forwarding node (`x-fennec-forwarded-by`). */
  readonly from: string;
  /** The node it is sent to: a signature for one node is refused by every other. */
  readonly to: string;
  readonly callId: string;
  readonly requestId: string;
  /** The placement's reason (`x-fennec-placement`). */
  readonly placement: string;
  readonly method: string;
  /** Path and query, as the request line has them. */
  readonly url: string;
}

/** Why a signature was refused (said in the 403's message and the receiver's log). */
export type Refusal = "missing" | "malformed" | "expired" | "replayed" | "bad signature";

export class ForwardAuth {
  /** A key object, made once: cheaper per MAC than handing the bytes to every createHmac. */
  readonly #key: KeyObject;
  readonly #windowMs: number;
  /** Signatures seen in this window and the last: a replay within the window is refused. */
  #seen = new Set<string>();
  #seenBefore = new Set<string>();
  #rotatedAt = 0;

  constructor(key: Buffer, options: { readonly windowMs?: number } = {}) {
    if (key.length < 32) throw new Error("the cluster's forwarding key must be at least 32 bytes");
    this.#key = createSecretKey(key);
    this.#windowMs = options.windowMs ?? WINDOW_MS;
  }

  #mac(f: ForwardFields, at: string): Buffer {
    return createHmac("sha256", this.#key)
      .update(
        `fennec-forward-v1\n${f.from}\n${f.to}\n${f.callId}\n${f.requestId}\n${f.placement}\n${f.method}\n${f.url}\n${at}`,
      )
      .digest();
  }

  /** The `FORWARD_AUTH_HEADER` value for a request with these fields, signed now. */
  sign(f: ForwardFields, now = Date.now()): string {
    const at = String(now);
    return `v1.${at}.${this.#mac(f, at).toString("base64url")}`;
  }

  /** Undefined when `header` is a valid, fresh, first-seen signature of `f`; else why not. */
  check(f: ForwardFields, header: string | undefined, now = Date.now()): Refusal | undefined {
    if (header === undefined || header === "") return "missing";
    const m = /^v1\.(\d{1,15})\.([A-Za-z0-9_-]{43})$/.exec(header);
    if (!m) return "malformed";
    const at = m[1]!;
    if (Math.abs(now - Number(at)) > this.#windowMs) return "expired";
    const given = Buffer.from(m[2]!, "base64url");
    const want = this.#mac(f, at);
    if (given.length !== want.length || !timingSafeEqual(given, want)) return "bad signature";
    // Only a valid signature is remembered: garbage cannot fill the set. One stays refusable for
    // at least two windows (a signature dated up to a window ahead is valid for two).
    if (now - this.#rotatedAt > 2 * this.#windowMs) {
      this.#seenBefore = this.#seen;
      this.#seen = new Set();
      this.#rotatedAt = now;
    }
    const sig = m[2]!;
    if (this.#seen.has(sig) || this.#seenBefore.has(sig)) return "replayed";
    this.#seen.add(sig);
    return undefined;
  }

  /** As `check`, throwing FORWARD_UNAUTHENTICATED (403) for a refusal. */
  verify(f: ForwardFields, header: string | undefined, now = Date.now()): void {
    const refusal = this.check(f, header, now);
    if (refusal === undefined) return;
    throw new FennecError(
      "FORWARD_UNAUTHENTICATED",
      refusal === "missing"
        ? "this request carries the headers of a call forwarded between cluster nodes but no signature: only a node of the cluster may send them"
        : `this request carries the headers of a call forwarded between cluster nodes with a signature that is ${refusal === "expired" ? "outside its validity window (are the nodes' clocks in sync?)" : refusal === "replayed" ? "used already" : refusal === "malformed" ? "malformed" : "not the cluster's"}: only a node of the cluster may send them`,
      { details: { reason: refusal } },
    );
  }
}
