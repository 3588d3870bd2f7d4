import { execFile } from "node:child_process";
import { chown, mkdir, readdir } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { FennecError } from "../../../core/errors.js";
import { mountPointsUnder } from "../../mounts.js";
import { SANDBOX_USER } from "../../unprivileged.js";

const run = promisify(execFile);

/**
 * Mounts a copy-on-write root for one instance at `<runDir>/rootfs`: an overlayfs whose lower layer
 * is the shared built root (never written) and whose upper and work directories live in the
 * instance's run directory, so what the instance writes is its own and goes when it stops.
 * `volatile`: the upper layer is thrown away with the instance, so it is never synced to disk.
 * The container runs as the unprivileged sandbox user, and the built root is root's: the upper layer
 * starts with the lower's directories, owned by the sandbox user, so the merged root is writable by
 * the instance (its own copy) while the files hard-linked from the host are only copied up, never
 * written through.
 */
export async function mountOverlay(lower: string, runDir: string): Promise<string> {
  if (/[,:\\]/.test(lower) || /[,:\\]/.test(runDir)) {
    throw new FennecError(
      "SANDBOX_START_FAILED",
      `an overlay root cannot be mounted from a path with ",", ":" or "\\": ${lower}, ${runDir}`,
    );
  }
  const target = join(runDir, "rootfs");
  const upper = join(runDir, "upper");
  const work = join(runDir, "work");
  await Promise.all([mkdir(target), mkdir(upper), mkdir(work)]);
  await ownedDirectoryTree(lower, upper);
  const options = `lowerdir=${lower},upperdir=${upper},workdir=${work},volatile`;
  await run("mount", ["-t", "overlay", "overlay", "-o", options, target]).catch((err: Error) => {
    throw new FennecError(
      "SANDBOX_START_FAILED",
      `cannot mount the overlay root at ${target}: ${err.message}`,
    );
  });
  return target;
}

/** Creates in `upper` every directory of `lower`, owned by the sandbox user (upper included). */
async function ownedDirectoryTree(lower: string, upper: string): Promise<void> {
  const dirs = (await readdir(lower, { recursive: true, withFileTypes: true }))
    .filter((e) => e.isDirectory())
    .map((e) => join(upper, e.parentPath.slice(lower.length), e.name))
    .sort();
  for (const dir of [upper, ...dirs]) {
    await mkdir(dir, { recursive: true });
    await chown(dir, SANDBOX_USER.uid, SANDBOX_USER.gid);
  }
}

/** Unmounts an overlay root (lazily if something still holds it); nothing when it is not mounted. */
export async function unmountOverlay(target: string): Promise<void> {
  if (!(await mountPointsUnder(target, true)).includes(target)) return;
  await run("umount", [target]).catch(() => run("umount", ["-l", target]).catch(() => undefined));
}
