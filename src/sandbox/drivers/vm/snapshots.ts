import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { FennecError } from "../../../core/errors.js";
import { QmpClient } from "./qmp.js";

/**
 * Where the snapshots of booted, ready guests live (SnapFaaS): one directory per function and
 * key, the key a digest of everything the guest's memory depends on (kernel, initramfs, root,
 * command line, memory, CPUs, machine, accelerator, QEMU's version). A change of any of them is a
 * new key, so a snapshot of older artefacts is never restored; it is removed when the new one is
 * written.
 *
 * A snapshot is two files: `ram`, the guest's memory (restored copy-on-write: every clone maps it
 * privately, so clones share its pages), and `state`, QEMU's device state (a migration stream
 * without RAM, `x-ignore-shared`, written and loaded through QMP below). `meta.json` is written
 * last: a directory without it is not a snapshot (a crash while writing one leaves debris that
 * the next write removes).
 */
export interface Snapshot {
  readonly dir: string;
  readonly ram: string;
  readonly state: string;
  readonly key: string;
}

export interface SnapshotMeta {
  readonly key: string;
  readonly function: string;
  readonly createdAt: string;
  /** Milliseconds the template took from boot to ready, and to write the snapshot. */
  readonly bootMs: number;
  readonly saveMs: number;
}

export function snapshotKey(parts: readonly string[]): string {
  return createHash("sha256").update(parts.join("\0")).digest("hex").slice(0, 20);
}

export class SnapshotStore {
  constructor(readonly root: string) {}

  #functionDir(fn: string): string {
    return join(this.root, fn.replace("/", "+"));
  }

  paths(fn: string, key: string): Snapshot {
    const dir = join(this.#functionDir(fn), key);
    return { dir, ram: join(dir, "ram"), state: join(dir, "state"), key };
  }

  /** The complete snapshot for this key, or undefined; says whether older ones exist. */
  async find(fn: string, key: string): Promise<{ snapshot?: Snapshot; older: boolean }> {
    const s = this.paths(fn, key);
    const others = (await readdir(this.#functionDir(fn)).catch(() => [] as string[])).filter(
      (k) => k !== key,
    );
    const complete = existsSync(join(s.dir, "meta.json")) && existsSync(s.ram) && existsSync(s.state);
    return { ...(complete ? { snapshot: s } : {}), older: others.length > 0 };
  }

  /** A fresh, empty directory to write the snapshot of `key` into. */
  async begin(fn: string, key: string): Promise<Snapshot> {
    const s = this.paths(fn, key);
    await rm(s.dir, { recursive: true, force: true });
    await mkdir(s.dir, { recursive: true });
    return s;
  }

  /** Marks a written snapshot complete and removes the function's snapshots of other keys. */
  async commit(s: Snapshot, meta: SnapshotMeta): Promise<void> {
    const tmp = join(s.dir, "meta.json.tmp");
    await writeFile(tmp, JSON.stringify(meta, null, 2));
    await rename(tmp, join(s.dir, "meta.json"));
    const parent = join(s.dir, "..");
    for (const other of await readdir(parent)) {
      if (other !== s.key) await rm(join(parent, other), { recursive: true, force: true });
    }
  }

  /** Forgets a snapshot that could not be restored, so the next start writes a new one. */
  async discard(s: Snapshot): Promise<void> {
    await rm(s.dir, { recursive: true, force: true });
  }
}

/** Writes a running guest's device state to `path` (its RAM is already in the shared file). */
export function saveDeviceState(qmpSocket: string, path: string, signal: AbortSignal): Promise<void> {
  return withoutRam(qmpSocket, signal, async (qmp) => {
    await qmp.execute("migrate", { uri: `exec:cat > ${shellQuote(path)}` });
    for (;;) {
      if (signal.aborted) throw signal.reason;
      const info = await qmp.execute<{ status?: string; "error-desc"?: string }>("query-migrate");
      if (info.status === "completed") break;
      if (info.status === "failed" || info.status === "cancelled")
        throw new FennecError(
          "SANDBOX_START_FAILED",
          `snapshot failed: ${info["error-desc"] ?? info.status}`,
        );
      await new Promise((r) => setTimeout(r, 10));
    }
    if ((await stat(path)).size === 0) throw new FennecError("SANDBOX_START_FAILED", "snapshot is empty");
  });
}

/** Loads device state into a QEMU started with `-incoming defer` and a private RAM mapping. */
export function loadDeviceState(qmpSocket: string, state: string, signal: AbortSignal): Promise<void> {
  return withoutRam(qmpSocket, signal, async (qmp) => {
    await qmp.execute("migrate-incoming", { uri: `exec:cat ${shellQuote(state)}` });
    // Nothing may reach the guest's devices before their state is loaded: a byte the UART took
    // during the migration would be overwritten by it, and the guest's framing would break.
    for (;;) {
      if (signal.aborted) throw signal.reason;
      const status = await qmp.execute<{ status: string }>("query-status");
      if (status.status === "running") break;
      if (status.status !== "inmigrate" && status.status !== "prelaunch")
        throw new FennecError("SANDBOX_START_FAILED", `restore ended in state ${status.status}`);
      await new Promise((r) => setTimeout(r, 2));
    }
  });
}

/** A QMP session whose migrations leave the RAM out (`x-ignore-shared`): it is the `ram` file. */
async function withoutRam(
  qmpSocket: string,
  signal: AbortSignal,
  migrate: (qmp: QmpClient) => Promise<void>,
): Promise<void> {
  const qmp = await QmpClient.connect(qmpSocket, signal);
  try {
    await qmp.execute("migrate-set-capabilities", {
      capabilities: [{ capability: "x-ignore-shared", state: true }],
    });
    await migrate(qmp);
  } finally {
    qmp.close();
  }
}

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`;
}
