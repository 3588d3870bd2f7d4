import type { Stats } from "node:fs";
import {
  chmod,
  link,
  lstat,
  mkdir,
  readdir,
  readFile,
  readlink,
  rename,
  rm,
  stat,
  symlink,
  writeFile,
} from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { dirname, join, relative } from "node:path";
import { FennecError, toFennecError } from "../core/errors.js";
import { selfIdentity, stillRunning } from "../core/process-identity.js";
import { assertValidName, DEFAULT_USER, isValidName } from "../core/names.js";
import { functionKey, type FunctionId } from "../core/types.js";
import type { FunctionConfig } from "../config/function-config.js";
import type { FunctionToml } from "../config/function-schema.js";
import type { FunctionLoader } from "../config/load-function.js";
import { fsyncDir, KeyedMutex, renameDurable, TEMP_PREFIX, writeFileAtomic } from "./atomic-write.js";

export const FUNCTION_FILE = "function.toml";
/**
 * Names Fennec gives directories next to a function's own (`<parent>/<prefix><name>-<12 hex>`):
 * the prefix says what the directory is, the name whose function it was, the random part that
 * Fennec chose it (nobody can predict it from a function's name). Start-up acts on these only.
 *
 * `OLD`: the live version renamed away by a swap that has not finished. Its function's directory
 * missing means the new version never arrived: the old one is put back. Both present means the
 * swap completed: the old one is removed.
 */
const OLD_PREFIX = ".fennec-old-";
/** `TRASH`: a replaced or deleted version, kept while instances of it may still run; never restored. */
const TRASH_PREFIX = ".fennec-trash-";
const CHOSEN_SUFFIX = /-[0-9a-f]{12}$/;
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

export interface RegistryOptions {
  /** Reads function.toml: the sandbox kinds this Fennec has (`sandboxKinds.loader`). */
  readonly loader: FunctionLoader;
  /**
   * The revisions of a function that instances still run from (starting, serving or stopping):
   * a replaced or deleted directory is kept until none of them was read from it. The composition
   * root passes the scheduler's answer; without it a replaced directory is removed at once.
   */
  readonly revisionsInUse?: (key: string) => Iterable<string>;
}

/**
 * A change to a function made through the registry (a deploy, an upload, an install, a delete).
 * Listeners run while the function's lock is still held, so `dir` is exactly what the change left
 * live: a listener that reads it sees no later deploy (`src/cluster/function-share.ts` takes the
 * digest of what it will publish here).
 */
export interface RegistryChange {
  readonly type: "deployed" | "removed";
  readonly id: FunctionId;
  readonly key: string;
  /** The function's live directory (gone for "removed"). */
  readonly dir: string;
  /** Who asked: "api" for deploys, uploads and deletes; what `install` or `remove` was told otherwise. */
  readonly origin: string;
}

export type RegistryListener = (change: RegistryChange) => Promise<void> | void;

/** What start-up found of a crashed run: removed debris, and functions put back from an unfinished swap. */
export interface StaleCleanup {
  readonly removed: string[];
  readonly restored: string[];
}

