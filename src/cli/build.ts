import { spawn } from "node:child_process";
import { once } from "node:events";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { toFennecError } from "../core/errors.js";
import { createLogger } from "../core/log.js";
import { DirectoryRegistry } from "../registry/registry.js";
import type { SandboxDriver } from "../sandbox/contract.js";
import { sandboxKinds } from "../sandbox/drivers/index.js";
import type { DriverSettings, NodeContext } from "../sandbox/kind.js";
import type { SandboxKinds } from "../sandbox/kinds.js";

export interface BuildOptions {
  /** The drivers' settings (`fennec build --docker-host`). */
  readonly settings?: DriverSettings;
  /** The sandbox kinds (default: the registered ones). */
  readonly kinds?: SandboxKinds;
  /** Where the report goes (default: stdout). */
  readonly write?: (text: string) => void;
}

const ms = (t0: number) => `${(performance.now() - t0).toFixed(0)} ms`;

/**
 * `fennec build`: checks every function and runs its sandbox kind's build step ahead of time (a
 * [wasm] module compiled and checked; a handler bundled; an [oci] or [vm] root filesystem; a
 * [container] image). One progress line per step, then `ok` or `FAILED` per function, then the
 * kinds whose functions had nothing to build, and why; exit code 1 when any function failed.
 */
export async function buildRegistry(
  dir: string,
  only: readonly string[],
  options: BuildOptions = {},
): Promise<number> {
  const { settings = {}, kinds = sandboxKinds, write = (text) => void process.stdout.write(text) } = options;
  const registry = new DirectoryRegistry(resolve(dir), { loader: kinds.loader });
  const node: NodeContext = { settings, cacheDir: undefined, log: createLogger("warn") };
  /**
   * Each kind's driver, created at its first function and shared by the others; never closed: a
   * driver's close() tears down what a serving Fennec on this host may share (cgroup parents).
   */
  const drivers = new Map<string, Promise<SandboxDriver>>();
  /** Kind -> why its functions had nothing to build -> those functions. */
  const nothing = new Map<string, Map<string, string[]>>();
  let failed = 0;
  for (const entry of await registry.list()) {
    if (only.length > 0 && !only.includes(entry.key) && !only.includes(entry.id.name)) continue;
    const t0 = performance.now();
    const progress = (line: string) => write(`  ...  ${entry.key}: ${line}\n`);
    try {
      if (entry.error) throw entry.error;
      const c = entry.config!;
      const kind = c.sandbox.kind;
      const driver = () => {
        let d = drivers.get(kind);
        if (!d) drivers.set(kind, (d = kinds.createDriver(kind, node)));
        return d;
      };
      const result = await kinds.build(c, { progress, driver });
      if ("built" in result) {
        write(`ok     ${entry.key}: ${result.built} (${ms(t0)})\n`);
        continue;
      }
      write(`ok     ${entry.key}: [${kind}] nothing to build: ${result.nothing}\n`);
      const whys = nothing.get(kind) ?? new Map<string, string[]>();
      nothing.set(kind, whys.set(result.nothing, [...(whys.get(result.nothing) ?? []), entry.key]));
    } catch (err) {
      failed++;
      const e = toFennecError(err);
      write(`FAILED ${entry.key}: ${e.code}: ${e.message}\n`);
    }
  }
  for (const [kind, whys] of nothing)
    for (const [why, keys] of whys) write(`nothing to build for [${kind}] ${keys.join(", ")}: ${why}\n`);
  return failed > 0 ? 1 : 0;
}

/** The guest kernel's build script, in the repository next to dist/. */
const GUEST_BUILD = fileURLToPath(new URL("../../../guest/linux/build.sh", import.meta.url));

/** `fennec build --guest-kernel`: runs guest/linux/build.sh, its progress on this terminal. */
export async function buildGuestKernel(): Promise<number> {
  const child = spawn("bash", [GUEST_BUILD], { stdio: "inherit" });
  const [code] = (await once(child, "exit")) as [number | null];
  return code ?? 1;
}
