import { randomUUID } from "node:crypto";
import type { FennecError } from "../core/errors.js";
import type { InvokeResponse } from "../core/types.js";

export type AsyncCall =
  | { readonly state: "pending"; readonly function: string; readonly submittedAt: number }
  | {
      readonly state: "done";
      readonly function: string;
      readonly submittedAt: number;
      readonly response: InvokeResponse;
    }
  | {
      readonly state: "failed";
      readonly function: string;
      readonly submittedAt: number;
      readonly error: FennecError;
    };

/**
 * Results of Faasm-style asynchronous calls (`POST /fa/...`), kept in memory for a while so the
 * caller can fetch them. Bounded: the oldest results are dropped first.
 */
export class AsyncCalls {
  readonly #calls = new Map<string, AsyncCall>();
  readonly #max: number;

  constructor(max = 10_000) {
    this.#max = max;
  }

  submit(fn: string, work: Promise<{ response: InvokeResponse } | { error: FennecError }>): string {
    const id = randomUUID();
    const submittedAt = Date.now();
    this.#calls.set(id, { state: "pending", function: fn, submittedAt });
    while (this.#calls.size > this.#max) this.#calls.delete(this.#calls.keys().next().value!);
    void work.then((r) => {
      if (!this.#calls.has(id)) return;
      this.#calls.set(
        id,
        "response" in r
          ? { state: "done", function: fn, submittedAt, response: r.response }
          : { state: "failed", function: fn, submittedAt, error: r.error },
      );
    });
    return id;
  }

  get(id: string): AsyncCall | undefined {
    return this.#calls.get(id);
  }
}
