import { Readable } from "node:stream";
import { FennecError, toFennecError } from "../core/errors.js";
import type { Body } from "../core/types.js";

/** How a response body ended: after its last byte (`error` undefined) or cut, and why. */
export interface BodyEnd {
  readonly error: FennecError | undefined;
  /** `performance.now()` of its first byte, or of its end when it had none. */
  readonly firstByteAt: number;
}

/**
 * The response body the lifecycle hands out: the driver's body passed through with its
 * back-pressure, telling the instance once how it ended. Who cut it is known here and nowhere
 * else: the instance (`cut`: timeout, destroy), the sandbox (its stream failed: FN_CRASHED unless
 * it said otherwise) or whoever was reading it (destroyed it: the client went away, CLIENT_GONE).
 */
export class TrackedBody extends Readable {
  readonly #source: Body;
  readonly #onEnd: (end: BodyEnd) => void;
  readonly #what: string;
  readonly #limit: number;
  #sent = 0;
  #flowing = false;
  #firstByteAt: number | undefined;
  #reason: FennecError | undefined;
  #ended = false;

  /** `limit`: the most bytes the body may have (the function's `max-response-body`); past it, it is cut. */
  constructor(source: Body, what: string, onEnd: (end: BodyEnd) => void, limit = Infinity) {
    // The driver's stream buffers already; one more chunk of slack here is enough.
    super({ highWaterMark: 64 * 1024 });
    this.#source = source;
    this.#limit = limit;
    this.#onEnd = onEnd;
    this.#what = what;
    source.once("end", () => this.push(null));
    source.once("error", (err) => this.cut(toFennecError(err, "FN_CRASHED")));
    source.once("close", () => {
      if (!source.readableEnded)
        this.cut(new FennecError("FN_CRASHED", `${what}: the response body ended before its end`));
    });
    this.once("end", () => this.#finish(undefined));
    // The error is reported to onEnd (the record) and to a reader through pipeline or iteration;
    // a body cut before anyone reads it must not take the process down as an unhandled 'error'.
    this.on("error", () => undefined);
  }

  override _read(): void {
    if (!this.#flowing) {
      this.#flowing = true;
      this.#source.on("data", (chunk: Buffer) => {
        this.#firstByteAt ??= performance.now();
        this.#sent += chunk.length;
        if (this.#sent > this.#limit) return this.cut(responseTooLarge(this.#what, this.#limit));
        if (!this.push(chunk)) this.#source.pause();
      });
    }
    // A 'data' listener alone does not resume a source someone paused.
    this.#source.resume();
  }

  /** Cuts the body with `reason` (the instance's timeout or destroy, or the sandbox's failure). */
  cut(reason: FennecError): void {
    if (this.#ended || this.destroyed) return;
    this.#reason = reason;
    this.destroy(reason);
  }

  override _destroy(err: Error | null, done: (err: Error | null) => void): void {
    if (!this.readableEnded) {
      const reason =
        this.#reason ??
        (err instanceof FennecError
          ? err
          : new FennecError("CLIENT_GONE", `${this.#what}: the reader of the response went away`));
      if (!this.#source.destroyed) this.#source.destroy();
      this.#finish(reason);
    }
    done(err);
  }

  #finish(error: FennecError | undefined): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#onEnd({ error, firstByteAt: this.#firstByteAt ?? performance.now() });
  }
}

/** A response body over the function's `max-response-body`: the function's fault, 502. */
export function responseTooLarge(what: string, limit: number): FennecError {
  return new FennecError(
    "FN_RESPONSE_TOO_LARGE",
    `${what}: the response body exceeds the function's max-response-body of ${limit} bytes`,
    { details: { maxResponseBodyBytes: limit } },
  );
}

/** The `content-length` a response declares, or -1 when it declares none (or nothing valid). */
export function declaredLength(headers: ReadonlyArray<readonly [string, string]>): number {
  const value = headers.find(([name]) => name.toLowerCase() === "content-length")?.[1];
  return value !== undefined && /^\d{1,15}$/.test(value) ? Number(value) : -1;
}
