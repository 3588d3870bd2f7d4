import { FennecError } from "../core/errors.js";

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * Matches readiness callbacks (`/ready/<instance-id>`) to the instances waiting for them.
 * A callback that arrives before anyone waits is remembered, so a fast guest cannot be missed.
 */
export class ReadinessHub {
  readonly #waiters = new Map<string, Waiter>();
  /** Instances that will call back (callbacks for any other id are spurious). */
  readonly #expected = new Set<string>();
  /** Callbacks that arrived before their instance started waiting. */
  readonly #early = new Set<string>();

  /** Marks an instance ready; returns false for an id nobody expects (logged as spurious by callers). */
  signal(instanceId: string): boolean {
    const waiter = this.#waiters.get(instanceId);
    if (!waiter) {
      if (this.#expected.has(instanceId)) this.#early.add(instanceId);
      return this.#expected.has(instanceId);
    }
    this.#waiters.delete(instanceId);
    waiter.resolve();
    return true;
  }

  /** Declares that `instanceId` will call back; must precede starting the sandbox. */
  expect(instanceId: string): void {
    this.#expected.add(instanceId);
  }

  /** Forgets an instance (after it is ready or has failed). */
  forget(instanceId: string): void {
    this.#expected.delete(instanceId);
    this.#early.delete(instanceId);
    const waiter = this.#waiters.get(instanceId);
    this.#waiters.delete(instanceId);
    waiter?.reject(
      new FennecError("INSTANCE_GONE", `instance ${instanceId} was stopped before it called back`),
    );
  }

  wait(instanceId: string, signal: AbortSignal): Promise<void> {
    if (this.#early.delete(instanceId)) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        this.#waiters.delete(instanceId);
        reject(signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason)));
      };
      if (signal.aborted) return onAbort();
      signal.addEventListener("abort", onAbort, { once: true });
      this.#waiters.set(instanceId, {
        resolve: () => {
          signal.removeEventListener("abort", onAbort);
          resolve();
        },
        reject: (err) => {
          signal.removeEventListener("abort", onAbort);
          reject(err);
        },
      });
    });
  }

  get pending(): number {
    return this.#expected.size;
  }
}
