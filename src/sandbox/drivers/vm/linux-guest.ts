import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, realpathSync } from "node:fs";
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { FennecError } from "../../../core/errors.js";
import type { FunctionConfig, VmSandboxConfig } from "../../../config/function-config.js";
import { HANDLER_RUNTIME } from "../../handler-build.js";
import { INSIDE } from "../../host-view.js";
import { BINDING_INSIDE } from "../../socket-dir.js";
import { assembleVersioned, functionFiles, type BuiltRootfs } from "../../rootfs-build.js";

const run = promisify(execFile);

/** Fennec's cache directory (the guest kernel lives there, built by guest/linux/build.sh). */
export function cacheDir(): string {
  return (
    process.env["FENNEC_CACHE_DIR"] ??
    join(process.env["XDG_CACHE_HOME"] ?? join(homedir(), ".cache"), "fennec")
  );
}

export interface GuestKernel {
  readonly kernel: string;
  readonly initramfs: string;
}

/** The guest kernel and agent initramfs `guest/linux/build.sh` built, or a clear error saying how. */
export function guestKernel(): GuestKernel {
  const dir = process.env["FENNEC_GUEST_DIR"] ?? join(cacheDir(), "guest-linux", "current");
  const kernel = join(dir, "vmlinux");
  const initramfs = join(dir, "initramfs.cpio.gz");
  if (!existsSync(kernel) || !existsSync(initramfs)) {
    throw new FennecError(
      "SANDBOX_START_FAILED",
      `no Fennec guest kernel in ${dir}: build it once with \`fennec build --guest-kernel\` ` +
        "(or `bash guest/linux/build.sh`; needs Debian's linux-source-6.1 flex bison bc libelf-dev libssl-dev cpio)",
    );
  }
  // Resolved now: `current` is a symlink a rebuild moves, and a revision keeps the files it began with.
  return { kernel: realpathSync(kernel), initramfs: realpathSync(initramfs) };
}

/**
 * What the agent reads from `/fennec/guest.conf` (guest/linux/README.md): one `key=value` a line.
 * On the channel the function serves on a Unix socket the agent bridges to, and is told `ignore`
 * (the agent's READY is the readiness signal). On an IP network (transport `user` or `tap`) it
 * serves on the guest's network itself, as a UniFaaS guest does, and its last argument is the
 * instance's callback URL (`callback=arg`: the agent takes it from `fennec.callback=`, see
 * ipNetworkParams), as UniFaaS's Linux images hand it to their program: Fennec waits for that call.
 */
function guestConf(argv: readonly string[], env: Readonly<Record<string, string>>, channel: boolean): string {
  const lines = [
    ...argv.map((a) => `argv=${a}`),
    ...(channel ? ["argv=ignore"] : []),
    ...Object.entries(env).map(([k, v]) => `env=${k}=${v}`),
    `cwd=${INSIDE.functionDir}`,
    // On the channel the handler binding is a socket the agent serves and carries to Fennec.
    ...(channel ? [`socket=${INSIDE.runDir}/http.sock`, `host-socket=${BINDING_INSIDE}`] : ["callback=arg"]),
  ];
  return `${lines.join("\n")}\n`;
}

/**
 * Kernel parameters Fennec's Linux guest needs on an IP network (transport `user` or `tap`), with
 * UniFaaS placeholders the driver substitutes per instance: the callback URL the agent hands the
 * program (`fennec.callback=`), and, unless the function's own `cmdline` configures the network
 * (`ip=`), eth0's address, gateway and netmask for the kernel to set before the program starts.
 * Nothing on the channel: there the program is told `ignore` and the agent says when it is ready.
 */
export function ipNetworkParams(vm: VmSandboxConfig): string {
  if (vm.transport === "channel") return "";
  const ip = /(?:^|\s)ip=/.test(vm.cmdline) ? "" : "ip=%ip::%gateway:%netmask::eth0:off ";
  return `${ip}fennec.callback=%callback`;
}

/** Writes a file only when its content changes, so its stamp (and the root's digest) holds still. */
async function writeIfChanged(path: string, text: string): Promise<void> {
  if ((await readFile(path, "utf8").catch(() => undefined)) === text) return;
  await mkdir(join(path, ".."), { recursive: true });
  await writeFile(`${path}.tmp`, text);
  await rename(`${path}.tmp`, path);
}

/** The root filesystem of a `[vm]` handler or command function, and its disk image when asked for. */
export interface GuestRoot {
  readonly rootfs: BuiltRootfs;
  /** An ext4 image of the root, for `disk-type = "block"`. */
  readonly image: string | undefined;
}

/**
 * Packs a `[vm]` function for Fennec's Linux guest: the program (Node and the handler runtime, or
 * the command's binary) with the libraries it loads, the function directory at /fn, its bundle,
 * and guest.conf telling the agent what to run. Shared read-only by every instance over 9p, or as
 * an ext4 image made with `mke2fs -d` (no root, no loop device).
 */
