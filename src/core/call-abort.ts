/**
 * Cancelling a call, lighter than `AbortController`. Making a controller and adding and removing
 * a listener on its signal costs ≈ 15 µs here (measured, /tmp micro-benchmark in the issue-11
 * note), several times over per call on the warm path, and most warm calls never need one: a call
 * answered at once (a wasm call run on the gateway's thread, a small response read whole) ends
 * before anything could be cancelled. A `CallAbort` is a flag and a set of listeners; the real
 * `AbortSignal` is made only when a driver asks for `signal`.
 */

/** What the scheduler and the instance lifecycle need of a caller's cancellation. */
export interface AbortLike {
  readonly aborted: boolean;
  readonly reason: unknown;
  addEventListener(type: "abort", listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: "abort", listener: () => void): void;
}

export class CallAbort implements AbortLike {
  #controller: AbortController | undefined;
  #aborted = false;
  #reason: unknown;
  readonly #listeners = new Set<() => void>();

  /** A real signal for code that needs one, made on first use (already aborted if the call was). */
  get signal(): AbortSignal {
    if (!this.#controller) {
      this.#controller = new AbortController();
      if (this.#aborted) this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }

  get aborted(): boolean {
    return this.#aborted;
  }

  get reason(): unknown {
    return this.#reason;
  }

  /** Aborts once: the signal (if one was made) and every listener see it. */
  abort(reason?: unknown): void {
    if (this.#aborted) return;
    this.#aborted = true;
    this.#reason = reason ?? new DOMException("This operation was aborted", "AbortError");
    this.#controller?.abort(this.#reason);
    const listeners = [...this.#listeners];
    this.#listeners.clear();
    for (const listener of listeners) listener();
  }

  /** Listeners run once, on abort; one added after the abort never runs (as on an AbortSignal). */
  addEventListener(_type: "abort", listener: () => void): void {
    if (!this.#aborted) this.#listeners.add(listener);
  }

  removeEventListener(_type: "abort", listener: () => void): void {
    this.#listeners.delete(listener);
  }
}
