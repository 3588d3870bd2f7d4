import { join } from "node:path";
import { WasmDriver } from "../../src/sandbox/drivers/wasm/driver.js";
import { testConfig } from "../helpers/config.js";
import { WASM_FIXTURES } from "../helpers/paths.js";
import { runConformance } from "./suite.js";

const wasmFn = (name: string, file: string, memoryMiB = 32) =>
  testConfig({
    id: { user: "default", name },
    key: `default/${name}`,
    sandbox: { kind: "wasm", module: join(WASM_FIXTURES, file), memoryMiB, env: {}, dirs: {} },
  });

runConformance("wasm", async () => ({
  driver: new WasmDriver({ cacheDir: undefined, spareExecutors: 1 }),
  echo: wasmFn("reflect", "reflect.wasm"),
  hang: wasmFn("loop", "loop.wasm"),
  fail: wasmFn("trap", "trap.wasm"),
  crash: {
    skip: "a WASI module that exits ends its invocation (FN_EXIT), not its instance: nothing can die on its own",
  },
  failedStart: {
    skip: "a wasm instance is a module in a worker thread: there is no process to exit while starting",
  },
  oom: wasmFn("membomb", "membomb.wasm"),
  streaming: {
    skip: "the shared streaming cases drive a Node fixture's gated /stream/ routes; wasm streams its stdout and stdin through rings, tested with C modules in test/e2e/wasm-streaming.test.ts",
  },
}));
