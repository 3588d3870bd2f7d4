/**
 * An initialiser thread: instantiates one module, runs its `wizer.initialize` and sends back the
 * snapshot of what that left (snapshot.ts), then ends. A thread of its own, started per
 * initialisation, so a runaway initialiser is stopped by terminating it without touching anything
 * else (see initialise.ts).
 *
 * What the initialiser sees is what Wizer allows by default, and nothing of any call: no
 * arguments, no environment, an empty stdin, no preopened directories; its output is kept only for
 * an error's detail. Clocks and random numbers work (a module that bakes them into its snapshot
 * gets what it asked for).
 */
import { parentPort } from "node:worker_threads";
import { ConsoleStdout, File, OpenFile, WASIProcExit } from "@bjorn3/browser_wasi_shim";
import type { InitialiseDone, InitialiseJob } from "./initialise-protocol.js";
import { baseline, capture, INITIALIZE_EXPORT } from "./snapshot.js";
import { unavailableFaasmImports } from "./faasm-imports.js";
import { prepareInstance } from "./wasi-run.js";

const port = parentPort!;
const TAIL = 2048;

function initialise({ module, maxMemoryBytes }: InitialiseJob): InitialiseDone {
  let output = "";
  const keep = (chunk: Uint8Array) => {
    output = (output + Buffer.from(chunk).toString("utf8")).slice(-TAIL);
  };
  // The same WASI instance as a call gets (wasi-run.ts), its output kept instead of a call's.
  // A Faasm function's host calls exist but trap: no call runs while it initialises.
  const { wasi, instance } = prepareInstance(
    module,
    {},
    unavailableFaasmImports("while pre-initialising (no call is running)"),
  );
  wasi.fds = [new OpenFile(new File(new Uint8Array(0))), new ConsoleStdout(keep), new ConsoleStdout(keep)];
  const init = instance.exports[INITIALIZE_EXPORT];
  if (typeof init !== "function")
    return { ok: false, message: `it exports no ${INITIALIZE_EXPORT} function` };
  const initial = baseline(instance);
  const failed = (why: string): InitialiseDone => ({
    ok: false,
    message: `${INITIALIZE_EXPORT} ${why}${output.trim() ? ` (output: ${output.trim().slice(-500)})` : ""}`,
  });
  try {
    (init as () => void)();
  } catch (err) {
    if (!(err instanceof WASIProcExit)) return failed(`trapped: ${(err as Error).message}`);
    if (err.code !== 0) return failed(`exited with code ${err.code}`);
  }
  const snapshot = capture(instance, initial);
  if (snapshot.memoryBytes > maxMemoryBytes)
    return failed(`left ${snapshot.memoryBytes} bytes of memory, more than the limit of ${maxMemoryBytes}`);
  return { ok: true, snapshot };
}

port.once("message", (job: InitialiseJob) => {
  let done: InitialiseDone;
  try {
    done = initialise(job);
  } catch (err) {
    done = { ok: false, message: (err as Error).message };
  }
  port.postMessage(done, done.ok ? [done.snapshot.data.buffer as ArrayBuffer] : []);
});