export function buildGuestRoot(
  config: FunctionConfig,
  vm: VmSandboxConfig,
  bundle: string | undefined,
): Promise<GuestRoot> {
  // Per function, not per directory: functions may share a directory (and differ in argv or env).
  const work = join(config.dir, ".fennec", "vm", `${config.id.user}+${config.id.name}`);
  // One build at a time per function: two revisions built at once would share temporary names.
  const previous = building.get(work) ?? Promise.resolve();
  const next = previous.catch(() => undefined).then(() => buildInto(work, config, vm, bundle));
  building.set(work, next);
  void next.finally(() => building.get(work) === next && building.delete(work)).catch(() => undefined);
  return next;
}

const building = new Map<string, Promise<GuestRoot>>();

async function buildInto(
  work: string,
  config: FunctionConfig,
  vm: VmSandboxConfig,
  bundle: string | undefined,
): Promise<GuestRoot> {
  const files = (await functionFiles(config.dir)).map((source) => ({
    source,
    target: join(INSIDE.functionDir, source.slice(config.dir.length)),
  }));
  let argv: string[];
  let binaries: string[];
  if (bundle) {
    files.push(
      { source: HANDLER_RUNTIME, target: INSIDE.runtime },
      { source: bundle, target: INSIDE.bundle },
    );
    argv = [process.execPath, INSIDE.runtime, INSIDE.bundle];
    binaries = [process.execPath];
  } else {
    argv = [...vm.command!];
    binaries = vm.command![0]!.startsWith("/") ? [vm.command![0]!] : [];
  }
  const conf = join(work, "guest.conf");
  await writeIfChanged(
    conf,
    guestConf(argv, { PATH: "/usr/bin:/bin", HOME: "/tmp", ...vm.env }, vm.transport === "channel"),
  );
  files.push({ source: conf, target: "/fennec/guest.conf" });
  // One directory per digest, never rewritten: a 9p guest of the previous revision may still be
  // running on its root while this one is built (its instances drain, then close).
  const roots = join(work, "roots");
  const rootfs = await assembleVersioned(roots, { binaries, files });
  // Firecracker has block devices only.
  const diskType = vm.hypervisor.type === "firecracker" ? "block" : vm.hypervisor["disk-type"];
  const image = diskType === "block" ? await ext4Image(rootfs, `${rootfs.dir}.ext4`) : undefined;
  await pruneRoots(roots, rootfs.dir);
  return { rootfs, image };
}

/**
 * Keeps the current root and the one before it (whose instances may still be draining); removes
 * older ones, with their disk images.
 */
async function pruneRoots(parent: string, current: string): Promise<void> {
  const entries = await readdir(parent, { withFileTypes: true }).catch(() => []);
  const dirs = await Promise.all(
    entries
      .filter((e) => e.isDirectory() && join(parent, e.name) !== current)
      .map(async (e) => ({ dir: join(parent, e.name), mtime: (await stat(join(parent, e.name))).mtimeMs })),
  );
  dirs.sort((a, b) => b.mtime - a.mtime);
  for (const old of dirs.slice(1)) {
    await rm(old.dir, { recursive: true, force: true });
    await rm(`${old.dir}.ext4`, { force: true });
    await rm(`${old.dir}.ext4.digest`, { force: true });
  }
}

/** An ext4 image of a root directory, rebuilt only when the root's digest changes. */
async function ext4Image(root: BuiltRootfs, path: string): Promise<string> {
  const stamp = `${path}.digest`;
  if ((await readFile(stamp, "utf8").catch(() => "")) === root.digest && existsSync(path)) return path;
  const { stdout } = await run("du", ["-sm", "--apparent-size", root.dir]);
  const sizeMiB = Math.ceil(Number.parseInt(stdout, 10) * 1.25) + 16;
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
  await rm(tmp, { force: true });
  try {
    await run("mke2fs", ["-q", "-F", "-t", "ext4", "-L", "fnroot", "-d", root.dir, tmp, `${sizeMiB}M`]);
  } catch (err) {
    await rm(tmp, { force: true });
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    throw new FennecError(
      "SANDBOX_START_FAILED",
      e.code === "ENOENT"
        ? "mke2fs is not installed: apt-get install e2fsprogs"
        : `mke2fs failed: ${e.stderr ?? e.message}`,
    );
  }
  await rename(tmp, path);
  await writeFile(stamp, root.digest);
  return path;
}

/** Size and mtime of each input file, for keys that must change when an artefact does. */
export async function stampsOf(paths: ReadonlyArray<string | undefined>): Promise<string> {
  const out: string[] = [];
  for (const p of paths) {
    if (!p) continue;
    const st = await stat(p);
    out.push(`${p}:${st.size}:${st.mtimeMs}`);
  }
  return out.join("\n");
}
