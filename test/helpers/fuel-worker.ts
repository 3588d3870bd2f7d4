/**
 * Runs a fuelled module in a worker thread for a test of preemption: if a regression left the
 * module never calling tick, the test terminates this thread after a deadline and fails, instead
 * of hanging the whole run on the main thread. (Import only its types: importing its values would
 * run it on the importing thread.)
 */
import { parentPort, workerData } from "node:worker_threads";
import { TICK_IMPORT } from "../../src/sandbox/drivers/wasm/instrument.js";
import { WasiInstance } from "./wasi-run.js";

export interface FuelJob {
  readonly bytes: Uint8Array;
  /** `_start` runs the module as a WASI command; any other name is a plain export to call. */
  readonly entry: string;
  /** Fuel each tick hands out. */
  readonly fuel: number;
  /** The tick call that throws an Error with `stopMessage` instead. */
  readonly stopAt: number;
  readonly stopMessage: string;
}

export interface FuelResult {
  readonly ticks: number;
  /** The message of what `entry` threw, or "returned". */
  readonly outcome: string;
}

const job = workerData as FuelJob;
let ticks = 0;
const imports = {
  [TICK_IMPORT.module]: {
    [TICK_IMPORT.name]: () => {
      if (++ticks >= job.stopAt) throw new Error(job.stopMessage);
      return job.fuel;
    },
  },
};
const module = new WebAssembly.Module(job.bytes as Uint8Array<ArrayBuffer>);
let outcome = "returned";
try {
  if (job.entry === "_start") new WasiInstance(module, imports).run();
  else (new WebAssembly.Instance(module, imports).exports[job.entry] as () => void)();
} catch (err) {
  outcome = err instanceof Error ? err.message : String(err);
}
parentPort!.postMessage({ ticks, outcome } satisfies FuelResult);
