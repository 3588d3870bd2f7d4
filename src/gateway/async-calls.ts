import { randomUUID } from "node:crypto";
import { readBody } from "../core/body.js";
import { FennecError, toFennecError } from "../core/errors.js";
import type { BufferedResponse } from "../core/types.js";
import type { InvokeOutcome } from "../scheduler/scheduler.js";

export type AsyncCall =
  | { readonly state: "pending"; readonly function: string; readonly submittedAt: number }
  | {
      readonly state: "done";
      readonly function: string;
      readonly submittedAt: number;
      readonly response: BufferedResponse;
    }
  | {
      readonly state: "failed";
      readonly function: string;
      readonly submittedAt: number;
      readonly error: FennecError;
    };

/** How much of the uncollected results is kept; whichever bound is reached first drops the oldest. */
export interface AsyncCallLimits {
  /** Calls remembered, pending or finished. */
  readonly maxCalls?: number;
  /** Bytes of finished results (bodies and headers) held. */
  readonly maxBytes?: number;
  /** How long a finished result is kept, from its completion. */
  readonly maxAgeMs?: number;
  /** Largest response body one result may hold (beyond: the call fails with FN_RESPONSE_TOO_LARGE). */
  readonly maxResultBytes?: number;
}

const DEFAULTS: Required<Omit<AsyncCallLimits, "maxResultBytes">> = {
  maxCalls: 10_000,
  maxBytes: 256 * 2 ** 20,
  maxAgeMs: 60 * 60 * 1000,
};

interface Entry {
  call: AsyncCall;
  /** Bytes the finished result holds (0 while pending). */
  bytes: number;
  /** When the call finished (`performance.now()`), undefined while pending. */
  doneAt: number | undefined;
}

function sizeOf(response: BufferedResponse): number {
  let bytes = response.body.byteLength;
  for (const [name, value] of response.headers) bytes += name.length + value.length;
  return bytes;
}

/**
 * Results of Faasm-style asynchronous calls (`POST /fa/...`), kept in memory so the caller can
 * fetch them. Bounded by count, by bytes and by age, so callers who never collect their results
 * cannot grow the process: the oldest calls are dropped first, and a result past its age is gone.
 */
export class AsyncCalls {
  /** In submission order, so the first entry is always the oldest. */
  readonly #calls = new Map<string, Entry>();
  /** Finished calls in completion order, so the first one is always the next to expire. */
  readonly #finished = new Map<string, Entry>();
  readonly #limits: Required<AsyncCallLimits>;
  #bytes = 0;

  constructor(limits: AsyncCallLimits = {}) {
    const merged = { ...DEFAULTS, ...limits };
    // A result larger than all that is kept would be dropped at once: no point reading it.
    this.#limits = { ...merged, maxResultBytes: limits.maxResultBytes ?? merged.maxBytes };
  }

  /** What is kept, for the message of a result that is no longer there. */
  describeLimits(): string {
    const { maxCalls, maxBytes, maxAgeMs } = this.#limits;
    return `results are kept for the ${maxCalls} most recent calls, up to ${maxBytes} bytes in all, for ${Math.round(maxAgeMs / 1000)} s after each finishes`;
  }

  /**
   * Starts keeping the result of a call. Its response body is read here, the one buffered copy
   * of it, bounded by `maxResultBytes`: a result is kept to be fetched later, so it cannot stream.
   */
  submit(fn: string, call: Promise<InvokeOutcome | { error: FennecError }>): string {
    const work = call.then(async (outcome) => {
      if ("error" in outcome) return outcome;
      const { status, headers, body } = outcome.response;
      const limit = this.#limits.maxResultBytes;
      try {
        const bytes = await readBody(
          body,
          limit,
          () =>
            new FennecError(
              "FN_RESPONSE_TOO_LARGE",
              `${fn}: the response is larger than the ${limit} bytes an asynchronous result may hold`,
            ),
        );
        return { response: { status, headers, body: bytes } };
      } catch (err) {
        return { error: toFennecError(err, "FN_CRASHED") };
      }
    });
    const id = randomUUID();
    const submittedAt = Date.now();
    const entry: Entry = {
      call: { state: "pending", function: fn, submittedAt },
      bytes: 0,
      doneAt: undefined,
    };
    this.#calls.set(id, entry);
    this.#evict();
    void work.then((r) => {
      if (this.#calls.get(id) !== entry) return;
      if ("response" in r) {
        entry.call = { state: "done", function: fn, submittedAt, response: r.response };
        entry.bytes = sizeOf(r.response);
      } else {
        entry.call = { state: "failed", function: fn, submittedAt, error: r.error };
        entry.bytes = r.error.message.length;
      }
      entry.doneAt = performance.now();
      this.#finished.set(id, entry);
      this.#bytes += entry.bytes;
      this.#evict();
    });
    return id;
  }

  get(id: string): AsyncCall | undefined {
    this.#evict();
    return this.#calls.get(id)?.call;
  }

  #drop(id: string, entry: Entry): void {
    this.#calls.delete(id);
    if (this.#finished.delete(id)) this.#bytes -= entry.bytes;
  }

  #evict(): void {
    const { maxCalls, maxBytes, maxAgeMs } = this.#limits;
    for (const [id, entry] of this.#calls) {
      if (this.#calls.size <= maxCalls && this.#bytes <= maxBytes) break;
      this.#drop(id, entry);
    }
    const oldest = performance.now() - maxAgeMs;
    for (const [id, entry] of this.#finished) {
      if (entry.doneAt! >= oldest) break;
      this.#drop(id, entry);
    }
  }
}
