import { randomBytes } from "node:crypto";
import { open, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

/** Prefix of every temporary file or directory Fennec writes; names with it are debris of a crash. */
export const TEMP_PREFIX = ".fennec-tmp-";

/**
 * Writes a file so readers see either the old or the new content, never a torn mix: write a
 * temporary sibling, fsync it, then rename over the target (atomic within one filesystem) and
 * fsync the directory, so the rename itself survives a crash.
 */
export async function writeFileAtomic(target: string, data: Uint8Array | string): Promise<void> {
  const tmp = join(dirname(target), `${TEMP_PREFIX}${basename(target)}-${randomBytes(6).toString("hex")}`);
  const handle = await open(tmp, "wx", 0o644);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } catch (err) {
    await handle.close();
    await rm(tmp, { force: true });
    throw err;
  }
  await handle.close();
  try {
    await renameDurable(tmp, target);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** Renames, then fsyncs the directories on both sides: a rename is only durable once they are. */
export async function renameDurable(from: string, to: string): Promise<void> {
  await rename(from, to);
  await fsyncDir(dirname(to));
  if (dirname(from) !== dirname(to)) await fsyncDir(dirname(from));
}

/** Flushes a directory's entries (created, renamed or removed names) to disk. */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Serialises async work per key (uploads and deploys of one function never interleave). */
export class KeyedMutex {
  readonly #tails = new Map<string, Promise<unknown>>();

  async run<T>(key: string, work: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(key) ?? Promise.resolve();
    const next = previous.then(work, work);
    const tail = next.catch(() => undefined);
    this.#tails.set(key, tail);
    try {
      return await next;
    } finally {
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }

  /** Resolves once the work queued for `key` so far has finished (at once when there is none). */
  async idle(key: string): Promise<void> {
    await this.#tails.get(key);
  }
}
