import type { Stats } from "node:fs";
import { link, mkdir, readdir, readFile, readlink, rename, rm, stat, symlink } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { dirname, join, relative } from "node:path";
import { FennecError, toFennecError } from "../core/errors.js";
import { assertValidName, DEFAULT_USER, isValidName } from "../core/names.js";
import { functionKey, type FunctionId } from "../core/types.js";
import type { FunctionConfig } from "../config/function-config.js";
import { loadFunctionConfig, parseFunctionToml } from "../config/load-function.js";
import { fsyncDir, KeyedMutex, renameDurable, TEMP_PREFIX, writeFileAtomic } from "./atomic-write.js";

export const FUNCTION_FILE = "function.toml";
const TRASH_PREFIX = ".fennec-trash-";
/** A user's namespace is `<root>/@<user>/`: `@` is not valid in names, so it never meets a function. */
const USER_PREFIX = "@";
/** Fennec's per-function build cache (bundles, roots), kept across a redeploy. */
const CACHE_DIR = ".fennec";

/** One function as the registry sees it: either a valid config or the error that explains why not. */
export interface FunctionEntry {
  readonly id: FunctionId;
  readonly key: string;
  readonly dir: string;
  readonly config: FunctionConfig | undefined;
  readonly error: FennecError | undefined;
}

/**
 * Checks a deploy completely before it goes live (sandbox available here, module runnable); it
 * is given the config as loaded from the scratch directory and throws to refuse the deploy.
 */
export type DeployCheck = (config: FunctionConfig) => Promise<void>;

interface CacheSlot {
  readonly tomlStamp: string;
  readonly artefactStamp: string;
  readonly config: FunctionConfig;
}

/**
 * The directory registry: `<root>/<fn>/function.toml` is function `<fn>` of user `default` (the
 * UniFaaS layout) and `<root>/@<user>/<fn>/function.toml` function `<fn>` of `<user>`, so a user's
 * namespace and a default function's own directories can never be one another. The disk is the
 * source of truth; configs are re-read whenever the files change, so edits take effect for new
 * instances without a restart. Deploys are built and checked in a scratch directory and swapped
 * in whole: a refused deploy changes nothing.
 */
export class DirectoryRegistry {
  readonly root: string;
  readonly #cache = new Map<string, CacheSlot>();
  readonly #mutex = new KeyedMutex();

  constructor(root: string) {
    this.root = root;
  }

  /** The directory of a function; names are validated so nothing can point outside the root. */
  dirOf(id: FunctionId): string {
    assertValidName(id.user, "user");
    assertValidName(id.name, "function");
    return id.user === DEFAULT_USER
      ? join(this.root, id.name)
      : join(this.root, `${USER_PREFIX}${id.user}`, id.name);
  }