/** A directory a deploy or delete replaced, waiting for the last instance read from it to stop. */
interface Retired {
  readonly key: string;
  readonly path: string;
  /** How the revisions of configs read from that directory end (`revisionTag`). */
  readonly tag: string;
}

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
  readonly #opts: RegistryOptions;
  readonly loader: FunctionLoader;
  readonly #retired: Retired[] = [];
  readonly #removals = new Set<Promise<void>>();
  readonly #listeners = new Set<RegistryListener>();

  constructor(root: string, opts: RegistryOptions) {
    this.root = root;
    this.#opts = opts;
    this.loader = opts.loader;
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
    if (cached?.tomlStamp === tomlStamp && cached.artefactStamp === (await this.#codeStamp(cached.config))) {
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
    const base = this.loader.load(id, dir, this.#shown(file), text);
    const art = await this.#codeStamp(base);
    // The revision covers the artefact too (re-uploading a module recycles the old instances), and
    // the directory itself: a redeploy swaps in a new one, and instances of the old one retire.
    const config: FunctionConfig = { ...base, revision: `${base.revision}.${art}${revisionTag(dirIno)}` };
    this.#cache.set(file, { tomlStamp, artefactStamp: art, config });
    return config;
  }

  /** Stamps of the files a config's code lives in (its kind says which): a change is a new revision. */
  async #codeStamp(config: FunctionConfig): Promise<string> {
    const stamps: string[] = [];
    for (const path of this.loader.code(config)) {
      try {
        stamps.push(stampOf(await stat(path)));
      } catch {
        stamps.push("missing");
      }
    }
    return stamps.length === 0 ? "-" : stamps.join("+");
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
    this.loader.parse(tomlText, this.#shown(join(this.dirOf(id), FUNCTION_FILE)));
    for (const name of files.keys()) {
      if (!isValidFileName(name))
        throw new FennecError("BAD_NAME", `invalid artefact file name ${JSON.stringify(name.slice(0, 130))}`);
    }
    return this.#replace(id, check, "api", async (scratch) => {
      for (const [name, bytes] of files) await writeFileAtomic(join(scratch, name), bytes);
      return tomlText;
    });
  }

  /**
   * Replaces a function with exactly `files` (relative path -> bytes and executable bit; the
   * function.toml among them): unlike `deploy`, files of the live function not in `files` are
   * gone. Checked in a scratch copy like every deploy; `origin` is told to the listeners. The
   * cluster installs a revision shared by another node this way.
   */
  async install(
    id: FunctionId,
    files: ReadonlyMap<string, { readonly bytes: Uint8Array; readonly executable: boolean }>,
    check: DeployCheck | undefined,
    origin: string,
  ): Promise<FunctionConfig> {
    const toml = files.get(FUNCTION_FILE);
    if (!toml) throw new FennecError("CONFIG_INVALID", `${functionKey(id)}: no ${FUNCTION_FILE}`);
    const tomlText = Buffer.from(toml.bytes).toString("utf8");
    this.loader.parse(tomlText, this.#shown(join(this.dirOf(id), FUNCTION_FILE)));
    for (const path of files.keys()) {
      if (!isSharedPath(path))
        throw new FennecError("BAD_NAME", `invalid file path ${JSON.stringify(path.slice(0, 200))}`);
    }
    return this.#replace(id, check, origin, async (scratch, live) => {
      // A whole replacement: the hard-linked copy of the live version goes first.
      if (live) {
        for (const item of await readdir(scratch))
          await rm(join(scratch, item), { recursive: true, force: true });
      }
      for (const [path, file] of files) {
        if (path === FUNCTION_FILE) continue;
        await mkdir(dirname(join(scratch, path)), { recursive: true });
        await writeFileAtomic(join(scratch, path), file.bytes);
        if (file.executable) await chmod(join(scratch, path), 0o755);
      }
      return tomlText;
    });
  }

  /**
   * Runs `work` on a function's live directory (undefined when it has none) while no deploy,
   * upload or delete of it can change it: what `work` reads is one version, whole.
   */
  async inspect<T>(id: FunctionId, work: (dir: string | undefined) => Promise<T>): Promise<T> {
    const dir = this.dirOf(id);
    return this.#mutex.run(functionKey(id), async () =>
      work((await exists(join(dir, FUNCTION_FILE))) ? dir : undefined),
    );
  }

  /** Tells `listener` of every change made through the registry from now on; returns the function that stops it. */
  onChange(listener: RegistryListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Listeners run in turn under the function's lock; one that fails is its own concern, never the deploy's. */
  async #notify(change: RegistryChange): Promise<void> {
    for (const listener of this.#listeners) {
      try {
        await listener(change);
      } catch {
        // a listener reports its own failures
      }
    }
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
    return this.#replace(id, check, "api", async (scratch, live) => {
      const shown = this.#shown(join(this.dirOf(id), FUNCTION_FILE));
      const toml = live ? await readFile(join(scratch, FUNCTION_FILE), "utf8") : undefined;
      const moduleFile = toml === undefined ? "function.wasm" : wasmModuleOf(this.loader.parse(toml, shown));
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
   * new files and return the toml, load and check the result there, then swap it in. A refusal at
   * any step removes the scratch directory and leaves the live function untouched.
   *
   * The swap is crash-safe: the live directory is renamed to an `OLD_PREFIX` name beside it, the
   * scratch one renamed in, both parents fsynced, and only then the old one renamed to a
   * `TRASH_PREFIX` name. Whatever step a crash interrupts, start-up (`cleanupStale`) tells from
   * the names which version is the function: the previous one until the new one is in place.
   */
  async #replace(
    id: FunctionId,
    check: DeployCheck | undefined,
    origin: string,
    build: (scratch: string, live: boolean) => Promise<string>,
  ): Promise<FunctionConfig> {
    const dir = this.dirOf(id);
    const parent = dirname(dir);
    const key = functionKey(id);
    await this.#mutex.run(key, async () => {
      const live = await exists(join(dir, FUNCTION_FILE));
      const scratch = join(this.root, `${TEMP_PREFIX}deploy-${randomBytes(6).toString("hex")}`);
      const old = join(parent, chosenName(OLD_PREFIX, id.name));
      await mkdir(scratch);
      let swapped = false;
      try {
        if (live) await linkTree(dir, scratch, (name) => name === CACHE_DIR || name.startsWith(TEMP_PREFIX));
        const toml = await build(scratch, live);
        await writeFileAtomic(join(scratch, FUNCTION_FILE), toml);
        const config = this.loader.load(id, scratch, this.#shown(join(dir, FUNCTION_FILE)), toml);
        await check?.(config);
        await fsyncDir(scratch);
        await mkdir(parent, { recursive: true });
        if (live) {
          // The build cache is keyed by content digests (bundles, roots), never trusted by path
          // alone, and running instances may be using its roots: it moves with the function.
          await rename(join(dir, CACHE_DIR), join(scratch, CACHE_DIR)).catch(ignoreMissing);
          try {
            await rename(dir, old);
          } catch (err) {
            await rename(join(scratch, CACHE_DIR), join(dir, CACHE_DIR)).catch(ignoreMissing);
            throw err;
          }
        }
        await rename(scratch, dir).catch(async (err: unknown) => {
          if (live) {
            // Put the live function back as it was.
            await renameDurable(old, dir);
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
        // Durable before the old version is renamed to trash: a crash must never find the old
        // version as trash while the new one is not in place.
        await fsyncDir(parent);
        if (parent !== this.root) await fsyncDir(this.root);
        if (live) await this.#retire(key, old, join(parent, chosenName(TRASH_PREFIX, id.name)));
      } finally {
        if (!swapped) await rm(scratch, { recursive: true, force: true });
        this.#cache.delete(join(dir, FUNCTION_FILE));
      }
      await this.#notify({ type: "deployed", id, key, dir, origin });
      await this.releaseRetired();
    });
    // Outside the lock: a reader that finds function.toml missing waits for the lock to be idle,
    // which it never would be while this deploy holds it.
    return this.resolve(id);
  }

  /** Removes a function: its directory is renamed away first so it disappears atomically. */
  async remove(id: FunctionId, origin = "api"): Promise<void> {
    const dir = this.dirOf(id);
    const key = functionKey(id);
    await this.#mutex.run(key, async () => {
      if (!(await exists(join(dir, FUNCTION_FILE)))) {
        throw new FennecError("FUNCTION_NOT_FOUND", `function ${key} does not exist`);
      }
      // Straight to a trash name: a crash after this rename never brings the function back.
      await this.#retire(key, dir, join(dirname(dir), chosenName(TRASH_PREFIX, id.name)));
      this.#cache.delete(join(dir, FUNCTION_FILE));
      await this.#notify({ type: "removed", id, key, dir, origin });
    });
    await this.releaseRetired();
  }

  /**
   * Renames a replaced or deleted function directory to `trash` and keeps it there until no
   * instance read from it is left (`releaseRetired`): a running `[process]` or `[oci]` instance
   * has it as its working directory or bind mount, and reads its files while it finishes.
   */
  async #retire(key: string, from: string, trash: string): Promise<void> {
    const tag = revisionTag((await stat(from)).ino);
    await renameDurable(from, trash);
    this.#retired.push({ key, path: trash, tag });
  }

  /**
   * Removes the replaced directories no instance uses any more (call it whenever an instance
   * stops); resolves once every removal started so far is done. What an instance still holds
   * at shutdown goes at the next start (`cleanupStale`).
   */
  async releaseRetired(): Promise<void> {
    for (const retired of [...this.#retired]) {
      const revisions = [...(this.#opts.revisionsInUse?.(retired.key) ?? [])];
      if (revisions.some((revision) => revision.endsWith(retired.tag))) continue;
      this.#retired.splice(this.#retired.indexOf(retired), 1);
      const removal: Promise<void> = rm(retired.path, { recursive: true, force: true })
        .catch(() => undefined)
        .finally(() => this.#removals.delete(removal));
      this.#removals.add(removal);
    }
    await Promise.all(this.#removals);
  }

  /**
   * Finishes or undoes what a crashed run left: an unfinished swap (`OLD_PREFIX`) is decided as
   * `#replace` describes, then temporary uploads and deploys and retired directories are removed.
   * It acts only on names Fennec chose, on real directories (never through a symbolic link), in
   * the places it writes them: the registry root and users' `@<user>/` directories.
   *
   * Another live Fennec serving the same directory writes the same kinds of names, so each Fennec
   * first records itself as a user of the registry (`.fennec/users/<pid>-<start time>`) and the
   * sweep runs only when no other user still runs; records of users that are gone are removed.
   */
  async cleanupStale(): Promise<StaleCleanup> {
    const users = join(this.root, ".fennec", "users");
    try {
      const me = await selfIdentity();
      await mkdir(users, { recursive: true, mode: 0o700 });
      await writeFile(join(users, `${me.pid}-${me.start}`), "");
      for (const name of await readdir(users)) {
        const user = /^(\d+)-(\d+)$/.exec(name);
        if (!user || Number(user[1]) === me.pid) continue;
        if (await stillRunning({ pid: Number(user[1]), start: user[2]! }))
          return { removed: [], restored: [] };
        await rm(join(users, name), { force: true });
      }
    } catch {
      return { removed: [], restored: [] }; // a registry Fennec cannot write to has nothing of Fennec's to remove
    }
    const removed: string[] = [];
    const restored: string[] = [];
    const finishSwaps = async (dir: string): Promise<void> => {
      for (const item of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
        const name = chosenNameOf(OLD_PREFIX, item.name);
        if (name === undefined || !item.isDirectory()) continue;
        const old = join(dir, item.name);
        const fnDir = join(dir, name);
        if (!(await lexists(fnDir))) {
          await renameDurable(old, fnDir);
          restored.push(fnDir);
        } else if (await exists(join(fnDir, FUNCTION_FILE))) {
          await rm(old, { recursive: true, force: true });
          removed.push(old);
        }
        // A directory in the function's place that is not a function was not put there by a
        // swap: the old version, the only copy, stays for the operator.
      }
    };
    const sweep = async (dir: string, depth: number): Promise<void> => {
      if (depth === 0 || (depth === 1 && dir.slice(this.root.length + 1).startsWith(USER_PREFIX)))
        await finishSwaps(dir);
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
    return { removed, restored };
  }
}

/** `<prefix><name>-<12 random hex digits>`: a name for a directory beside function `name`'s. */
function chosenName(prefix: string, name: string): string {
  return `${prefix}${name}-${randomBytes(6).toString("hex")}`;
}

/** The function name in a name `chosenName(prefix, name)` made, or undefined for any other name. */
function chosenNameOf(prefix: string, entry: string): string | undefined {
  if (!entry.startsWith(prefix) || !CHOSEN_SUFFIX.test(entry)) return undefined;
  const name = entry.slice(prefix.length, -13);
  return isValidName(name) ? name : undefined;
}

/**
 * The end of the revision of every config read from the directory with inode `ino`: a swap puts
 * in a new directory, so instances of the old one retire, and a retired directory is known to be
 * in use while an instance's revision ends with its tag.
 */
function revisionTag(ino: number): string {
  return `.${ino.toString(36)}`;
}

function isValidFileName(name: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(name) && !name.includes("..") && name !== FUNCTION_FILE;
}

/**
 * A relative path a function shared across nodes may hold: no hidden segment (so never `.`, `..`,
 * `.fennec` or a temporary name), no backslash or control character (`src/cluster/artefact.ts`).
 */
export function isSharedPath(path: string): boolean {
  return (
    path.length <= 4096 &&
    path
      .split("/")
      .every(
        (segment) =>
          segment.length > 0 &&
          segment.length <= 255 &&
          !segment.startsWith(".") &&
          ![...segment].some((ch) => ch === "\\" || ch.charCodeAt(0) < 0x20 || ch === "\x7f"),
      )
  );
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

/** `[wasm] module` of a parsed function.toml: what a Faasm upload replaces; undefined for other kinds. */
export function wasmModuleOf(toml: FunctionToml): string | undefined {
  const wasm = toml["wasm"] as { module?: unknown } | undefined;
  return typeof wasm?.module === "string" ? wasm.module : undefined;
}

/** Whether anything has the name, a symbolic link included (never followed). */
async function lexists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
