import { toFennecError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import type { InvocationStore, RetentionPolicy } from "./contract.js";

/** How often retention runs (and once at start). */
const PRUNE_EVERY_MS = 60_000;

export const DEFAULT_RETENTION: RetentionPolicy = { maxAgeMs: 7 * 24 * 3_600_000, maxBytes: 2 ** 30 };

/**
 * A node that owns its store alone (the embedded one) starts with every call still marked
 * running orphaned by the process before it, whatever node id that one had: they go back to the
 * queue, so a call that was running when Fennec died runs again. Returns how many.
 */
export async function requeueOrphans(store: InvocationStore): Promise<number> {
  let total = 0;
  for (;;) {
    const running = await store.list({ state: "running", limit: 1000 });
    if (running.length === 0) return total;
    let requeued = 0;
    for (const node of new Set(running.map((r) => r.node ?? "")))
      requeued += await store.requeueRunning(node);
    if (requeued === 0) return total;
    total += requeued;
  }
}

/** Runs retention now and every minute until stopped; a failed round is logged, the next one tries again. */
export function startRetention(
  store: InvocationStore,
  policy: RetentionPolicy,
  log: Logger,
): { stop(): Promise<void> } {
  let running: Promise<void> = Promise.resolve();
  let stopped = false;
  const round = () => {
    running = running.then(async () => {
      if (stopped) return;
      try {
        const { calls, logLines } = await store.prune(policy, Date.now());
        if (calls + logLines > 0)
          log.info("retention removed old calls and log lines", { store: store.describe, calls, logLines });
      } catch (err) {
        const e = toFennecError(err);
        log.warn("retention failed; it runs again in a minute", {
          store: store.describe,
          code: e.code,
          error: e.message,
        });
      }
    });
  };
  round();
  const timer = setInterval(round, PRUNE_EVERY_MS);
  timer.unref();
  return {
    stop: async () => {
      stopped = true;
      clearInterval(timer);
      await running;
    },
  };
}
