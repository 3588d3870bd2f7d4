import { spawn } from "node:child_process";
import { once } from "node:events";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { toFennecError, type FennecError } from "../core/errors.js";
import type { FunctionConfig } from "../config/function-config.js";
import { DirectoryRegistry } from "../registry/registry.js";
import { ContainerDriver } from "../sandbox/drivers/container/driver.js";
import { defaultDockerSocket } from "../sandbox/drivers/container/engine.js";
import { OciDriver } from "../sandbox/drivers/oci/driver.js";
import { VmDriver } from "../sandbox/drivers/vm/driver.js";
import { buildHandler } from "../sandbox/handler-build.js";
import { ModuleCache } from "../sandbox/drivers/wasm/module-cache.js";

export interface BuildOptions {
  /** The Docker engine that [container] handler images are imported into (default: DOCKER_HOST or /var/run/docker.sock). */
  readonly dockerSocket?: string;
}

const ms = (t0: number) => `${(performance.now() - t0).toFixed(0)} ms`;

/**
 * `fennec build`: checks every function and builds, ahead of time, what its sandbox needs: a
 * [wasm] module compiled and checked; a [process] handler bundled; an [oci] handler's root
 * filesystem; a [container] handler's Docker image (when the engine can be reached; otherwise its
 * root filesystem, and the image is imported at first start). One progress line per step, then
 * `ok` or `FAILED` per function; exit code 1 when any function failed.
 */
export async function buildRegistry(
  dir: string,
  only: readonly string[],
  options: BuildOptions = {},
): Promise<number> {
  const registry = new DirectoryRegistry(resolve(dir));
  const modules = new ModuleCache(undefined);
  const oci = new OciDriver();
  const vm = new VmDriver();
  let docker: ContainerDriver | undefined;
  /** Whether the engine answered (asked once, at the first [container] function). */
  let engineUp: Promise<FennecError | undefined> | undefined;
  let failed = 0;
  for (const entry of await registry.list()) {
    if (only.length > 0 && !only.includes(entry.key) && !only.includes(entry.id.name)) continue;
    const t0 = performance.now();
    const progress = (line: string) => process.stdout.write(`  ...  ${entry.key}: ${line}\n`);
    try {
      if (entry.error) throw entry.error;
      const c: FunctionConfig = entry.config!;
      let what = `${c.sandbox.kind}: nothing to build`;
      if (c.sandbox.kind === "wasm") {
        await modules.forRevision(c.sandbox.module, c.revision, c.sandbox.memoryMiB, c.file);
        what = "wasm module compiled and checked";
      } else if (c.sandbox.kind === "process" && c.sandbox.handler) {
        what = `handler bundled into ${await buildHandler(c, c.sandbox.handler)}`;
      } else if (c.sandbox.kind === "oci" && c.sandbox.handler) {
        progress(`bundling ${c.sandbox.handler} and building its root filesystem`);
        const root = await oci.rootfs(c);
        what = `oci root filesystem ${root.dir} (${c.sandbox.rootfs}, ${c.sandbox.runtime})`;
      } else if (c.sandbox.kind === "vm") {
        const packs = c.sandbox.handler !== undefined || c.sandbox.command !== undefined;
        if (packs) progress("building the guest's root filesystem");
        const { missing } = await vm.packRoot(c);
        const hv = c.sandbox.hypervisor;
        what = packs
          ? `vm root filesystem in ${c.dir}/.fennec/vm (${hv.type}, ${hv.type === "firecracker" || hv["disk-type"] === "block" ? "ext4 image" : "9p"})`
          : `vm: kernel ${c.sandbox.kernel}${c.sandbox.image ? ` and image ${c.sandbox.image}` : " (a unikernel)"} found`;
        // Booting needs more than this build makes: say what, without failing the build.
        if (missing) what += `; to boot it: ${missing}`;
      } else if (c.sandbox.kind === "container") {
        docker ??= new ContainerDriver({ socketPath: options.dockerSocket ?? defaultDockerSocket() });
        const engine = docker.engine;
        engineUp ??= engine.ping().then(
          () => undefined,
          (err: unknown) => toFennecError(err),
        );
        const down = await engineUp;
        if (!down) what = `docker image ${await docker.buildImage(c, progress)}`;
        else if (c.sandbox.handler) {
          const root = await docker.handlerRootfs(c, progress);
          what =
            `root filesystem ${root.dir}; the image will be imported at first start, ` +
            `since ${down.message}`;
        } else what = `image ${c.sandbox.image} not checked: ${down.message}`;
      }
      process.stdout.write(`ok     ${entry.key}: ${what} (${ms(t0)})\n`);
    } catch (err) {
      failed++;
      const e = toFennecError(err);
      process.stdout.write(`FAILED ${entry.key}: ${e.code}: ${e.message}\n`);
    }
  }
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
