import { resolve } from "node:path";
import { toFennecError } from "../core/errors.js";
import { DirectoryRegistry } from "../registry/registry.js";
import { buildHandler } from "../sandbox/handler-build.js";
import { ModuleCache } from "../sandbox/drivers/wasm/module-cache.js";

/** `fennec build`: checks every function and builds what needs building; prints one line each. */
export async function buildRegistry(dir: string, only: readonly string[]): Promise<number> {
  const registry = new DirectoryRegistry(resolve(dir));
  const modules = new ModuleCache(undefined);
  let failed = 0;
  for (const entry of await registry.list()) {
    if (only.length > 0 && !only.includes(entry.key) && !only.includes(entry.id.name)) continue;
    const t0 = performance.now();
    try {
      if (entry.error) throw entry.error;
      const c = entry.config!;
      let what = `${c.sandbox.kind}: nothing to build`;
      if (c.sandbox.kind === "wasm") {
        await modules.forRevision(c.sandbox.module, c.revision, c.sandbox.memoryMiB, c.file);
        what = "wasm module compiled and checked";
      } else if ((c.sandbox.kind === "process" || c.sandbox.kind === "oci") && c.sandbox.handler) {
        what = `handler bundled into ${await buildHandler(c, c.sandbox.handler)}`;
      }
      process.stdout.write(`ok     ${entry.key}: ${what} (${(performance.now() - t0).toFixed(0)} ms)\n`);
    } catch (err) {
      failed++;
      const e = toFennecError(err);
      process.stdout.write(`FAILED ${entry.key}: ${e.code}: ${e.message}\n`);
    }
  }
  return failed > 0 ? 1 : 0;
}
