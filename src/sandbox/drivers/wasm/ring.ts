/**
 * A byte ring in shared memory between the main thread and one executor thread: one side writes,
 * the other reads. The executor side blocks (`Atomics.wait`: WASI calls are synchronous, so
 * blocking the guest is the back-pressure); the main thread never blocks.
 *
 * Layout: int32s of control (bytes written and read so far, wrapping; a closed flag; a signal
 * counter; whether the executor is blocked on this ring; whether the main thread waits on it),
 * then the data. The byte counters only grow (mod 2^32), so "used" is their difference and each
 * side writes only its own. Every change also bumps the signal counter: a waiter reads it before
 * checking the ring, so no wake-up is lost between the check and the wait.
 *
 * How the main thread learns of a change: not `Atomics.waitAsync`. In Node 20 its promise is
 * resolved from a V8 platform task, outside Node's callback scope: it keeps no handle (the
 * process may exit under it) and what its reactions queue with `process.nextTick` (every stream
 * event) can be left unrun until some unrelated callback comes — streams that stopped mid-body
 * for no reason. Instead the main thread raises HOST_WAITING, and the executor, after a change,
 * takes that flag down and posts a message on its port (`onHostWaiting`): an ordinary event the
 * event loop knows. Both sides use sequentially consistent atomics: either the executor sees the
 * flag, or the main thread sees the counter moved before it waits.
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
/** Set by the main thread while it waits for a change; the executor clears it and tells it. */
const HOST_WAITING = 5;
const CONTROL_BYTES = 32;

export class Ring {
  readonly memory: SharedArrayBuffer;
  readonly #control: Int32Array;
  readonly #data: Uint8Array;
  readonly #mask: number;
  /** The executor's side: tells the main thread that a change it waits for happened. */
  readonly #onHostWaiting: (() => void) | undefined;
  /** The main thread's side: who waits for the next change. */
  #waiters: (() => void)[] = [];

  /**
   * The main thread makes a ring with fresh memory; the executor opens that memory with
   * `onHostWaiting`, which must reach the main thread's `changed` (a message on its port).
   */
  constructor(
    memory: SharedArrayBuffer = new SharedArrayBuffer(CONTROL_BYTES + RING_BYTES),
    onHostWaiting?: () => void,
  ) {
    this.memory = memory;
    this.#onHostWaiting = onHostWaiting;
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
    Atomics.store(this.#control, HOST_WAITING, 0);
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
    if (this.#onHostWaiting && Atomics.exchange(this.#control, HOST_WAITING, 0) !== 0) this.#onHostWaiting();
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

  /**
   * Resolves once the ring changed since the signal counter read `seen` (see `signals`), or it
   * is given up (`wakeAll`). May resolve early: callers check the ring again.
   */
  changedSince(seen: number): Promise<void> {
    Atomics.store(this.#control, HOST_WAITING, 1);
    if (this.signals !== seen) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** The executor reported a change (its message arrived): wakes this thread's waits. */
  changed(): void {
    const waiters = this.#waiters;
    if (waiters.length === 0) return;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }

  /** The ring is being given up: wakes both sides' waits. */
  wakeAll(): void {
    this.#signal();
    this.changed();
  }
}
