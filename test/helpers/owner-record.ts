import { spawn } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { basename } from "node:path";
import { startTime } from "../../src/core/process-identity.js";

/** The identity (PID and start time) of a real process that has exited: a Fennec that is gone. */
export async function goneProcess(): Promise<{ pid: number; start: string }> {
  const child = spawn("sleep", ["60"], { stdio: "ignore" });
  const exited = new Promise((r) => child.once("exit", r));
  let start: string | undefined;
  while (start === undefined) start = await startTime(child.pid!);
  child.kill("SIGKILL");
  await exited;
  return { pid: child.pid!, start };
}

/**
 * Writes the owner record (run-dir.ts's format) of run directory `dir` as a Fennec that crashed
 * would have left it: naming a process that is gone, and `childPid` as the child it started.
 */
export async function recordGoneOwner(dir: string, childPid?: number): Promise<void> {
  const child =
    childPid === undefined
      ? undefined
      : {
          pid: childPid,
          start: (await startTime(childPid))!,
          cmdline: await readFile(`/proc/${childPid}/cmdline`, "utf8"),
        };
  const record = { kind: "fennec-run-dir/1", instanceId: basename(dir), fennec: await goneProcess(), child };
  await writeFile(`${dir}.owner.json`, JSON.stringify(record));
}
