import { setTimeout as sleep } from "node:timers/promises";
import { Agent, request } from "undici";
import { toFennecError } from "../core/errors.js";
import { publishAsyncCall } from "../core/events.js";
import type { Logger } from "../core/log.js";
import type { CallbackPolicy } from "./callback-policy.js";

export interface CallbackOptions {
  /** Deliveries of one result at most, the first included (default 5). */
  readonly attempts?: number;
  /** Backoff before the second attempt; doubles per attempt, jittered, up to a minute (default 1 s). */
  readonly backoffMs?: number;
  /** One attempt may take this long, connection to response end (default 10 s). */
  readonly timeoutMs?: number;
  /** Deliveries pending at once; a result beyond is not called back, and says so (default 1000). */
  readonly maxPending?: number;
}

/** One finished call's result, to be POSTed to its `X-Callback-Url`. */
export interface CallbackDelivery {
  readonly url: string;
  readonly callId: string;
  /** `user/name`. */
  readonly function: string;
  /** The function's status, or the error's. */
  readonly status: number;
  /** The function's content type, or JSON for an error. */
  readonly contentType: string | undefined;
  readonly body: Uint8Array;
  readonly durationMs: number;
  /** `succeeded`, `failed` or `dead`. */
  readonly state: string;
  readonly errorCode: string | undefined;
}

/** How a delivery ended; `dropped`: cut by Fennec stopping, still owed. */
export type CallbackOutcome = "delivered" | "given-up" | "dropped";

/** OpenFaaS names a default-user function by its name alone; others are `user/name`. */
function functionName(key: string): string {
  return key.startsWith("default/") ? key.slice("default/".length) : key;
}

/** The receiver refused for good: retrying the same POST will not change its mind. */
function isFinalRefusal(status: number): boolean {
  return status >= 400 && status < 500 && status !== 408 && status !== 429;
}

/**
 * Delivers results to callback URLs (OpenFaaS's `X-Callback-Url`): a POST with `X-Call-Id`,
 * `X-Function-Status`, `X-Duration-Seconds` and `X-Function-Name`, the function's body and type.
 * Each attempt has a deadline; failures (a network error, a timeout, a 5xx, 408 or 429) are retried
 * with backoff a bounded number of times, then given up. Every outcome is logged and counted
 * (`fennec_async_callbacks_total`). Retries are in memory: one pending when Fennec stops is
 * dropped here (logged); the engine keeps it pending in the store and sends it again at the next start.
 */
export class Callbacks {
  readonly #policy: CallbackPolicy;
  readonly #log: Logger;
  readonly #node: string;
  readonly #attempts: number;
  readonly #backoffMs: number;
  readonly #timeoutMs: number;
  readonly #maxPending: number;
  readonly #pending = new Set<Promise<CallbackOutcome>>();
  readonly #stop = new AbortController();
  /** One agent per lookup rule: allow-listed hosts resolve freely, others only to public addresses. */
  readonly #agents = new Map<string, Agent>();

  constructor(policy: CallbackPolicy, log: Logger, node: string, options: CallbackOptions = {}) {
    this.#policy = policy;
    this.#log = log;
    this.#node = node;
    this.#attempts = options.attempts ?? 5;
    this.#backoffMs = options.backoffMs ?? 1000;
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#maxPending = options.maxPending ?? 1000;
  }

  /** Throws CALLBACK_NOT_ALLOWED for a URL that may not be called back (checked at submission). */
  check(url: string): void {
    this.#policy.check(url);
  }

