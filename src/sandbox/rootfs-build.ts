import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import {
  chmod,
  cp,
  link,
  mkdir,
  readdir,
  readFile,
  realpath,
  rename,
  rm,
  stat,
  writeFile,
} from "node:fs/promises";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { FennecError } from "../core/errors.js";
import type { FunctionConfig } from "../config/function-config.js";
import { HANDLER_RUNTIME } from "./handler-build.js";
import { INSIDE } from "./host-view.js";
import { PerRevision } from "./per-revision.js";

const run = promisify(execFile);

/** A built root filesystem: its directory and a digest of everything that went into it. */
export interface BuiltRootfs {
  readonly dir: string;
  readonly digest: string;
}

/** Directories every root needs as mount points (the runtimes mount over them). */
const MOUNT_POINTS = ["proc", "dev", "sys", "tmp", "run/fennec", "etc"];
/**
 * Changes when what materialise() lays out changes, so roots built before are rebuilt. 2: /tmp is
 * 1777 (runc gives a tmpfs the mode of the directory it covers, and instances run unprivileged).
 */
const LAYOUT = 2;

/** Where a function's built roots live, one directory per digest (a dot directory, so the registry ignores it). */
function rootfsParent(config: FunctionConfig): string {
  return join(config.dir, ".fennec", "rootfs");
}

/** The shared libraries a binary loads, its ELF interpreter included, as `ldd` resolves them. */
async function sharedLibraries(binary: string): Promise<string[]> {
  const { stdout } = await run("ldd", [binary]).catch((err: Error) => {
    throw new FennecError("SANDBOX_START_FAILED", `cannot list the libraries of ${binary}: ${err.message}`);
  });
  const libs: string[] = [];
  for (const line of stdout.split("\n")) {
    const m = /(\/\S+) \(0x[0-9a-f]+\)/.exec(line);
    if (m) libs.push(m[1]!);
  }
  return libs;
}

async function stampOf(path: string): Promise<string> {
  const st = await stat(path);
  return `${path}:${st.size}:${st.mtimeMs}`;
}

/** Files of the function directory (its assets) except Fennec's own `.fennec`, sorted. */
export async function functionFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name))
    .filter((p) => !p.slice(dir.length + 1).startsWith(".fennec"))
    .sort();
}

/** Hard-links a file into the root (no copy of Node's 100 MB), or copies it across filesystems. */
async function place(source: string, target: string): Promise<void> {
  await mkdir(dirname(target), { recursive: true });
  try {
    await link(source, target);
  } catch {
    await cp(source, target, { dereference: true });
  }
}

/** What goes into a root: programs (with the libraries they load) and files, by their path inside. */
export interface RootfsContents {
  /** Host executables, placed at their real host path with every shared library they load. */
  readonly binaries: readonly string[];
  readonly files: ReadonlyArray<{ readonly source: string; readonly target: string }>;
}

/** Inputs resolved to real host paths, and the digest of everything that goes into the root. */
interface Resolved {
  readonly binaries: readonly string[];
  readonly libs: readonly string[];
  readonly files: RootfsContents["files"];
  readonly digest: string;
}

async function resolveContents(contents: RootfsContents): Promise<Resolved> {
  const binaries = await Promise.all(contents.binaries.map((b) => realpath(b)));
  const libs = [...new Set((await Promise.all(binaries.map(sharedLibraries))).flat())].sort();
  const hash = createHash("sha256");
  hash.update(`layout ${LAYOUT}\n`);
  for (const input of [...binaries, ...libs]) hash.update(`${await stampOf(input)}\n`);
  // Files by content (a bundle rebuilt byte for byte the same keeps its root and image).
  for (const f of contents.files) {
    const content = createHash("sha256")
      .update(await readFile(f.source))
      .digest("hex");
    hash.update(`${f.target}=${content}\n`);
  }
  return { binaries, libs, files: contents.files, digest: hash.digest("hex") };
}

