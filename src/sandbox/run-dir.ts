import { randomBytes } from "node:crypto";
import {
  chmod,
  link,
  lstat,
  mkdir,
  readdir,
  readFile,
  rename,
  rm,
  unlink,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { FennecError } from "../core/errors.js";
import type { CleanupStack } from "./cleanup-stack.js";
import type { CleanupReport } from "./contract.js";
import { mountPointsUnder } from "./mounts.js";
import { selfIdentity, startTime, stillRunning, type ProcessIdentity } from "../core/process-identity.js";

/**
 * Per-instance run directories of out-of-process sandboxes (sockets, logs, bundles), under
 * `<run base>/<driver>/<instance id>`. Each has an owner record beside it,
 * `<instance id>.owner.json`, never inside it: a sandbox may write into its run directory (an
 * isolated process binds it), so it must not be able to rewrite what a later sweep trusts.
 *
 * The record names the Fennec that made the directory by PID and process start time, and the
 * child it started the same way. A sweep removes a run directory only when its record names a
 * Fennec that is gone, kills a child only when that very process still runs, and leaves alone
 * (and reports) everything else it finds: entries without a record, symbolic links, other users'
 * files, and records it cannot parse.
 */

const RECORD_SUFFIX = ".owner.json";
/** What a record says it is: a file that merely parses as JSON is not taken for one. */
const RECORD_KIND = "fennec-run-dir/1";
/** Temporary records: `.<id>.owner.json.<pid>-<start>-<random>.tmp`, named after their writer. */
const TEMP_RECORD = /^\.(.+)\.owner\.json\.(\d+)-(\d+)-[0-9a-f]+\.tmp$/;
/** Instance ids that may name a run directory (scheduler ids are UUIDs; tests use similar names). */
const INSTANCE_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/;

interface OwnerRecord {
  readonly kind: typeof RECORD_KIND;
  readonly instanceId: string;
  readonly fennec: ProcessIdentity;
  /** The process the driver started for the instance (its process group is killed with it). */
  readonly child: (ProcessIdentity & { readonly cmdline: string }) | undefined;
}

function uid(): number {
  return typeof process.getuid === "function" ? process.getuid() : 0;
}

/** Where every driver's run directories live: FENNEC_RUN_DIR, or `$TMPDIR/fennec-<uid>`. */
export function runBase(): string {
  return process.env["FENNEC_RUN_DIR"] ?? join(tmpdir(), `fennec-${uid()}`);
}

/** Root of one driver's run directories. */
export function runRoot(driver: string): string {
  return join(runBase(), driver);
}

/** Why `dir` must not be used as (part of) the run root; undefined when it is safe to use. */
async function unsafeBecause(dir: string): Promise<string | undefined> {
  const st = await lstat(dir);
  if (st.isSymbolicLink()) return "a symbolic link";
  if (!st.isDirectory()) return "not a directory";
  if (st.uid !== uid()) return `owned by uid ${st.uid}, not by this user (uid ${uid()})`;
  if ((st.mode & 0o022) !== 0) return `writable by others (mode ${(st.mode & 0o777).toString(8)})`;
  // Ours and writable by no one else, so nothing in it can be another user's: close it to reading
  // and listing. Search (x) stays where it is: the process driver lets its isolated instances,
  // which run as an unprivileged uid, walk (never list) down to their own socket directory.
  if ((st.mode & 0o044) !== 0) await chmod(dir, st.mode & 0o7711);
  return undefined;
}

function unsafeRoot(dir: string, problem: string): FennecError {
  return new FennecError(
    "SANDBOX_START_FAILED",
    `the run directory ${dir} is ${problem}: Fennec keeps its instances' sockets and owner records there ` +
      `and uses it only as a directory of its own user that nobody else may write or list (mode 0700 or 0711). ` +
      `Remove it, or point FENNEC_RUN_DIR at another directory`,
  );
}

/**
 * The driver's run root, created (mode 0700) when missing and checked every time: in a world-writable
 * /tmp another user could have made `fennec-<uid>` first, or put a symbolic link there.
 */
export async function ensureRunRoot(driver: string): Promise<string> {
  const base = runBase();
  const root = runRoot(driver);
  for (const [dir, recursive] of [
    [base, true],
    [root, false],
  ] as const) {
    await mkdir(dir, { recursive, mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== "EEXIST") throw err;
    });
    const problem = await unsafeBecause(dir);
    if (problem) throw unsafeRoot(dir, problem);
  }
  return root;
}

