import { Worker } from "node:worker_threads";
import { FennecError } from "../../../core/errors.js";
import type { InitialiseDone, InitialiseJob } from "./initialise-protocol.js";
import { INITIALIZE_EXPORT, type Snapshot } from "./snapshot.js";

const WORKER_URL = new URL("./initialise-worker.js", import.meta.url);

/**
 * Runs a module's `wizer.initialize` once and returns the snapshot of the state it leaves. It runs
 * on a thread started for it alone, never the gateway's (guest code may run long or forever), and
 * not on the module checker's or an executor's: a runaway is stopped by terminating its thread,
 * which would also lose whatever else a shared thread was doing. A thread costs ≈ 35 ms of CPU to
 * start, paid once per module and memory cap (the snapshot is cached, on disk too). Any failure —
 * a trap, a non-zero exit, running past `timeoutMs`, memory past the cap, the thread dying — is
 * the module's fault: `FN_BAD_MODULE`.
 */
export function initialise(
  job: InitialiseJob,
  what: string,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<Snapshot> {
  const bad = (why: string) => new FennecError("FN_BAD_MODULE", `${what}: ${why}`);
  return new Promise<Snapshot>((resolve, reject) => {
    const worker = new Worker(WORKER_URL);
    let settled = false;
    const settle = (err: Error | undefined, snapshot?: Snapshot) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      void worker.terminate();
      if (err) reject(err);
      else resolve(snapshot!);
    };
    const timer = setTimeout(
      () =>
        settle(bad(`${INITIALIZE_EXPORT} ran past its bound of ${timeoutMs} ms (the function's timeout)`)),
      timeoutMs,
    );
    const onAbort = () => settle(new FennecError("SHUTTING_DOWN", `${what}: initialisation cancelled`));
    if (signal?.aborted) return onAbort();
    signal?.addEventListener("abort", onAbort, { once: true });
    worker.once("message", (done: InitialiseDone) =>
      done.ok ? settle(undefined, done.snapshot) : settle(bad(done.message)),
    );
    worker.once("error", (err) => {
      const oom = (err as NodeJS.ErrnoException).code === "ERR_WORKER_OUT_OF_MEMORY";
      settle(bad(`${INITIALIZE_EXPORT} ${oom ? "ran out of memory" : `failed: ${err.message}`}`));
    });
    worker.once("exit", (code) => settle(bad(`the initialiser thread exited with code ${code}`)));
    worker.postMessage(job);
  });
}
