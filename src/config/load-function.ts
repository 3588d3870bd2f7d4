import { createHash } from "node:crypto";
import { lstatSync, readlinkSync, realpathSync, statSync, type Stats } from "node:fs";
import { dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { parse as parseToml, TomlError } from "smol-toml";
import type { z } from "zod";
import { FennecError } from "../core/errors.js";
import { functionKey, type FunctionId } from "../core/types.js";
import type { FunctionConfig, SandboxConfig } from "./function-config.js";
import { functionSchemaFor, type FunctionToml } from "./function-schema.js";
import type { FunctionFiles, SandboxTable } from "./sandbox-table.js";

export interface ConfigProblem {
  /** Dotted key path, or "" for the whole file. */
  readonly key: string;
  readonly message: string;
}

/** Builds the CONFIG_INVALID error: it names the file, each bad key and what was expected. */
export function configError(file: string, problems: ConfigProblem[]): FennecError {
  const text = problems.map((p) => (p.key ? `key "${p.key}": ${p.message}` : p.message)).join("; ");
  return new FennecError("CONFIG_INVALID", `${file}: ${text}`, { details: { file, problems } });
}

/**
 * One problem per issue. An unknown top-level table is named as such, with the sandbox tables this
 * Fennec has: `[firecracker]` or a kind this node was built without reads as a sandbox table.
 */
function zodProblems(error: z.ZodError, raw: unknown, kinds: readonly string[]): ConfigProblem[] {
  const isTable = (key: string) => {
    const value = (raw as Record<string, unknown>)[key];
    return typeof value === "object" && value !== null && !Array.isArray(value);
  };
  return error.issues.flatMap((issue) => {
    const base = issue.path.map(String).join(".");
    if (issue.code !== "unrecognized_keys") return [{ key: base, message: issue.message }];
    const tables = base ? [] : issue.keys.filter(isTable);
    const keys = issue.keys.filter((k) => !tables.includes(k)).map((k) => (base ? `${base}.${k}` : k));
    return [
      ...(keys.length > 0 ? [{ key: keys.join(", "), message: "unknown key" }] : []),
      ...tables.map((t) => ({
        key: t,
        message: `unknown table: the sandbox tables are ${kinds.map((k) => `[${k}]`).join(", ")}`,
      })),
    ];
  });
}

/** How many symbolic links one path from function.toml may pass through (as Linux's ELOOP). */
const MAX_LINKS = 40;

/**
 * Resolves a path from function.toml inside the function directory. Containment is decided
 * before existence, one component at a time, following each symbolic link by reading it: a path
 * that leads outside gets the same error whether anything exists there or not, so the loader's
 * errors never tell which host files exist.
 */
function resolveInside(
  dir: string,
  rel: string,
  key: string,
  file: string,
  kind: "file" | "directory",
): string {
  const problem = (message: string) => configError(file, [{ key, message }]);
  if (isAbsolute(rel))
    throw problem(`expected a path relative to the function directory, got ${JSON.stringify(rel)}`);
  const outside = () => problem(`${JSON.stringify(rel)} leads outside the function directory`);
  const notFound = () => problem(`${kind} not found: ${JSON.stringify(rel)}`);
  let root: string;
  try {
    root = realpathSync(dir);
  } catch {
    throw notFound();
  }
  const within = (path: string) => {
    const r = relative(root, path);
    return r === "" || (!r.startsWith("..") && !isAbsolute(r));
  };
  // Walk the remaining components from the (real) function directory, never stat'ing a path
  // before knowing it is inside.
  let current = root;
  let pending = rel.split(sep);
  let links = 0;
  while (pending.length > 0) {
    const part = pending.shift()!;
    if (part === "" || part === ".") continue;
    const next = part === ".." ? dirname(current) : join(current, part);
    if (!within(next)) throw outside();
    let st: Stats;
    try {
      st = lstatSync(next);
    } catch {
      throw notFound();
    }
    if (st.isSymbolicLink()) {
      if (++links > MAX_LINKS) throw notFound();
      const target = readlinkSync(next);
      if (isAbsolute(target)) {
        if (!within(resolve(target))) throw outside();
        current = root;
        pending = [...relative(root, resolve(target)).split(sep), ...pending];
      } else {
        pending = [...target.split(sep), ...pending];
      }
      continue;
    }
    if (pending.length > 0 && !st.isDirectory()) throw notFound();
    current = next;
  }
  const st = statSync(current);
  if (kind === "file" ? !st.isFile() : !st.isDirectory())
    throw problem(`expected a ${kind}: ${JSON.stringify(rel)}`);
  return current;
}

/**
 * Reads function.toml for a set of sandbox kinds: the schema is the top-level keys plus each
 * kind's table (exactly one of them), and a table becomes its kind's typed config.
 */
export class FunctionLoader {
  readonly #tables: ReadonlyMap<string, SandboxTable>;
  readonly #schema: z.ZodType<FunctionToml>;

  constructor(tables: readonly SandboxTable[]) {
    this.#tables = new Map(tables.map((t) => [t.kind, t]));
    if (this.#tables.size !== tables.length) throw new Error("two sandbox kinds share a name");
    this.#schema = functionSchemaFor(new Map(tables.map((t) => [t.kind, t.schema])));
  }

  /** The sandbox kinds (table names) this loader accepts, in registration order. */
  get kinds(): string[] {
    return [...this.#tables.keys()];
  }

  /** Parses and validates function.toml text; throws CONFIG_INVALID naming the file and the keys. */
  parse(text: string, file: string): FunctionToml {
    let raw: unknown;
    try {
      raw = parseToml(text);
    } catch (err) {
      const where = err instanceof TomlError ? ` at line ${err.line}, column ${err.column}` : "";
      const msg = err instanceof Error ? err.message.split("\n")[0] : String(err);
      throw configError(file, [{ key: "", message: `malformed TOML${where}: ${msg}` }]);
    }
    const result = this.#schema.safeParse(raw);
    if (!result.success) throw configError(file, zodProblems(result.error, raw, this.kinds));
    return result.data;
  }

  /**
   * Turns function.toml text into the typed config the rest of Fennec uses. `file` is how messages
   * name function.toml (relative to the registry); `dir` is the real directory paths resolve in.
   */
  load(id: FunctionId, dir: string, file: string, text: string): FunctionConfig {
    const cfg = this.parse(text, file);
    return {
      id,
      key: functionKey(id),
      dir,
      file,
      keepaliveMs: cfg.keepalive * 1000,
      concurrentRequests: cfg["concurrent-requests"],
      singleUse: cfg["single-use"],
      timeoutMs: Math.round(cfg.timeout * 1000),
      minInstances: cfg["min-instances"],
      maxInstances: cfg["max-instances"],
      maxQueue: cfg["max-queue"],
      queueTimeoutMs: Math.round(cfg["queue-timeout"] * 1000),
      forwardCredentials: cfg["forward-credentials"],
      maxRequestBodyBytes: cfg["max-request-body"],
      maxResponseBodyBytes: cfg["max-response-body"],
      async: {
        attempts: cfg.async.attempts,
        backoffMs: cfg.async.backoff,
        maxBackoffMs: cfg.async["max-backoff"],
        maxAgeMs: cfg.async["max-age"],
        retryStatuses: cfg.async["retry-statuses"],
        concurrency: cfg.async.concurrency,
      },
      sandbox: this.#sandbox(cfg, dir, file),
      revision: createHash("sha256").update(text).digest("hex").slice(0, 16),
    };
  }

  /** The files a config's code lives in (its kind's `code`): their stamps are part of the revision. */
  code(config: FunctionConfig): string[] {
    const table = this.#tables.get(config.sandbox.kind);
    return (table?.code(config.sandbox) ?? []).filter((path) => path !== undefined);
  }

  /** The admin API's `image` of a function (module, image reference, kernel), or null. */
  image(config: FunctionConfig): string | null {
    return this.#tables.get(config.sandbox.kind)?.image(config) ?? null;
  }

  #sandbox(cfg: FunctionToml, dir: string, file: string): SandboxConfig {
    // The schema let exactly one table through.
    const table = [...this.#tables.values()].find((t) => cfg[t.kind] !== undefined)!;
    const files: FunctionFiles = {
      file: (rel, key) => resolveInside(dir, rel, `${table.kind}.${key}`, file, "file"),
      directory: (rel, key) => resolveInside(dir, rel, `${table.kind}.${key}`, file, "directory"),
    };
    return table.toConfig(cfg[table.kind], files);
  }
}
