import type { StartContext } from "./contract.js";
import type { SupervisedChild } from "./supervised-child.js";
import { takeSocket } from "./unprivileged.js";
import { waitForSocket } from "./wait-socket.js";

/** How an instance says that it serves. */
export type Readiness =
  /** It calls the readiness callback URL (UniFaaS `%callback`). */
  | { readonly kind: "callback" }
  /**
   * Something accepts on this Unix socket: an instance with no network to call back over. With
   * `takeTo`, the socket is then moved there, out of the sandbox's reach (`takeSocket`).
   */
  | {
      readonly kind: "socket";
      readonly path: string;
      readonly takeTo?: string;
      /** Rejects if what makes the socket (a port relay beside the sandbox) dies first. */
      readonly failsIf?: Promise<never> | undefined;
    }
  /** The driver's own signal (a guest channel's hello, a restored VM answering a ping). */
  | { readonly kind: "signal"; readonly ready: (signal: AbortSignal) => Promise<void> };

/**
 * The one readiness race of every out-of-process sandbox: ready, against the child exiting first
 * (its exit, told apart as crash, OOM or a failed spawn) and the start's deadline or abort. The
 * losers stop (a socket is no longer polled), and a start that fails (up to taking its socket)
 * destroys the child, releasing all it holds, before it rejects.
 */
export async function awaitReady(
  child: SupervisedChild,
  readiness: Readiness,
  ctx: Pick<StartContext, "signal" | "waitForCallback">,
): Promise<void> {
  const settled = new AbortController();
  const signal = AbortSignal.any([ctx.signal, settled.signal]);
  try {
    await Promise.race([
      ready(readiness, ctx, signal),
      child.exitError().then((err) => Promise.reject(err)),
      ...(readiness.kind === "socket" && readiness.failsIf ? [readiness.failsIf] : []),
      new Promise<never>((_, reject) => {
        const fail = () => reject(ctx.signal.reason);
        if (ctx.signal.aborted) fail();
        signal.addEventListener("abort", fail, { once: true });
      }),
    ]);
    if (readiness.kind === "socket" && readiness.takeTo)
      await takeSocket(readiness.path, readiness.takeTo, child.what);
  } catch (err) {
    settled.abort();
    await child.destroy().catch(() => undefined);
    throw err;
  } finally {
    settled.abort();
  }
}

function ready(
  readiness: Readiness,
  ctx: Pick<StartContext, "waitForCallback">,
  signal: AbortSignal,
): Promise<void> {
  switch (readiness.kind) {
    case "callback":
      return ctx.waitForCallback();
    case "socket":
      return waitForSocket(readiness.path, signal);
    case "signal":
      return readiness.ready(signal);
  }
}
