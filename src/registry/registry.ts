import type { Stats } from "node:fs";
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { FennecError, toFennecError } from "../core/errors.js";
import { selfIdentity, stillRunning } from "../core/process-identity.js";
import { assertValidName, DEFAULT_USER, isValidName } from "../core/names.js";
import { functionKey, type FunctionId } from "../core/types.js";
import type { FunctionConfig } from "../config/function-config.js";
import { loadFunctionConfig, parseFunctionToml } from "../config/load-function.js";
import { KeyedMutex, TEMP_PREFIX, writeFileAtomic } from "./atomic-write.js";

export const FUNCTION_FILE = "function.toml";
const TRASH_PREFIX = ".fennec-trash-";

/** One function as the registry sees it: either a valid config or the error that explains why not. */
export interface FunctionEntry {
  readonly id: FunctionId;
  readonly key: string;
  readonly dir: string;
  readonly config: FunctionConfig | undefined;
  readonly error: FennecError | undefined;
}

interface CacheSlot {
  readonly tomlStamp: string;
  readonly artefactStamp: string;
  readonly config: FunctionConfig;
}

/**
 * The UniFaaS directory registry: `<root>/<fn>/function.toml` (user `default`) and
 * `<root>/<user>/<fn>/function.toml`. The disk is the source of truth; configs are re-read
 * whenever the files change, so edits take effect for new instances without a restart.
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
    return id.user === DEFAULT_USER ? join(this.root, id.name) : join(this.root, id.user, id.name);
  }

  /** Reads (or re-reads, when function.toml or its artefact changed on disk) one function's config. */
  async resolve(id: FunctionId): Promise<FunctionConfig> {
    const dir = this.dirOf(id);
    const file = join(dir, FUNCTION_FILE);
    let tomlStamp: string;
    try {
      tomlStamp = stampOf(await stat(file));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") {
        throw new FennecError("FUNCTION_NOT_FOUND", `function ${functionKey(id)} does not exist`);
      }
      throw toFennecError(err);
    }
    const cached = this.#cache.get(file);
    if (cached?.tomlStamp === tomlStamp && cached.artefactStamp === (await artefactStamp(cached.config))) {
      return cached.config;
    }
    const text = await readFile(file, "utf8");
    const base = loadFunctionConfig(id, dir, file, text);
    const art = await artefactStamp(base);
    // The revision covers the artefact too: re-uploading a module recycles the old instances.
    const config: FunctionConfig = { ...base, revision: `${base.revision}.${art}` };
    this.#cache.set(file, { tomlStamp, artefactStamp: art, config });
    return config;
  }

  /** Every function on disk, valid or not; a broken one is listed with its error, never hides others. */
  async list(): Promise<FunctionEntry[]> {
    const entries: FunctionEntry[] = [];
    const top = await readdir(this.root, { withFileTypes: true }).catch(() => []);
    for (const d of top.sort((a, b) => a.name.localeCompare(b.name))) {
      if (!d.isDirectory() || d.name.startsWith(".")) continue;
      const dir = join(this.root, d.name);
      if (await exists(join(dir, FUNCTION_FILE))) {
        entries.push(await this.#entry({ user: DEFAULT_USER, name: d.name }, dir));
        continue;
      }
      const inner = await readdir(dir, { withFileTypes: true }).catch(() => []);
      for (const e of inner.sort((a, b) => a.name.localeCompare(b.name))) {
        if (!e.isDirectory() || e.name.startsWith(".")) continue;
        if (await exists(join(dir, e.name, FUNCTION_FILE))) {
          entries.push(await this.#entry({ user: d.name, name: e.name }, join(dir, e.name)));
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
        `${dir}: directory name is not a valid function or user name`,
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
   * Creates or replaces a function from function.toml text plus artefact files (name -> bytes).
   * The toml is validated before anything is written; files land atomically, the toml last, so a
   * reader never sees a config pointing at a half-written module.
   */
  async deploy(
    id: FunctionId,
    tomlText: string,
    files: ReadonlyMap<string, Uint8Array> = new Map(),
  ): Promise<FunctionConfig> {
    const dir = this.dirOf(id);
    const file = join(dir, FUNCTION_FILE);
    parseFunctionToml(tomlText, file);
    for (const name of files.keys()) {
      if (!isValidFileName(name))
        throw new FennecError("BAD_NAME", `invalid artefact file name ${JSON.stringify(name)}`);
    }
    return this.#mutex.run(functionKey(id), async () => {
      await mkdir(dir, { recursive: true });
      for (const [name, bytes] of files) await writeFileAtomic(join(dir, name), bytes);
      // Check the full config (paths, artefacts) against a scratch copy before it becomes visible.
      loadFunctionConfig(id, dir, file, tomlText);
      await writeFileAtomic(file, tomlText);
      this.#cache.delete(file);
      return this.resolve(id);
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
  ): Promise<FunctionConfig> {
    const dir = this.dirOf(id);
    const file = join(dir, FUNCTION_FILE);
    return this.#mutex.run(functionKey(id), async () => {
      await mkdir(dir, { recursive: true });
      let toml: string | undefined;
      try {
        toml = await readFile(file, "utf8");
      } catch {
        toml = undefined;
      }
      const moduleFile = toml ? (parseFunctionToml(toml, file).wasm?.module ?? undefined) : "function.wasm";
      if (!moduleFile) {
        throw new FennecError(
          "CONFIG_INVALID",
          `${file}: function ${functionKey(id)} is not a [wasm] function; upload a module only to wasm functions`,
        );
      }
      await writeFileAtomic(join(dir, moduleFile), bytes);
      if (!toml) await writeFileAtomic(file, defaultToml(moduleFile));
      this.#cache.delete(file);
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
      await rename(dir, trash);
      this.#cache.delete(join(dir, FUNCTION_FILE));
      await rm(trash, { recursive: true, force: true });
    });
  }

  /**
   * Removes what a crashed run left: temporary upload files and half-deleted directories. Another
   * live Fennec serving the same directory writes the same kinds of names, so each Fennec first
   * records itself as a user of the registry (`.fennec/users/<pid>-<start time>`) and the sweep
   * runs only when no other user still runs; records of users that are gone are removed.
   */
  async cleanupStale(): Promise<string[]> {
    const users = join(this.root, ".fennec", "users");
    try {
      const me = await selfIdentity();
      await mkdir(users, { recursive: true, mode: 0o700 });
      await writeFile(join(users, `${me.pid}-${me.start}`), "");
      for (const name of await readdir(users)) {
        const user = /^(\d+)-(\d+)$/.exec(name);
        if (!user || Number(user[1]) === me.pid) continue;
        if (await stillRunning({ pid: Number(user[1]), start: user[2]! })) return [];
        await rm(join(users, name), { force: true });
      }
    } catch {
      return []; // a registry Fennec cannot write to has nothing of Fennec's to remove
    }
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
