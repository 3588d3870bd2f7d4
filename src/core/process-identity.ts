import { readFile } from "node:fs/promises";

/**
 * A process named by its PID and its start time (field 22 of /proc/<pid>/stat, in clock ticks
 * since boot). A PID alone is recycled by the kernel; the pair names one process for the life of
 * the machine, so an owner record can tell a Fennec that still runs from a new program that
 * happens to have its old PID.
 */
export interface ProcessIdentity {
  readonly pid: number;
  readonly start: string;
}

/**
 * The process's start time, or undefined when no such process runs (a zombie has exited: it only
 * waits for its parent to collect its status) or /proc is unreadable.
 */
export async function startTime(pid: number): Promise<string | undefined> {
  if (!Number.isSafeInteger(pid) || pid <= 0) return undefined;
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => undefined);
  if (stat === undefined) return undefined;
  // Counted after the command name, which is in parentheses and may contain spaces.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return fields[0] === "Z" ? undefined : fields[19];
}

let self: Promise<ProcessIdentity> | undefined;

/** This process's identity (read once: it never changes while the process runs). */
export function selfIdentity(): Promise<ProcessIdentity> {
  self ??= (async () => {
    const start = await startTime(process.pid);
    if (start === undefined) throw new Error(`cannot read /proc/${process.pid}/stat`);
    return { pid: process.pid, start };
  })();
  return self;
}

/** True while the very process `id` names still exists (same PID, same start time). */
export async function stillRunning(id: ProcessIdentity): Promise<boolean> {
  return (await startTime(id.pid)) === id.start;
}
