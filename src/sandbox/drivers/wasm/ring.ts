/**
 * A byte ring in shared memory between the main thread and one executor thread: one side writes,
 * the other reads. The executor side blocks (`Atomics.wait`: WASI calls are synchronous, so
 * blocking the guest is the back-pressure); the main thread never blocks, it waits for the other
 * side with `Atomics.waitAsync`. Each executor has two: its stdout and its stdin.
 *
 * Layout: int32s of control (bytes written and read so far, wrapping; a closed flag; a signal
 * counter; whether the executor is blocked on this ring), then the data. The byte counters only grow (mod 2^32), so "used" is their
 * difference and each side writes only its own. Every change also bumps the signal counter, the
 * one word both sides wait on: a waiter reads it before checking the ring, so no wake-up is lost
 * between the check and the wait.
 */

/** Bytes of data in a ring: a power of two, so positions are counters masked. */
export const RING_BYTES = 64 * 1024;

const WRITTEN = 0;
const READ = 1;
/** Set by the writer when it will write no more (stdin's end of file). */
const CLOSED = 2;
const SIGNAL = 3;
/** Set while the executor side waits on this ring: the pool lends blocked executors' places. */
const BLOCKED = 4;
const CONTROL_BYTES = 32;

// ES2024's Atomics.waitAsync, which Node 20 has but the ES2023 lib does not declare.
type WaitAsync = (
  a: Int32Array,
  index: number,
  value: number,
) => { async: false; value: "not-equal" | "timed-out" } | { async: true; value: Promise<string> };
const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;

export class Ring {
  readonly memory: SharedArrayBuffer;
  readonly #control: Int32Array;
  readonly #data: Uint8Array;
  readonly #mask: number;

  constructor(memory: SharedArrayBuffer = new SharedArrayBuffer(CONTROL_BYTES + RING_BYTES)) {
    this.memory = memory;
    this.#control = new Int32Array(memory, 0, CONTROL_BYTES / 4);
    this.#data = new Uint8Array(memory, CONTROL_BYTES);
    this.#mask = this.#data.byteLength - 1;
  }

  get capacity(): number {
    return this.#data.byteLength;
  }

  /** Bytes written and not yet read. */
  get used(): number {
    return (Atomics.load(this.#control, WRITTEN) - Atomics.load(this.#control, READ)) >>> 0;
  }

  /** True while the executor is blocked on this ring (full stdout, or stdin waiting for the body). */
  get blocked(): boolean {
    return Atomics.load(this.#control, BLOCKED) !== 0;
  }

  get closed(): boolean {
    return Atomics.load(this.#control, CLOSED) !== 0;
  }

  /** Empties the ring for the next job; only while neither side uses it. */
  reset(): void {
    Atomics.store(this.#control, WRITTEN, 0);
    Atomics.store(this.#control, READ, 0);
    Atomics.store(this.#control, CLOSED, 0);
    Atomics.store(this.#control, SIGNAL, 0);
    Atomics.store(this.#control, BLOCKED, 0);
  }

  /** Copies as much of `bytes` as fits; returns how many. Never blocks. */
  write(bytes: Uint8Array): number {
    const written = Atomics.load(this.#control, WRITTEN);
    const n = Math.min(bytes.byteLength, this.capacity - this.used);
    if (n === 0) return 0;
    const at = written & this.#mask;
    const first = Math.min(n, this.capacity - at);
    this.#data.set(bytes.subarray(0, first), at);
    if (first < n) this.#data.set(bytes.subarray(first, n), 0);
    Atomics.store(this.#control, WRITTEN, (written + n) | 0);
    this.#signal();
    return n;
  }

  /** Takes up to `max` bytes into a new buffer (empty when there are none). Never blocks. */
  read(max = this.capacity): Buffer {
    const read = Atomics.load(this.#control, READ);
    const n = Math.min(max, this.used);
    // Small reads come from Node's buffer pool: most responses are one small read.
    const out = Buffer.allocUnsafe(n);
    if (n === 0) return out;
    const at = read & this.#mask;
    const first = Math.min(n, this.capacity - at);
    out.set(this.#data.subarray(at, at + first));
    if (first < n) out.set(this.#data.subarray(0, n - first), first);
    Atomics.store(this.#control, READ, (read + n) | 0);
    this.#signal();
    return out;
  }

  /** The writer is done: a reader that finds the ring empty from now on is at the end. */
  close(): void {
    Atomics.store(this.#control, CLOSED, 1);
    this.#signal();
  }

  #signal(): void {
    Atomics.add(this.#control, SIGNAL, 1);
    Atomics.notify(this.#control, SIGNAL);
  }

  /** The signal counter: read it before checking the ring, then wait on that value. */
  get signals(): number {
    return Atomics.load(this.#control, SIGNAL);
  }

  // --- the executor's side: blocking ---

  /** Writes all of `bytes`, blocking while the ring is full. */
  writeAll(bytes: Uint8Array): void {
    let done = 0;
    while (done < bytes.byteLength) {
      const seen = this.signals;
      const n = this.write(bytes.subarray(done));
      done += n;
      if (n === 0) this.#block(seen);
    }
  }

  /** Reads up to `max` bytes, blocking while the ring is empty and open; empty means the end. */
  readSome(max: number): Buffer {
    for (;;) {
      const seen = this.signals;
      if (this.used > 0 || this.closed) return this.read(max);
      this.#block(seen);
    }
  }

  #block(seen: number): void {
    Atomics.store(this.#control, BLOCKED, 1);
    Atomics.wait(this.#control, SIGNAL, seen);
    Atomics.store(this.#control, BLOCKED, 0);
  }

  // --- the main thread's side: waiting without blocking ---

  /** Resolves once the ring changed since the signal counter read `seen` (see `signals`). */
  changedSince(seen: number): Promise<unknown> {
    const r = waitAsync(this.#control, SIGNAL, seen);
    if (!r.async) return Promise.resolve(r.value);
    // A pending Atomics.waitAsync does not keep Node's event loop alive, and the executors are
    // unref'd workers: without a handle, a process whose only work is a module still writing
    // would exit under it. The timer never fires; it only holds the loop while the wait lasts.
    const hold = setInterval(() => undefined, 2 ** 30);
    return r.value.finally(() => clearInterval(hold));
  }

  /** Wakes this thread's own pending waits (the ring is being given up). */
  wakeAll(): void {
    this.#signal();
  }
}