  /**
   * Starts delivering in the background; resolves with how it ended: `dropped` when Fennec is
   * stopping (the delivery is still owed), never rejects.
   */
  send(delivery: CallbackDelivery): Promise<CallbackOutcome> {
    if (this.#stop.signal.aborted) return Promise.resolve("dropped");
    if (this.#pending.size >= this.#maxPending) {
      this.#log.warn("callback not sent: too many callbacks pending", {
        callId: delivery.callId,
        pending: this.#pending.size,
      });
      this.#publish(delivery, "failed");
      return Promise.resolve("given-up");
    }
    const work = this.#deliver(delivery).finally(() => this.#pending.delete(work));
    this.#pending.add(work);
    return work;
  }

  #agentFor(url: URL): Agent {
    const lookup = this.#policy.lookupFor(url.hostname.replace(/^\[(.*)\]$/, "$1").toLowerCase());
    const key = lookup ? "public" : "listed";
    let agent = this.#agents.get(key);
    if (!agent) {
      agent = new Agent({ connect: lookup ? { lookup } : {}, keepAliveTimeout: 4000 });
      this.#agents.set(key, agent);
    }
    return agent;
  }

  async #deliver(d: CallbackDelivery): Promise<CallbackOutcome> {
    const headers: Record<string, string> = {
      "x-call-id": d.callId,
      "x-function-status": String(d.status),
      "x-duration-seconds": (d.durationMs / 1000).toFixed(6),
      "x-function-name": functionName(d.function),
      "x-fennec-call-state": d.state,
      "user-agent": "fennec-callback",
    };
    if (d.contentType) headers["content-type"] = d.contentType;
    if (d.errorCode) headers["x-fennec-error"] = d.errorCode;
    let why = "";
    for (let attempt = 1; attempt <= this.#attempts; attempt++) {
      if (attempt > 1) {
        const ceiling = Math.min(60_000, this.#backoffMs * 2 ** (attempt - 2));
        try {
          await sleep(ceiling / 2 + Math.random() * (ceiling / 2), undefined, { signal: this.#stop.signal });
        } catch {
          break; // Fennec is stopping
        }
      }
      // A controller and a timer of its own per attempt: `AbortSignal.any` holds its sources weakly,
      // and a collected `AbortSignal.timeout` never fires (an attempt then hung for good).
      const perAttempt = new AbortController();
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        perAttempt.abort();
      }, this.#timeoutMs);
      const onStop = () => perAttempt.abort();
      this.#stop.signal.addEventListener("abort", onStop, { once: true });
      try {
        const url = new URL(d.url);
        const res = await request(url, {
          method: "POST",
          headers,
          body: d.body,
          dispatcher: this.#agentFor(url),
          signal: perAttempt.signal,
        });
        await res.body.dump({ limit: 64 * 1024 });
        if (res.statusCode >= 200 && res.statusCode < 300) {
          this.#log.info("callback delivered", {
            callId: d.callId,
            url: d.url,
            attempt,
            status: res.statusCode,
          });
          this.#publish(d, "delivered");
          return "delivered";
        }
        why = `answered ${res.statusCode}`;
        if (isFinalRefusal(res.statusCode)) break;
      } catch (err) {
        why = timedOut ? `no answer within ${this.#timeoutMs} ms` : toFennecError(err).message;
      } finally {
        clearTimeout(timer);
        this.#stop.signal.removeEventListener("abort", onStop);
      }
      this.#log.debug("callback attempt failed", { callId: d.callId, url: d.url, attempt, error: why });
    }
    const stopped = this.#stop.signal.aborted;
    this.#log.warn(
      stopped ? "callback cut: Fennec is stopping (sent again at the next start)" : "callback given up",
      {
        callId: d.callId,
        url: d.url,
        error: why,
      },
    );
    this.#publish(d, "failed");
    return stopped ? "dropped" : "given-up";
  }

  #publish(d: CallbackDelivery, outcome: "delivered" | "failed"): void {
    publishAsyncCall({ node: this.#node, function: d.function, callId: d.callId, kind: "callback", outcome });
  }

  /** Stops: pending retries are dropped, attempts under way aborted. Idempotent. */
  async close(): Promise<void> {
    this.#stop.abort();
    await Promise.allSettled([...this.#pending]);
    await Promise.all([...this.#agents.values()].map((a) => a.close()));
    this.#agents.clear();
  }
}