/** The run root for a sweep: undefined when there is none; a reason when it must not be touched. */
async function sweepableRoot(driver: string): Promise<{ root: string } | { problem: string } | undefined> {
  for (const dir of [runBase(), runRoot(driver)]) {
    try {
      const problem = await unsafeBecause(dir);
      if (problem) return { problem: unsafeRoot(dir, problem).message };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      return { problem: `${dir}: ${(err as Error).message}` };
    }
  }
  return { root: runRoot(driver) };
}

function recordPath(dir: string): string {
  return `${dir}${RECORD_SUFFIX}`;
}

/**
 * Writes a record through a temporary file named after its writer: `claim` links it into place
 * (failing if a record exists, so two Fennecs never share an id), otherwise it is renamed over
 * the old one. A reader never sees a half-written record.
 */
async function writeRecord(dir: string, record: OwnerRecord, claim: boolean): Promise<void> {
  const { pid, start } = record.fennec;
  const tmp = join(
    dirname(dir),
    `.${basename(dir)}${RECORD_SUFFIX}.${pid}-${start}-${randomBytes(4).toString("hex")}.tmp`,
  );
  await writeFile(tmp, JSON.stringify(record), { flag: "wx", mode: 0o600 });
  try {
    if (claim) await link(tmp, recordPath(dir));
    else await rename(tmp, recordPath(dir));
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
}

/** Reads and checks a record: undefined when it is missing, not a regular file of ours, or malformed. */
async function readRecord(file: string, id: string): Promise<OwnerRecord | undefined> {
  try {
    const st = await lstat(file);
    if (!st.isFile() || st.uid !== uid()) return undefined;
    const r = JSON.parse(await readFile(file, "utf8")) as Partial<OwnerRecord>;
    const isIdentity = (p: unknown): p is ProcessIdentity =>
      typeof p === "object" &&
      p !== null &&
      Number.isSafeInteger((p as ProcessIdentity).pid) &&
      (p as ProcessIdentity).pid > 0 &&
      typeof (p as ProcessIdentity).start === "string";
    if (r.kind !== RECORD_KIND || r.instanceId !== id || !isIdentity(r.fennec)) return undefined;
    if (r.child !== undefined && !isIdentity(r.child)) return undefined;
    return r as OwnerRecord;
  } catch {
    return undefined;
  }
}

/**
 * Creates an instance's run directory (mode 0700), its owner record first: a directory that exists
 * always has one, so a sweep never has to guess whose it is.
 */
export async function createRunDir(driver: string, instanceId: string): Promise<string> {
  if (!INSTANCE_ID.test(instanceId))
    throw new FennecError(
      "INTERNAL",
      `instance id ${JSON.stringify(instanceId)} cannot name a run directory`,
    );
  const root = await ensureRunRoot(driver);
  const dir = join(root, instanceId);
  const record: OwnerRecord = {
    kind: RECORD_KIND,
    instanceId,
    fennec: await selfIdentity(),
    child: undefined,
  };
  await writeRecord(dir, record, true);
  try {
    await mkdir(dir, { mode: 0o700 });
  } catch (err) {
    await unlink(recordPath(dir)).catch(() => undefined);
    throw new FennecError(
      "SANDBOX_START_FAILED",
      `cannot create the run directory ${dir}: ${(err as Error).message}`,
    );
  }
  return dir;
}

/**
 * Creates an instance's run directory (createRunDir) and defers its removal on `cleanup`: deferred
 * before what the instance then acquires, it is removed after all of that is released.
 */
export async function createRunDirOn(
  cleanup: CleanupStack,
  driver: string,
  instanceId: string,
): Promise<string> {
  const dir = await createRunDir(driver, instanceId);
  cleanup.defer(() => removeRunDir(dir));
  return dir;
}

/** Records the process started for the instance, so a later sweep can end it if this Fennec dies. */
export async function recordOwner(dir: string, childPid: number): Promise<void> {
  const record = await readRecord(recordPath(dir), basename(dir));
  const start = await startTime(childPid);
  if (!record || start === undefined) return; // the child is gone already: nothing to end later
  const cmdline = await readFile(`/proc/${childPid}/cmdline`, "utf8").catch(() => "");
  await writeRecord(dir, { ...record, child: { pid: childPid, start, cmdline } }, false);
}

/**
 * Removes a run directory of this process's, then its record. One it must not remove (see
 * removeTree) keeps its record, so a sweep after this Fennec has gone looks at it again.
 */
export async function removeRunDir(dir: string): Promise<void> {
  if ((await removeTree(dir)) === undefined) await unlink(recordPath(dir)).catch(() => undefined);
}

/** One report of several sweeps. */
export function mergeReports(...reports: CleanupReport[]): CleanupReport {
  return {
    removed: reports.flatMap((r) => r.removed),
    leftAlone: reports.flatMap((r) => r.leftAlone),
  };
}

/**
 * `rm -r` of a directory Fennec made, refusing what it must not descend into: a symbolic link (fs.rm
 * unlinks links and never follows them, but a link in place of the directory is not Fennec's) or a
 * tree with something mounted in it (removal would reach into the mounted filesystem). Returns why it
 * refused, or undefined once the directory is gone.
 */
async function removeTree(dir: string): Promise<string | undefined> {
  let st;
  try {
    st = await lstat(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  if (st.isSymbolicLink()) return "it is a symbolic link, not a directory Fennec made";
  if (!st.isDirectory()) return "it is not a directory";
  if (st.uid !== uid()) return `it is owned by uid ${st.uid}`;
  const mounts = await mountPointsUnder(dir, true);
  if (mounts.length > 0) return `something is still mounted in it (${mounts.join(", ")})`;
  await rm(dir, { recursive: true, force: true });
  return undefined;
}

/** Ends a crashed Fennec's child and its process group, if that very process still runs. */
async function endLeftover(child: ProcessIdentity): Promise<void> {
  if (!(await stillRunning(child))) return;
  try {
    process.kill(-child.pid, "SIGKILL"); // detached children lead their own process group
  } catch {
    try {
      process.kill(child.pid, "SIGKILL");
    } catch {
      // gone meanwhile
    }
  }
}

/** Whose a run directory is: `live` (a running Fennec's, this one included), `gone`, or `unknown`. */
export async function ownerOf(driver: string, instanceId: string): Promise<"live" | "gone" | "unknown"> {
  if (!INSTANCE_ID.test(instanceId)) return "unknown";
  const record = await readRecord(recordPath(join(runRoot(driver), instanceId)), instanceId);
  if (!record) return "unknown";
  return (await stillRunning(record.fennec)) ? "live" : "gone";
}

export interface SweepHooks {
  /** Releases what else a gone Fennec's instance holds (containers, mounts) before its directory goes. */
  readonly beforeRemove?: (instanceId: string, dir: string) => Promise<void>;
}

/**
 * Removes the run directories whose record names a Fennec that is gone (a crash), first killing
 * the child it left running (only that very process: same PID and start time) and its process
 * group. Directories of live Fennecs are not touched; anything without a valid record is left
 * alone and reported.
 */
export async function sweepStale(driver: string, hooks: SweepHooks = {}): Promise<CleanupReport> {
  const report: CleanupReport = { removed: [], leftAlone: [] };
  const found = await sweepableRoot(driver);
  if (found === undefined) return report;
  if ("problem" in found) {
    report.leftAlone.push({ path: runRoot(driver), reason: found.problem });
    return report;
  }
  const root = found.root;
  const names = await readdir(root);
  const recorded = new Set<string>();
  for (const name of names) {
    if (!name.endsWith(RECORD_SUFFIX) || name.startsWith(".")) continue;
    const id = name.slice(0, -RECORD_SUFFIX.length);
    recorded.add(id);
    const dir = join(root, id);
    const record = INSTANCE_ID.test(id) ? await readRecord(join(root, name), id) : undefined;
    if (!record) {
      report.leftAlone.push({ path: join(root, name), reason: "not a valid owner record" });
      continue;
    }
    if (await stillRunning(record.fennec)) continue; // a live Fennec's (this one's included)
    if (record.child) await endLeftover(record.child);
    await hooks.beforeRemove?.(id, dir);
    const refused = await removeTree(dir);
    if (refused) {
      report.leftAlone.push({ path: dir, reason: refused });
      continue; // the record stays: the next start tries again
    }
    await unlink(join(root, name)).catch(() => undefined);
    report.removed.push(dir);
  }
  for (const name of names) {
    const path = join(root, name);
    const temp = TEMP_RECORD.exec(name);
    if (temp) {
      // A record being written, or left half-way by a crash: its writer is in its name.
      const writer = { pid: Number(temp[2]), start: temp[3]! };
      if (!(await stillRunning(writer)) && (await lstat(path).catch(() => undefined))?.isFile()) {
        await unlink(path).catch(() => undefined);
        report.removed.push(path);
      }
      continue;
    }
    if (name.endsWith(RECORD_SUFFIX) || recorded.has(name)) continue;
    // Created after the listing was read, its record may have been missed: look again.
    if ((await readRecord(recordPath(path), name)) !== undefined) continue;
    report.leftAlone.push({ path, reason: "no owner record: not provably made by Fennec" });
  }
  return report;
}
