import { FennecError } from "../core/errors.js";
import type { CallRecord } from "./contract.js";

interface Waiter {
  readonly resolve: (record: CallRecord) => void;
  readonly reject: (err: unknown) => void;
}

/**
 * Who waits for which call to end (`whenFinished`), told in-process when a store has written the
 * terminal state. Any store on one node can use it; a clustered one adds its own remote events.
 */
export class CallWaiters {
  readonly #waiters = new Map<string, Set<Waiter>>();

  /** Waits for `finished(id, ...)`; the signal's abort rejects with its reason and forgets the waiter. */
  wait(id: string, signal?: AbortSignal): Promise<CallRecord> {
    return new Promise<CallRecord>((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      let set = this.#waiters.get(id);
      if (!set) this.#waiters.set(id, (set = new Set()));
      const onAbort = () => {
        forget();
        reject(signal!.reason);
      };
      const forget = () => {
        signal?.removeEventListener("abort", onAbort);
        set.delete(waiter);
        if (set.size === 0 && this.#waiters.get(id) === set) this.#waiters.delete(id);
      };
      const waiter: Waiter = {
        resolve: (r) => {
          forget();
          resolve(r);
        },
        reject: (e) => {
          forget();
          reject(e);
        },
      };
      set.add(waiter);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Whether anybody waits for `id` to end. */
  waiting(id: string): boolean {
    return this.#waiters.has(id);
  }

  /** Whether anybody waits at all. */
  get any(): boolean {
    return this.#waiters.size > 0;
  }

  finished(record: CallRecord): void {
    for (const w of [...(this.#waiters.get(record.id) ?? [])]) w.resolve(record);
  }

  /** The call was deleted: it will never finish. */
  gone(id: string): void {
    for (const w of [...(this.#waiters.get(id) ?? [])])
      w.reject(new FennecError("CALL_NOT_FOUND", `call ${id} was deleted`));
  }

  /** The store closed: nobody will be told anything any more. */
  closeAll(reason: Error): void {
    for (const set of [...this.#waiters.values()]) for (const w of [...set]) w.reject(reason);
  }
}
