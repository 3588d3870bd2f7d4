import { existsSync, readFileSync } from "node:fs";
import { mkdir, readdir, readFile, rmdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { FennecError } from "../core/errors.js";
import type { CleanupReport } from "./contract.js";

/**
 * Per-instance cgroups for memory and process-count limits, on cgroup v1 (per-controller
 * hierarchies, as on this kind of machine) or v2 (unified). Fennec nests its groups under the
 * cgroup it runs in, in a `fennec/` directory, so it touches nothing else.
 */
export interface CgroupLimits {
  readonly memoryMiB: number;
  readonly pids: number;
}

const ROOT = "/sys/fs/cgroup";
const V1_CONTROLLERS = ["memory", "pids"] as const;

export function cgroupVersion(): 1 | 2 {
  return existsSync(join(ROOT, "cgroup.controllers")) ? 2 : 1;
}

/** This process's own cgroup path for a v1 controller, or the unified one ("" key) for v2. */
function ownPath(controller: string): string {
  for (const line of readFileSync("/proc/self/cgroup", "utf8").split("\n")) {
    const [, ctrls, path] = line.split(":");
    if (ctrls === undefined || path === undefined) continue;
    if (controller === "" ? ctrls === "" : ctrls.split(",").includes(controller)) return path;
  }
  return "/";
}

/** The `fennec/` parent directories Fennec's groups live in, one per hierarchy. */
function parents(): string[] {
  if (cgroupVersion() === 2) return [join(ROOT, ownPath(""), "fennec")];
  return V1_CONTROLLERS.map((c) => join(ROOT, c, ownPath(c), "fennec"));
}

export class Cgroup {
  /** One directory per hierarchy (v1: memory and pids; v2: the unified one). */
  readonly dirs: readonly string[];

  private constructor(dirs: string[]) {
    this.dirs = dirs;
  }

  /** The directories a group of this name has, one per hierarchy. */
  static dirsFor(name: string): string[] {
    return parents().map((p) => join(p, name));
  }

  /** Creates the instance's group with its limits; a clear error when cgroups cannot be used. */
  static async create(name: string, limits: CgroupLimits): Promise<Cgroup> {
    const dirs = Cgroup.dirsFor(name);
    const group = new Cgroup(dirs);
    try {
      for (const d of dirs) await mkdir(d, { recursive: true });
      const bytes = String(limits.memoryMiB * 2 ** 20);
      if (cgroupVersion() === 2) {
        const parent = parents()[0]!;
        await writeFile(join(parent, "cgroup.subtree_control"), "+memory +pids").catch(() => undefined);
        await writeFile(join(dirs[0]!, "memory.max"), bytes);
        await writeFile(join(dirs[0]!, "memory.swap.max"), "0").catch(() => undefined);
        await writeFile(join(dirs[0]!, "pids.max"), String(limits.pids));
      } else {
        await writeFile(join(dirs[0]!, "memory.limit_in_bytes"), bytes);
        await writeFile(join(dirs[1]!, "pids.max"), String(limits.pids));
      }
    } catch (err) {
      await group.remove();
      throw new FennecError(
        "SANDBOX_START_FAILED",
        `cannot set up cgroup limits (cgroup v${cgroupVersion()}, needs root): ${(err as Error).message}`,
      );
    }
    return group;
  }

  /** Files to write a PID into so that process joins the group. */
  get procsFiles(): string[] {
    return this.dirs.map((d) => join(d, "cgroup.procs"));
  }

  /** True when the kernel's OOM killer has killed a process of this group. */
  oomKilled(): boolean {
    const file =
      cgroupVersion() === 2
        ? join(this.dirs[0]!, "memory.events")
        : join(this.dirs[0]!, "memory.oom_control");
    try {
      const m = /oom_kill (\d+)/.exec(readFileSync(file, "utf8"));
      return m !== null && Number(m[1]) > 0;
    } catch {
      return false;
    }
  }

  /** Removes the group's directories (they must be empty of processes; retried briefly). */
  async remove(): Promise<void> {
    for (const d of this.dirs) {
      for (let attempt = 0; attempt < 20; attempt++) {
        try {
          await rmdir(d);
          break;
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          if (code === "ENOENT") break;
          await new Promise((r) => setTimeout(r, 10));
        }
      }
    }
  }
}

/** Whose an instance is, from its owner record (see run-dir.ts). */
export type OwnerLookup = (instanceId: string) => Promise<"live" | "gone" | "unknown">;

/** How long a gone Fennec's group may take to empty once its processes are killed. */
const EMPTY_DEADLINE_MS = 30_000;

async function groupsIn(parent: string): Promise<string[]> {
  const entries = await readdir(parent, { withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isDirectory()).map((e) => e.name);
}

async function procsOf(dir: string): Promise<number[]> {
  const text = await readFile(join(dir, "cgroup.procs"), "utf8").catch(() => "");
  return text.split("\n").filter(Boolean).map(Number);
}

/**
 * Removes the groups (named by instance id) that a crashed Fennec left under the `fennec/` parent,
 * which every Fennec running in the same cgroup shares. `owner` says whose each group is: a live
 * Fennec's is not touched; a gone Fennec's has its processes killed (only Fennec puts processes in
 * its groups) and is removed; one with no owner record is left alone and reported.
 */
export async function sweepCgroups(owner: OwnerLookup): Promise<CleanupReport> {
  const report: CleanupReport = { removed: [], leftAlone: [] };
  for (const parent of parents()) {
    for (const name of await groupsIn(parent)) {
      const dir = join(parent, name);
      const whose = await owner(name);
      if (whose === "live") continue;
      if (whose === "unknown") {
        // Perhaps a Fennec's with another run root in the same cgroup: not provably a gone one's.
        report.leftAlone.push({ path: dir, reason: "no owner record in this run root" });
        continue;
      }
      const deadline = Date.now() + EMPTY_DEADLINE_MS;
      for (;;) {
        for (const pid of await procsOf(dir)) {
          try {
            process.kill(pid, "SIGKILL");
          } catch {
            // gone already
          }
        }
        const done = await rmdir(dir).then(
          () => true,
          (err: NodeJS.ErrnoException) => err.code === "ENOENT",
        );
        if (done) {
          report.removed.push(dir);
          break;
        }
        if (Date.now() > deadline) {
          report.leftAlone.push({ path: dir, reason: "its processes did not exit after SIGKILL" });
          break;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }
  return report;
}

/** Removes Fennec's empty `fennec/` parent groups (at shutdown); a busy one stays. */
export async function removeParents(): Promise<void> {
  for (const parent of parents()) await rmdir(parent).catch(() => undefined);
}

/**
 * Removes the empty cgroup directories at `path` (and, with `children`, the empty groups inside it
 * whose owner record names a Fennec that is gone) under this process's own cgroup in every
 * hierarchy: what an OCI runtime can leave of a relative `cgroupsPath` after its container is
 * deleted. A live Fennec's group may be empty for a moment (its runtime made it and is about to
 * move the container in), so only a gone one's are removed.
 */
export async function removeNested(path: string, children?: OwnerLookup): Promise<void> {
  const hierarchies = await readdir(ROOT).catch(() => [] as string[]);
  const own = new Set(
    readFileSync("/proc/self/cgroup", "utf8")
      .split("\n")
      .map((l) => l.split(":")[2])
      .filter((p): p is string => p !== undefined),
  );
  for (const h of hierarchies) {
    for (const base of own) {
      const dir = join(ROOT, h, base, path);
      if (children) {
        const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
        for (const e of entries) {
          if (!e.isDirectory() || (await children(e.name)) !== "gone") continue;
          await rmdir(join(dir, e.name)).catch(() => undefined);
        }
      }
      await rmdir(dir).catch(() => undefined);
    }
  }
}
