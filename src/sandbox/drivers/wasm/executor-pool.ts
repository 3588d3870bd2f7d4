import { Worker } from "node:worker_threads";

const WORKER_URL = new URL("./worker.js", import.meta.url);
const REFILL_DELAY_MS = 50;

/**
 * Keeps a few blank worker threads spawned ahead of time. Spawning a worker costs milliseconds;
 * handing out a spare one and sending it a compiled module costs microseconds, which is what
 * makes a wasm cold start an instantiation.
 */
export class ExecutorPool {
  readonly #spares: Worker[] = [];
  /** Spares that have finished booting; a worker still booting costs tens of milliseconds more. */
  readonly #booted = new WeakSet<Worker>();
  readonly #target: number;
  #closed = false;
  #refilling = false;

  constructor(spares: number) {
    this.#target = spares;
    this.#refill();
  }

  /** A blank worker: a spare if one is waiting, else a new one. */
  take(): Worker {
    const i = this.#spares.findIndex((w) => this.#booted.has(w));
    // Prefer a booted spare; else the oldest one, which is furthest along in booting.
    const worker = (i >= 0 ? this.#spares.splice(i, 1)[0] : this.#spares.shift()) ?? this.#spawn();
    worker.ref();
    // Refill a little later: an instance that closes soon gives its worker back, which is
    // cheaper than booting a new one (tens of milliseconds of CPU).
    setTimeout(() => this.#refill(), REFILL_DELAY_MS).unref();
    return worker;
  }

  /** Returns a worker whose instance closed cleanly; it is reset and reused. */
  give(worker: Worker): void {
    if (this.#closed || this.#spares.length >= this.#target) {
      void worker.terminate();
      return;
    }
    worker.postMessage({ type: "reset" });
    worker.removeAllListeners("message");
    worker.removeAllListeners("error");
    worker.removeAllListeners("exit");
    this.#watch(worker);
    worker.unref();
    this.#spares.push(worker);
  }

  #spawn(): Worker {
    const worker = new Worker(WORKER_URL);
    worker.once("message", () => this.#booted.add(worker));
    this.#watch(worker);
    return worker;
  }

  /** A spare that dies on its own is simply dropped. */
  #watch(worker: Worker): void {
    worker.on("exit", () => {
      const i = this.#spares.indexOf(worker);
      if (i >= 0) this.#spares.splice(i, 1);
    });
  }

  #refill(): void {
    if (this.#refilling || this.#closed) return;
    this.#refilling = true;
    // One at a time, so a burst of cold starts is not slowed by a burst of spawns.
    setImmediate(() => {
      this.#refilling = false;
      if (this.#closed || this.#spares.length >= this.#target) return;
      const w = this.#spawn();
      w.unref();
      this.#spares.push(w);
      this.#refill();
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(this.#spares.splice(0).map((w) => w.terminate()));
  }
}
