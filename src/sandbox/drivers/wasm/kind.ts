import { relative } from "node:path";
import { z } from "zod";
import { envTable, positiveInt } from "../../../config/function-schema.js";
import { built, type SandboxKind } from "../../kind.js";
import type { ModuleCache } from "./module-cache.js";
import type { WasmDriver } from "./driver.js";

/** Fennec's `[wasm]` table: a WASI module following WAGI, run in-process on executor threads. */
const wasmTable = z.strictObject({
  module: z.string().min(1),
  memory: positiveInt.max(4096).default(64),
  env: envTable.default({}),
  dirs: z
    .record(z.string().regex(/^\/[A-Za-z0-9._/-]*$/, "an absolute guest path"), z.string().min(1))
    .default({}),
  "pre-initialise": z.boolean().default(true),
});

export interface WasmSandboxConfig {
  readonly kind: "wasm";
  /** Absolute path of the module, inside the function directory. */
  readonly module: string;
  /** The most linear memory one instance may have, in MiB. */
  readonly memoryMiB: number;
  readonly env: Readonly<Record<string, string>>;
  /** Guest path -> absolute host directory, granted read-only. */
  readonly dirs: Readonly<Record<string, string>>;
  /**
   * Whether a module exporting `wizer.initialize` is initialised once at prepare time and every
   * call restored from that snapshot (snapshot.ts). Off (`false`), calls start from the module's
   * own initial state and `wizer.initialize` is never called. Absent means on.
   */
  readonly preInitialise?: boolean;
}

// Inside the block below, `WasmSandboxConfig` would name the config layer's alias of this very entry.
type ThisKindConfig = WasmSandboxConfig;
declare module "../../../config/function-config.js" {
  interface SandboxConfigs {
    wasm: ThisKindConfig;
  }
}

/** `fennec build` checks modules in memory, without the executor threads a driver starts. */
let buildCache: Promise<ModuleCache> | undefined;

export const wasmKind: SandboxKind<"wasm", typeof wasmTable, WasmDriver> = {
  kind: "wasm",
  schema: wasmTable,
  toConfig(t, files) {
    const dirs: Record<string, string> = {};
    for (const [guest, host] of Object.entries(t.dirs))
      dirs[guest] = files.directory(host, `dirs."${guest}"`);
    return {
      kind: "wasm",
      module: files.file(t.module, "module"),
      memoryMiB: t.memory,
      env: t.env,
      dirs,
      preInitialise: t["pre-initialise"],
    };
  },
  code: (s) => [s.module],
  image: (c) => relative(c.dir, c.sandbox.module),
  async build(c) {
    buildCache ??= import("./module-cache.js").then(({ ModuleCache }) => new ModuleCache(undefined));
    const cache = await buildCache;
    const compiled = await cache.forRevision(c.sandbox.module, c.revision, c.sandbox.memoryMiB, c.file);
    // A module that initialises itself is only good if that initialisation succeeds.
    if (c.sandbox.preInitialise !== false && (await cache.snapshot(compiled, c.file, c.timeoutMs)))
      return built("wasm module compiled, checked and pre-initialised");
    return built("wasm module compiled and checked");
  },
  async create(node) {
    const { WasmDriver } = await import("./driver.js");
    return new WasmDriver({ cacheDir: node.cacheDir });
  },
  // Cached modules of functions that no longer exist (or changed) are removed.
  prepared: (driver) => driver.modules.prune().then(() => undefined),
  // Where calls ran: on the gateway's thread, or moved from it to executors (and why).
  status: (driver) => ({
    inlineCalls: driver.fastPath.inline,
    movedToExecutors: { ...driver.fastPath.moved },
  }),
};