/** Builds the root in a temporary directory next to `dir` and renames it into place. */
async function materialise(dir: string, r: Resolved): Promise<void> {
  const tmp = `${dir}.${r.digest.slice(0, 12)}.${process.pid}.tmp`;
  await rm(tmp, { recursive: true, force: true });
  try {
    for (const m of MOUNT_POINTS) await mkdir(join(tmp, m), { recursive: true });
    await chmod(join(tmp, "tmp"), 0o1777);
    for (const b of r.binaries) await place(b, join(tmp, b));
    for (const lib of r.libs) await place(await realpath(lib), join(tmp, lib));
    for (const f of r.files) await place(f.source, join(tmp, f.target));
    await writeFile(join(tmp, "etc/passwd"), "root:x:0:0:root:/tmp:/nonexistent\n");
    await writeFile(join(tmp, "etc/group"), "root:x:0:\n");
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Assembles a minimal root filesystem in `dir`: the binaries and the libraries they load, taken from
 * the host, the files, empty mount points, and a one-line passwd; nothing else (no shell). Rebuilt
 * only when an input changed (the digest covers the programs' and libraries' paths, sizes and
 * mtimes, and the files' contents), into a
 * temporary directory renamed into place.
 */
export async function assembleRootfs(dir: string, contents: RootfsContents): Promise<BuiltRootfs> {
  const r = await resolveContents(contents);
  const stampFile = `${dir}.digest`;
  if ((await readFile(stampFile, "utf8").catch(() => "")) === r.digest) return { dir, digest: r.digest };
  await materialise(dir, r);
  await writeFile(stampFile, r.digest);
  return { dir, digest: r.digest };
}

/**
 * Like assembleRootfs, but into `<parent>/<digest>`: a root is never changed or replaced while an
 * instance may run on it (containers of an older revision keep theirs until they stop, then the
 * driver removes it with removeRootfs). A directory of that name is complete (renamed into place).
 */
export async function assembleVersioned(parent: string, contents: RootfsContents): Promise<BuiltRootfs> {
  const r = await resolveContents(contents);
  const dir = join(parent, r.digest.slice(0, 16));
  if (!existsSync(dir)) {
    // The earlier layout (one root directly in `parent`, stamped by `<parent>.digest`) is replaced.
    if (existsSync(`${parent}.digest`)) {
      await rm(parent, { recursive: true, force: true });
      await rm(`${parent}.digest`, { force: true });
    }
    await mkdir(parent, { recursive: true });
    await materialise(dir, r);
  }
  return { dir, digest: r.digest };
}

/** Removes a function's built roots other than `keep` (for a driver none of whose instances run on them). */
export async function removeOtherRootfs(config: FunctionConfig, keep: BuiltRootfs): Promise<void> {
  const parent = rootfsParent(config);
  for (const name of await readdir(parent).catch(() => [] as string[])) {
    const dir = join(parent, name);
    if (dir !== keep.dir && !name.endsWith(".tmp")) await rm(dir, { recursive: true, force: true });
  }
}

/** Removes a root built by buildRootfs once nothing runs on it any more. */
export async function removeRootfs(root: BuiltRootfs): Promise<void> {
  await rm(root.dir, { recursive: true, force: true });
}

/** Node's path inside a built root: the host's own path, resolved (e.g. /usr/bin/node). */
export async function nodeInside(): Promise<string> {
  return realpath(process.execPath);
}

/**
 * The root filesystem a handler function runs in under `oci` and `container`: Node and its
 * libraries from the host, Fennec's handler runtime, and the function's directory at /fn with its
 * bundle (see INSIDE).
 */
export async function buildRootfs(config: FunctionConfig, bundle: string): Promise<BuiltRootfs> {
  const files = (await functionFiles(config.dir)).map((source) => ({
    source,
    target: join(INSIDE.functionDir, source.slice(config.dir.length)),
  }));
  files.push({ source: HANDLER_RUNTIME, target: INSIDE.runtime }, { source: bundle, target: INSIDE.bundle });
  return assembleVersioned(rootfsParent(config), { binaries: [process.execPath], files });
}

/** Root filesystems per function revision: each built once, however many instances start at once. */
export class RootfsBuilds {
  readonly #builds = new PerRevision<BuiltRootfs>();

  get(config: FunctionConfig, bundle: string): Promise<BuiltRootfs> {
    return this.#builds.get(config, () => buildRootfs(config, bundle));
  }
}