  /** How messages name a path in the registry: relative to its root, never an absolute host path. */
  #shown(path: string): string {
    return relative(this.root, path);
  }

  /** Reads (or re-reads, when function.toml or its artefact changed on disk) one function's config. */
  async resolve(id: FunctionId): Promise<FunctionConfig> {
    const dir = this.dirOf(id);
    const file = join(dir, FUNCTION_FILE);
    const key = functionKey(id);
    let st = await this.#statToml(file);
    if (!st) {
      // A redeploy swaps the directory with two renames; a reader in between waits for it.
      await this.#mutex.idle(key);
      st = await this.#statToml(file);
      if (!st) throw new FennecError("FUNCTION_NOT_FOUND", `function ${key} does not exist`);
    }
    const tomlStamp = stampOf(st);
    const cached = this.#cache.get(file);
    if (cached?.tomlStamp === tomlStamp && cached.artefactStamp === (await artefactStamp(cached.config))) {
      return cached.config;
    }
    let text: string;
    let dirIno: number;
    try {
      text = await readFile(file, "utf8");
      dirIno = (await stat(dir)).ino;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT")
        throw new FennecError("FUNCTION_NOT_FOUND", `function ${key} does not exist`);
      throw this.#readError(file, err);
    }
    const base = loadFunctionConfig(id, dir, this.#shown(file), text);
    const art = await artefactStamp(base);
    // The revision covers the artefact too (re-uploading a module recycles the old instances), and
    // the directory itself: a redeploy swaps in a new one, and instances of the old one retire.
    const config: FunctionConfig = { ...base, revision: `${base.revision}.${art}.${dirIno.toString(36)}` };
    this.#cache.set(file, { tomlStamp, artefactStamp: art, config });
    return config;
  }

  async #statToml(file: string): Promise<Stats | undefined> {
    try {
      return await stat(file);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ENOTDIR") return undefined;
      throw this.#readError(file, err);
    }
  }

  /** An I/O error naming the file relative to the registry (Node's own message has the host path). */
  #readError(file: string, err: unknown): FennecError {
    const code = (err as NodeJS.ErrnoException).code ?? "error";
    return new FennecError("INTERNAL", `${this.#shown(file)}: cannot be read (${code})`, { cause: err });
  }

  /** Every function on disk, valid or not; a broken one is listed with its error, never hides others. */
  async list(): Promise<FunctionEntry[]> {
    const entries: FunctionEntry[] = [];
    for (const top of await subdirectories(this.root)) {
      const dir = join(this.root, top);
      if (!top.startsWith(USER_PREFIX)) {
        if (await exists(join(dir, FUNCTION_FILE))) {
          entries.push(await this.#entry({ user: DEFAULT_USER, name: top }, dir));
          continue;
        }
        // The old layout put user functions at `<root>/<user>/<fn>/`: listed, not served, so the
        // operator sees what to move instead of functions silently vanishing.
        for (const name of await subdirectories(dir)) {
          const fnDir = join(dir, name);
          if (!(await exists(join(fnDir, FUNCTION_FILE)))) continue;
          const error = new FennecError(
            "CONFIG_INVALID",
            `${this.#shown(fnDir)}: a user's functions live in ${USER_PREFIX}${top}/${name}/; this directory is not served, move it there`,
          );
          const id = { user: top, name };
          entries.push({ id, key: functionKey(id), dir: fnDir, config: undefined, error });
        }
        continue;
      }
      const user = top.slice(USER_PREFIX.length);
      for (const name of await subdirectories(dir)) {
        if (await exists(join(dir, name, FUNCTION_FILE))) {
          entries.push(await this.#entry({ user, name }, join(dir, name)));
        }
      }
    }
    return entries;
  }

  async #entry(id: FunctionId, dir: string): Promise<FunctionEntry> {
    const key = functionKey(id);
    if (!isValidName(id.user) || !isValidName(id.name)) {
      const error = new FennecError(
        "BAD_NAME",
        `${this.#shown(dir)}: directory name is not a valid function or user name`,
      );
      return { id, key, dir, config: undefined, error };
    }
    if (this.dirOf(id) !== dir) {
      // `@default/<fn>` would shadow `<fn>`: the default user's functions live at the top.
      const error = new FennecError(
        "BAD_NAME",
        `${this.#shown(dir)}: user ${id.user}'s functions live in ${this.#shown(this.dirOf(id))}`,
      );
      return { id, key, dir, config: undefined, error };
    }
    try {
      return { id, key, dir, config: await this.resolve(id), error: undefined };
    } catch (err) {
      return { id, key, dir, config: undefined, error: toFennecError(err) };
    }
  }

  /**
   * Creates or replaces a function from function.toml text plus artefact files (name -> bytes);
   * files of the live function that the deploy does not replace are kept. Everything is checked
   * in a scratch copy (schema, file names, paths, `check`) before it replaces the live directory.
   */
  async deploy(
    id: FunctionId,
    tomlText: string,
    files: ReadonlyMap<string, Uint8Array> = new Map(),
    check?: DeployCheck,
  ): Promise<FunctionConfig> {
    parseFunctionToml(tomlText, this.#shown(join(this.dirOf(id), FUNCTION_FILE)));
    for (const name of files.keys()) {
      if (!isValidFileName(name))
        throw new FennecError("BAD_NAME", `invalid artefact file name ${JSON.stringify(name.slice(0, 130))}`);
    }
    return this.#replace(id, check, async (scratch) => {
      for (const [name, bytes] of files) await writeFileAtomic(join(scratch, name), bytes);
      return tomlText;
    });
  }

  /**
   * Faasm's upload: replaces a function's module. Keeps an existing function.toml (and its
   * module file name); creates a default one for a new function.
   */
  async uploadModule(
    id: FunctionId,
    bytes: Uint8Array,
    defaultToml: (moduleFile: string) => string,
    check?: DeployCheck,
  ): Promise<FunctionConfig> {
    return this.#replace(id, check, async (scratch, live) => {
      const shown = this.#shown(join(this.dirOf(id), FUNCTION_FILE));
      const toml = live ? await readFile(join(scratch, FUNCTION_FILE), "utf8") : undefined;
      const moduleFile = toml === undefined ? "function.wasm" : parseFunctionToml(toml, shown).wasm?.module;
      if (!moduleFile) {
        throw new FennecError(
          "CONFIG_INVALID",
          `${shown}: function ${functionKey(id)} is not a [wasm] function; upload a module only to wasm functions`,
        );
      }
      if (!isValidModulePath(moduleFile)) {
        throw new FennecError("CONFIG_INVALID", `${shown}: key "wasm.module" is not a plain file name`);
      }
      await writeFileAtomic(join(scratch, moduleFile), bytes);
      return toml ?? defaultToml(moduleFile);
    });
  }

  /**
   * The one way a function changes through the API: copy the live directory into a scratch
   * directory in the registry (hard links: same filesystem, nothing copied), let `build` write the
   * new files and return the toml, load and check the result there, then swap it in: the live
   * directory is renamed away, the scratch one renamed in, the parent directories fsynced. A
   * refusal at any step removes the scratch directory and leaves the live function untouched.
   */
  async #replace(
    id: FunctionId,
    check: DeployCheck | undefined,
    build: (scratch: string, live: boolean) => Promise<string>,
  ): Promise<FunctionConfig> {
    const dir = this.dirOf(id);
    const key = functionKey(id);
    return this.#mutex.run(key, async () => {
      const live = await exists(join(dir, FUNCTION_FILE));
      const scratch = join(this.root, `${TEMP_PREFIX}deploy-${randomBytes(6).toString("hex")}`);
      const trash = join(this.root, `${TRASH_PREFIX}${randomBytes(6).toString("hex")}`);
      await mkdir(scratch);
      let swapped = false;
      try {
        if (live) await linkTree(dir, scratch, (name) => name === CACHE_DIR || name.startsWith(TEMP_PREFIX));
        const toml = await build(scratch, live);
        await writeFileAtomic(join(scratch, FUNCTION_FILE), toml);
        const config = loadFunctionConfig(id, scratch, this.#shown(join(dir, FUNCTION_FILE)), toml);
        await check?.(config);
        await fsyncDir(scratch);
        await mkdir(dirname(dir), { recursive: true });
        if (live) {
          // The build cache is keyed by content digests (bundles, roots), never trusted by path
          // alone, and running instances may be using its roots: it moves with the function.
          await rename(join(dir, CACHE_DIR), join(scratch, CACHE_DIR)).catch(ignoreMissing);
          try {
            await renameDurable(dir, trash);
          } catch (err) {
            await rename(join(scratch, CACHE_DIR), join(dir, CACHE_DIR)).catch(ignoreMissing);
            throw err;
          }
        }
        await rename(scratch, dir).catch(async (err: unknown) => {
          if (live) {
            // Put the live function back as it was.
            await rename(trash, dir);
            await rename(join(scratch, CACHE_DIR), join(dir, CACHE_DIR)).catch(ignoreMissing);
          }
          const code = (err as NodeJS.ErrnoException).code;
          if (code !== "ENOTEMPTY" && code !== "EEXIST" && code !== "ENOTDIR") throw err;
          // Something that is not a function (a directory of the old user layout) has the name.
          throw new FennecError(
            "BAD_REQUEST",
            `${this.#shown(dir)} exists and is not a function directory; Fennec does not replace it`,
          );
        });
        swapped = true;
        await fsyncDir(dirname(dir));
        if (dirname(dir) !== this.root) await fsyncDir(this.root);
      } finally {
        if (!swapped) await rm(scratch, { recursive: true, force: true });
        this.#cache.delete(join(dir, FUNCTION_FILE));
      }
      await rm(trash, { recursive: true, force: true });
      return this.resolve(id);
    });
  }

  /** Removes a function: its directory is renamed away first so it disappears atomically. */
  async remove(id: FunctionId): Promise<void> {
    const dir = this.dirOf(id);
    await this.#mutex.run(functionKey(id), async () => {
      if (!(await exists(join(dir, FUNCTION_FILE)))) {
        throw new FennecError("FUNCTION_NOT_FOUND", `function ${functionKey(id)} does not exist`);
      }
      const trash = join(this.root, `${TRASH_PREFIX}${randomBytes(6).toString("hex")}`);
      await renameDurable(dir, trash);
      this.#cache.delete(join(dir, FUNCTION_FILE));
      await rm(trash, { recursive: true, force: true });
    });
  }

  /** Removes what a crashed run left: temporary uploads and deploys, half-deleted directories. */
  async cleanupStale(): Promise<string[]> {
    const removed: string[] = [];
    const sweep = async (dir: string, depth: number): Promise<void> => {
      const items = await readdir(dir, { withFileTypes: true }).catch(() => []);
      for (const item of items) {
        const full = join(dir, item.name);
        if (item.name.startsWith(TEMP_PREFIX) || item.name.startsWith(TRASH_PREFIX)) {
          await rm(full, { recursive: true, force: true });
          removed.push(full);
        } else if (item.isDirectory() && depth < 2 && !item.name.startsWith(".")) {
          await sweep(full, depth + 1);
        }
      }
    };
    await sweep(this.root, 0);
    return removed;
  }
}

