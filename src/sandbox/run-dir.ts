import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Root of the per-instance run directories of out-of-process sandboxes (sockets, logs). */
export function runRoot(driver: string): string {
  const uid = typeof process.getuid === "function" ? process.getuid() : 0;
  return join(process.env["FENNEC_RUN_DIR"] ?? join(tmpdir(), `fennec-${uid}`), driver);
}

/** What a run directory records about who made it, so a later start can tell debris from live. */
interface Owner {
  readonly fennecPid: number;
  readonly childPid: number | undefined;
  /** The child's /proc/<pid>/cmdline at start: a PID reused by another program is never touched. */
  readonly cmdline: string | undefined;
}

export async function createRunDir(driver: string, instanceId: string): Promise<string> {
  const dir = join(runRoot(driver), instanceId);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await recordOwner(dir, undefined);
  return dir;
}

export async function recordOwner(dir: string, childPid: number | undefined): Promise<void> {
  const cmdline =
    childPid === undefined
      ? undefined
      : await readFile(`/proc/${childPid}/cmdline`, "utf8").catch(() => undefined);
  const owner: Owner = { fennecPid: process.pid, childPid, cmdline };
  await writeFile(join(dir, "owner.json"), JSON.stringify(owner));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Removes run directories whose Fennec is gone (a crash), first killing the process group of a
 * child it left running — only when that PID still runs the very command Fennec started.
 */
export async function sweepStale(driver: string): Promise<string[]> {
  const root = runRoot(driver);
  const removed: string[] = [];
  for (const name of await readdir(root).catch(() => [] as string[])) {
    const dir = join(root, name);
    let owner: Owner | undefined;
    try {
      owner = JSON.parse(await readFile(join(dir, "owner.json"), "utf8")) as Owner;
    } catch {
      owner = undefined;
    }
    if (owner && owner.fennecPid !== process.pid && alive(owner.fennecPid)) continue; // another live Fennec's
    if (owner?.fennecPid === process.pid) continue;
    if (owner?.childPid !== undefined && alive(owner.childPid)) {
      const now = await readFile(`/proc/${owner.childPid}/cmdline`, "utf8").catch(() => undefined);
      if (now !== undefined && now === owner.cmdline) {
        try {
          process.kill(-owner.childPid, "SIGKILL");
        } catch {
          // already gone
        }
      }
    }
    await rm(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}
