import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";

/**
 * Where the snapshots of booted, ready guests live (SnapFaaS): one directory per function and
 * key, the key a digest of everything the guest's memory depends on (kernel, initramfs, root,
 * command line, memory, CPUs, machine, accelerator, QEMU's version). A change of any of them is a
 * new key, so a snapshot of older artefacts is never restored; it is removed when the new one is
 * written.
 *
 * A snapshot is two files: `ram`, the guest's memory (restored copy-on-write: every clone maps it
 * privately, so clones share its pages), and `state`, QEMU's device state (a migration stream
 * without RAM, `x-ignore-shared`). `meta.json` is written last: a directory without it is not a
 * snapshot (a crash while writing one leaves debris that the next write removes).
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
