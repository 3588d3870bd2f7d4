import type { Readable } from "node:stream";
import type { Ring } from "./ring.js";

/**
 * Feeds a request body into an executor's stdin ring as the module reads it: the body is paused
 * while the ring is full, so a module that reads slowly (or not at all) holds the client back
 * instead of Fennec buffering the body. The body's end closes the ring (end of file for the
 * module); a body that fails (the client went away, the body limit) fails the job through
 * `onError`.
 */
export class StdinFeeder {
  readonly #ring: Ring;
  readonly #body: Readable;
  readonly #onError: (err: Error) => void;
  /** Bytes of the last chunk that did not fit yet. */
  #rest: Uint8Array | undefined;
  #ended = false;
  #stopped = false;
  #fed = 0;

  constructor(ring: Ring, body: Readable, onError: (err: Error) => void) {
    this.#ring = ring;
    this.#body = body;
    this.#onError = onError;
    body.on("data", this.#onData);
    body.on("end", this.#onEnd);
    body.on("error", this.#onFail);
    if (body.readableEnded) this.#onEnd();
    else if (body.errored) this.#onFail(body.errored);
  }

  /**
   * The job ended: stop feeding. What the module did not read is left to flow out of the body
   * and be dropped, so the client's connection stays usable.
   */
  /** Bytes of the body handed to the module so far (while 0 the job may run again from the start). */
  get fed(): number {
    return this.#fed;
  }

  /** The job is taken back before it consumed any of the body: leave the body for its next run. */
  release(): void {
    this.#detach();
    this.#body.pause();
  }

  #detach(): void {
    this.#stopped = true;
    this.#body.off("data", this.#onData);
    this.#body.off("end", this.#onEnd);
    this.#body.off("error", this.#onFail);
    this.#ring.wakeAll();
  }

  stop(): void {
    if (this.#stopped) return;
    this.#detach();
    // Without an error listener a failing body would crash the process.
    this.#body.on("error", () => {});
    this.#body.resume();
  }

  readonly #onData = (chunk: Uint8Array): void => {
    this.#fed += chunk.byteLength;
    const n = this.#ring.write(chunk);
    if (n === chunk.byteLength) return;
    this.#rest = chunk.subarray(n);
    this.#body.pause();
    this.#waitForRoom();
  };

  #waitForRoom(): void {
    if (this.#stopped) return;
    const seen = this.#ring.signals;
    const rest = this.#rest!;
    const n = this.#ring.write(rest);
    if (n < rest.byteLength) {
      this.#rest = rest.subarray(n);
      void this.#ring.changedSince(seen).then(() => this.#waitForRoom());
      return;
    }
    this.#rest = undefined;
    if (this.#ended) this.#ring.close();
    else this.#body.resume();
  }

  readonly #onEnd = (): void => {
    this.#ended = true;
    if (!this.#rest) this.#ring.close();
  };

  readonly #onFail = (err: Error): void => {
    if (!this.#stopped) this.#onError(err);
  };
}
