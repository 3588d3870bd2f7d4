import { createHash } from "node:crypto";
import { lstatSync, readlinkSync, realpathSync, statSync, type Stats } from "node:fs";
import { dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { parse as parseToml, TomlError } from "smol-toml";
import type { z } from "zod";
import { FennecError } from "../core/errors.js";
import { functionKey, type FunctionId } from "../core/types.js";
import type { FunctionConfig, SandboxConfig } from "./function-config.js";
import { functionSchema, type FunctionToml } from "./function-schema.js";

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

function zodProblems(error: z.ZodError): ConfigProblem[] {
  return error.issues.map((issue) => {
    const base = issue.path.map(String).join(".");
    if (issue.code === "unrecognized_keys") {
      const keys = issue.keys.map((k) => (base ? `${base}.${k}` : k));
      return { key: keys.join(", "), message: "unknown key" };
    }
    return { key: base, message: issue.message };
  });
}

/** Parses and validates function.toml text; throws CONFIG_INVALID naming the file and the keys. */
export function parseFunctionToml(text: string, file: string): FunctionToml {
  let raw: unknown;
  try {
    raw = parseToml(text);
  } catch (err) {
    const where = err instanceof TomlError ? ` at line ${err.line}, column ${err.column}` : "";
    const msg = err instanceof Error ? err.message.split("\n")[0] : String(err);
    throw configError(file, [{ key: "", message: `malformed TOML${where}: ${msg}` }]);
  }
  const result = functionSchema.safeParse(raw);
  if (!result.success) throw configError(file, zodProblems(result.error));
  return result.data;
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

function sandboxOf(cfg: FunctionToml, dir: string, file: string): SandboxConfig {
  if (cfg.wasm) {
    const dirs: Record<string, string> = {};
    for (const [guest, host] of Object.entries(cfg.wasm.dirs)) {
      dirs[guest] = resolveInside(dir, host, `wasm.dirs."${guest}"`, file, "directory");
    }
    return {
      kind: "wasm",
      module: resolveInside(dir, cfg.wasm.module, "wasm.module", file, "file"),
      memoryMiB: cfg.wasm.memory,
      env: cfg.wasm.env,
      dirs,
    };
  }
  if (cfg.vm) {
    const v = cfg.vm;
    const diskType = "disk-type" in v.hypervisor ? v.hypervisor["disk-type"] : "block";
    const placeholders = /%(ip|gateway|netmask|callback)\b/.test(v.cmdline);
    return {
      kind: "vm",
      kernel: v.kernel === undefined ? undefined : resolveInside(dir, v.kernel, "vm.kernel", file, "file"),
      image:
        v.image === undefined
          ? undefined
          : resolveInside(dir, v.image, "vm.image", file, diskType === "9p" ? "directory" : "file"),
      memoryMiB: v.memory,
      cpus: v.cpus,
      cmdline: v.cmdline,
      hypervisor: v.hypervisor,
      handler:
        v.handler === undefined ? undefined : resolveInside(dir, v.handler, "vm.handler", file, "file"),
      command: v.command,
      env: v.env,
      // A command line with UniFaaS placeholders asks for an IP network; anything else gets the channel.
      // Firecracker has neither a serial channel Fennec can use nor user-mode networking: taps.
      transport:
        v.transport ?? (v.hypervisor.type === "firecracker" ? "tap" : placeholders ? "user" : "channel"),
      snapshot: v.snapshot,
    };
  }
  if (cfg.process) {
    const p = cfg.process;
    return {
      kind: "process",
      command: p.command,
      handler:
        p.handler === undefined ? undefined : resolveInside(dir, p.handler, "process.handler", file, "file"),
      env: p.env,
      transport: p.transport,
      memoryMiB: p.memory,
      isolate: p.isolate,
      pids: p.pids,
    };
  }
  if (cfg.oci) {
    const o = cfg.oci;
    return {
      kind: "oci",
      command: o.command,
      handler:
        o.handler === undefined ? undefined : resolveInside(dir, o.handler, "oci.handler", file, "file"),
      runtime: o.runtime,
      env: o.env,
      memoryMiB: o.memory,
      pids: o.pids,
      rootfs: o.rootfs,
      port: o.port,
    };
  }
  const c = cfg.container!;
  return {
    kind: "container",
    image: c.image,
    handler:
      c.handler === undefined ? undefined : resolveInside(dir, c.handler, "container.handler", file, "file"),
    memoryMiB: c.memory,
    runtime: c.runtime,
    env: c.env,
    pids: c.pids,
    network: c.network,
    port: c.port,
  };
}

/**
 * Turns function.toml text into the typed config the rest of Fennec uses. `file` is how messages
 * name function.toml (relative to the registry); `dir` is the real directory paths resolve in.
 */
export function loadFunctionConfig(id: FunctionId, dir: string, file: string, text: string): FunctionConfig {
  const cfg = parseFunctionToml(text, file);
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
    sandbox: sandboxOf(cfg, dir, file),
    revision: createHash("sha256").update(text).digest("hex").slice(0, 16),
  };
}
