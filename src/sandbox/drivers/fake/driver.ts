import { FennecError } from "../../../core/errors.js";
import type { InvokeRequest, InvokeResponse } from "../../../core/types.js";
import type { FunctionConfig } from "../../../config/function-config.js";
import type { InvokeContext, SandboxDriver, SandboxHandle, StartContext } from "../../contract.js";

/** Programmable behaviour of the in-memory driver, read at each start and each invocation. */
export interface FakeBehaviour {
  /** Milliseconds before an instance is ready. */
  startDelayMs: number;
  /** Fail starts with this error. */
  startError: FennecError | undefined;
  /** Never become ready (until the start deadline). */
  hangOnStart: boolean;
  /** Become ready by calling the readiness callback URL over real HTTP, as a guest would. */
  useCallback: boolean;
  /** Milliseconds an invocation takes. */
  invokeDelayMs: number;
  /** Builds the response; default echoes the body with the instance id in a header. */
  respond: (req: InvokeRequest, instanceId: string) => InvokeResponse;
  memoryMiB: number;
}

/**
 * A real implementation of the driver contract that runs nothing: instances are objects with
 * programmable latency and failures. For testing the scheduler and lifecycle logic only; it
 * proves nothing about any real sandbox.
 */
export class FakeDriver implements SandboxDriver {
  readonly name = "fake";
  readonly capabilities = { snapshot: false, oomDetection: false } as const;
  readonly behaviour: FakeBehaviour = {
    startDelayMs: 0,
    startError: undefined,
    hangOnStart: false,
    useCallback: false,
    invokeDelayMs: 0,
    respond: (req, id) => ({ status: 200, headers: [["x-instance", id]], body: req.body }),
    memoryMiB: 64,
  };
  readonly live = new Set<string>();
  starts = 0;
  destroys = 0;
  closes = 0;
  readonly #crashers = new Map<string, (e: Error) => void>();

  memoryMiB(_config: FunctionConfig): number {
    return this.behaviour.memoryMiB;
  }

  /** Simulates the sandbox of `instanceId` dying on its own. */
  crash(instanceId: string): void {
    this.#crashers.get(instanceId)?.(new FennecError("FN_CRASHED", `fake instance ${instanceId} crashed`));
  }

  async start(ctx: StartContext): Promise<SandboxHandle> {
    this.starts++;
    const b = this.behaviour;
    if (b.hangOnStart)
      await new Promise((_, reject) => ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason)));
    if (b.startDelayMs > 0) await sleep(b.startDelayMs, ctx.signal);
    if (b.startError) throw b.startError;
    if (b.useCallback) {
      const waiting = ctx.waitForCallback();
      await fetch(ctx.callbackUrl);
      await waiting;
    }
    const id = ctx.instanceId;
    this.live.add(id);
    const exitListeners: Array<(e: Error) => void> = [];
    this.#crashers.set(id, (e) => {
      this.live.delete(id);
      for (const l of exitListeners) l(e);
    });
    const pendingAborts = new Set<() => void>();
    const handle: SandboxHandle = {
      invoke: async (req: InvokeRequest, ictx: InvokeContext) => {
        if (!this.live.has(id)) throw new FennecError("FN_CRASHED", "instance is dead");
        if (this.behaviour.invokeDelayMs > 0) {
          await sleep(this.behaviour.invokeDelayMs, ictx.signal, pendingAborts);
        }
        if (!this.live.has(id)) throw new FennecError("FN_CRASHED", "instance died mid-request");
        return this.behaviour.respond(req, id);
      },
      close: async () => {
        this.closes++;
        this.live.delete(id);
      },
      destroy: async () => {
        this.destroys++;
        this.live.delete(id);
        for (const abort of pendingAborts) abort();
      },
      onExit: (l) => exitListeners.push(l),
    };
    return handle;
  }
}

function sleep(ms: number, signal: AbortSignal, aborts?: Set<() => void>): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(done, ms);
    function done() {
      aborts?.delete(onAbort);
      signal.removeEventListener("abort", onAbort);
      resolve();
    }
    function onAbort() {
      clearTimeout(timer);
      aborts?.delete(onAbort);
      reject(signal.reason ?? new Error("aborted"));
    }
    aborts?.add(onAbort);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
