import { Readable } from "node:stream";
import { WHOLE_BODY_BYTES } from "../../../core/body.js";
import { RING_BYTES, type Ring } from "./ring.js";

/**
 * A job's stdout on the main thread: a Readable drained from its executor's stdout ring only as
 * fast as it is read. While its buffer is full (`push` returned false) it takes nothing from the
 * ring, the ring fills, and the module blocks in `fd_write`: a slow reader holds at most this
 * stream's buffer and one ring, however much the module writes.
 *
 * Life: created with the job, attached to the ring of the executor that runs it; when the job
 * ends, `detach` takes the ring's last bytes (at most one ring) so the executor can run the next
 * job, and `finish` ends the stream after them (or fails it).
 *
 * A head (WAGI's CGI headers) can be split off first with `readHead`: until it is complete the
 * output is drained eagerly into it, then the rest streams as the body.
 */

/** Where the head ends in the output so far (a byte count), or undefined to wait for more. */
export type HeadEnd = (bytes: Buffer, ended: boolean) => number | undefined;

interface HeadReader {
  readonly end: HeadEnd;
  bytes: Buffer;
  readonly resolve: (head: Buffer) => void;
  readonly reject: (err: Error) => void;
}

export class JobOutput extends Readable {
  #ring: Ring | undefined;
  /** What was left in the ring when the job ended. */
  #tail: Buffer | undefined;
  #finished = false;
  #wanted = false;
  #waiting = false;
  #delivered = false;
  #head: HeadReader | undefined;
  readonly #onDestroy: (err: Error | null) => void;

  /** `onDestroy` runs when the reader gives up (or the stream fails) before the job ended. */
  constructor(onDestroy: (err: Error | null) => void) {
    super({ highWaterMark: RING_BYTES });
    this.#onDestroy = onDestroy;
  }

  /** True once any byte has been handed on: the job can no longer be run again from the start. */
  get delivered(): boolean {
    return this.#delivered;
  }

  /** Bytes held on the main thread (this stream's buffer and the ring's last bytes). */
  get heldBytes(): number {
    return this.readableLength + (this.#tail?.byteLength ?? 0) + (this.#head?.bytes.byteLength ?? 0);
  }

  /**
   * Resolves with the output's head once `end` finds where it ends; the stream then carries the
   * bytes after it. Fails if the job fails first.
   */
  readHead(end: HeadEnd): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      this.#head = { end, bytes: Buffer.alloc(0), resolve, reject };
      this.#pull();
    });
  }

  /**
   * All of the output at once, when the job has ended well and what is left is at most
   * `WHOLE_BODY_BYTES`; the stream is then at its end. Otherwise undefined, and it streams.
   */
  takeAll(): Buffer | undefined {
    if (!this.#finished || this.#ring || this.#head || this.destroyed || this.readableFlowing)
      return undefined;
    if (this.readableLength + (this.#tail?.byteLength ?? 0) > WHOLE_BODY_BYTES) return undefined;
    // Each read takes what is buffered and pulls in the rest (the ring's last bytes), then the end.
    const parts: Buffer[] = [];
    for (let chunk = this.read() as Buffer | null; chunk !== null; chunk = this.read() as Buffer | null)
      parts.push(chunk);
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  attach(ring: Ring): void {
    this.#ring = ring;
    this.#pull();
  }

  /** The job ended: takes the ring's last bytes, after which its executor may run another job. */
  detach(): void {
    const ring = this.#ring;
    if (!ring) return;
    this.#ring = undefined;
    if (ring.used > 0) this.#tail = ring.read();
    ring.wakeAll();
  }

  /** The job is being run again elsewhere (nothing was delivered): drops the ring unread. */
  abandon(): void {
    const ring = this.#ring;
    this.#ring = undefined;
    ring?.wakeAll();
  }

  /** After `detach`: ends the stream once its bytes are read, or fails it with `err`. */
  finish(err?: Error): void {
    if (err) {
      this.destroy(err);
      return;
    }
    this.#finished = true;
    if (this.#wanted) this.#pull();
  }

  override _read(): void {
    this.#wanted = true;
    this.#pull();
  }

  #pull(): void {
    while ((this.#wanted || this.#head) && !this.destroyed) {
      const ring = this.#ring;
      if (ring) {
        const seen = ring.signals;
        if (ring.used > 0) {
          this.#hand(ring.read());
          continue;
        }
        if (this.#waiting) return;
        this.#waiting = true;
        // Looked at on the next turn, not at once: a module that wrote its answer and exited has
        // its "done" right behind the wake-up, and taking both first lets a small answer leave
        // whole (`takeAll`).
        void ring.changedSince(seen).then(() =>
          setImmediate(() => {
            this.#waiting = false;
            this.#pull();
          }),
        );
        return;
      }
      if (this.#tail) {
        const tail = this.#tail;
        this.#tail = undefined;
        this.#hand(tail);
        continue;
      }
      if (!this.#finished) return;
      if (this.#head) {
        this.#headDone(this.#head.end(this.#head.bytes, true) ?? this.#head.bytes.byteLength);
        continue;
      }
      this.#wanted = false;
      this.push(null);
      return;
    }
  }

  #hand(chunk: Buffer): void {
    this.#delivered = true;
    const head = this.#head;
    if (!head) {
      this.#wanted = this.push(chunk);
      return;
    }
    head.bytes = head.bytes.byteLength === 0 ? chunk : Buffer.concat([head.bytes, chunk]);
    const end = head.end(head.bytes, false);
    if (end !== undefined) this.#headDone(end);
  }

  #headDone(end: number): void {
    const head = this.#head!;
    this.#head = undefined;
    const rest = head.bytes.subarray(end);
    if (rest.byteLength > 0) this.#wanted = this.push(rest);
    head.resolve(head.bytes.subarray(0, end));
  }

  override _destroy(err: Error | null, callback: (err: Error | null) => void): void {
    if (!this.#finished) this.#onDestroy(err);
    this.#tail = undefined;
    this.#head?.reject(err ?? new Error("the output was closed before its head"));
    this.#head = undefined;
    callback(err);
  }
}
