import { join } from "node:path";
import { WasmDriver } from "../../src/sandbox/drivers/wasm/driver.js";
import { testConfig } from "../helpers/config.js";
import { WASM_FIXTURES } from "../helpers/paths.js";
import { runConformance } from "./suite.js";

const wasmFn = (name: string, file: string) =>
  testConfig({
    id: { user: "default", name },
    key: `default/${name}`,
    sandbox: { kind: "wasm", module: join(WASM_FIXTURES, file), memoryMiB: 32, env: {}, dirs: {} },
  });

runConformance("wasm", async () => ({
  driver: new WasmDriver({ cacheDir: undefined, spareExecutors: 1 }),
  echo: wasmFn("reflect", "reflect.wasm"),
  hang: wasmFn("loop", "loop.wasm"),
  fail: wasmFn("trap", "trap.wasm"),
  streaming: {
    skip: "a WAGI module's stdout is handed on when it exits (streaming it is the wasm-stream work)",
  },
}));