function isValidFileName(name: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(name) && !name.includes("..") && name !== FUNCTION_FILE;
}

/** A module path an upload may write: a file name, or a path of them, inside the function. */
function isValidModulePath(path: string): boolean {
  return path.split("/").every(isValidFileName);
}

/**
 * Mirrors a directory tree with hard links (files), new directories and copied symbolic links,
 * skipping top-level names `skip` matches; every directory made is fsynced.
 */
async function linkTree(from: string, to: string, skip: (name: string) => boolean): Promise<void> {
  for (const item of await readdir(from, { withFileTypes: true })) {
    if (skip(item.name)) continue;
    const src = join(from, item.name);
    const dst = join(to, item.name);
    if (item.isDirectory()) {
      await mkdir(dst);
      await linkTree(src, dst, () => false);
    } else if (item.isSymbolicLink()) {
      await symlink(await readlink(src), dst);
    } else if (item.isFile()) {
      await link(src, dst);
    }
  }
  await fsyncDir(to);
}

async function subdirectories(dir: string): Promise<string[]> {
  const items = await readdir(dir, { withFileTypes: true }).catch(() => []);
  return items
    .filter((d) => d.isDirectory() && !d.name.startsWith("."))
    .map((d) => d.name)
    .sort((a, b) => a.localeCompare(b));
}

function ignoreMissing(err: unknown): void {
  if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
}

function stampOf(st: Stats): string {
  return `${st.mtimeMs.toString(36)}.${st.size.toString(36)}.${st.ino.toString(36)}`;
}

async function artefactStamp(config: FunctionConfig): Promise<string> {
  const s = config.sandbox;
  const artefacts =
    s.kind === "wasm"
      ? [s.module]
      : s.kind === "process" || s.kind === "oci" || s.kind === "container"
        ? [s.handler]
        : // A VM's kernel and image are its code: a new one is a new revision (and snapshot).
          [s.kernel, s.image, s.handler];
  const stamps: string[] = [];
  for (const artefact of artefacts) {
    if (artefact === undefined) continue;
    try {
      stamps.push(stampOf(await stat(artefact)));
    } catch {
      stamps.push("missing");
    }
  }
  return stamps.length === 0 ? "-" : stamps.join("+");
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
