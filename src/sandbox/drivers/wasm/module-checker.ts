import { Worker } from "node:worker_threads";
import { FennecError, type ErrorCode } from "../../../core/errors.js";
import type { CheckDone, CheckJob, ToChecker } from "./module-check-protocol.js";

const WORKER_URL = new URL("./module-check-worker.js", import.meta.url);
/** An idle checker thread is ended after this long, giving back what checking large modules used. */
const IDLE_MS = 10_000;
/**
 * Bytes are handed to the thread in pieces this large, one per turn of the event loop: copying a
 * module of tens of MiB in one go would itself stall the gateway (≈ 0.3 s for 50 MiB here, under load).
 */
const CHUNK_BYTES = 2 * 2 ** 20;

export type CheckRequest = Omit<CheckJob, "id" | "type"> & { readonly bytes?: Uint8Array | undefined };
export type CheckResult = Omit<CheckDone, "id" | "error">;

/**
 * Runs module checks (hash, validate, memory cap, interface, compile) on a thread of their own,
 * one at a time, so the gateway's event loop never spends seconds in a large module. The thread
 * is started on first use and ended when idle for a while.
 */
export class ModuleChecker {
  #worker: Worker | undefined;
  readonly #pending = new Map<number, { resolve: (r: CheckResult) => void; reject: (e: Error) => void }>();
  #nextId = 1;
  #idleTimer: NodeJS.Timeout | undefined;

  async run(request: CheckRequest): Promise<CheckResult> {
    const worker = this.#ensure();
    clearTimeout(this.#idleTimer);
    const id = this.#nextId++;
    const done = new Promise<CheckResult>((resolve, reject) => this.#pending.set(id, { resolve, reject }));
    worker.ref();
    const { bytes, ...rest } = request;
    if (bytes) {
      worker.postMessage({ type: "begin", id, size: bytes.byteLength } satisfies ToChecker);
      for (let at = 0; at < bytes.byteLength; at += CHUNK_BYTES) {
        if (at > 0) await new Promise((r) => setImmediate(r));
        // A copy of just this piece, transferred: the caller keeps its bytes intact. (Not
        // `bytes.slice`: on a Buffer that is a view, and transferring it would detach the caller's.)
        const piece = new Uint8Array(bytes.subarray(at, at + CHUNK_BYTES));
        worker.postMessage({ type: "chunk", id, at, piece } satisfies ToChecker, [piece.buffer]);
      }
    }
    worker.postMessage({ type: "check", ...rest, id } satisfies ToChecker);
    return done;
  }

  #ensure(): Worker {
    if (this.#worker) return this.#worker;
    const worker = new Worker(WORKER_URL);
    this.#worker = worker;
    worker.on("message", (done: CheckDone) => {
      const p = this.#pending.get(done.id);
      if (!p) return;
      this.#pending.delete(done.id);
      this.#settled();
      if (done.error) p.reject(new FennecError(done.error.code as ErrorCode, done.error.message));
      else p.resolve(done);
    });
    const died = (err: Error) => {
      if (this.#worker !== worker) return;
      this.#worker = undefined;
      clearTimeout(this.#idleTimer);
      const pending = [...this.#pending.values()];
      this.#pending.clear();
      // V8 running out of heap while checking a module is the module's doing.
      const oom = (err as NodeJS.ErrnoException).code === "ERR_WORKER_OUT_OF_MEMORY";
      for (const p of pending)
        p.reject(new FennecError(oom ? "FN_BAD_MODULE" : "INTERNAL", `module check failed: ${err.message}`));
    };
    worker.on("error", died);
    worker.on("exit", (code) => died(new Error(`module checker exited with code ${code}`)));
    return worker;
  }

  #settled(): void {
    if (this.#pending.size > 0) return;
    this.#worker?.unref();
    clearTimeout(this.#idleTimer);
    this.#idleTimer = setTimeout(() => void this.close(), IDLE_MS);
    this.#idleTimer.unref();
  }

  async close(): Promise<void> {
    clearTimeout(this.#idleTimer);
    const worker = this.#worker;
    if (!worker) return;
    await worker.terminate();
  }
}
