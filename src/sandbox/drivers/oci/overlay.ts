import { execFile } from "node:child_process";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { FennecError } from "../../../core/errors.js";
import { mountPointsUnder } from "../../mounts.js";

const run = promisify(execFile);

/**
 * Mounts a copy-on-write root for one instance at `<runDir>/rootfs`: an overlayfs whose lower layer
 * is the shared built root (never written) and whose upper and work directories live in the
 * instance's run directory, so what the instance writes is its own and goes when it stops.
 * `volatile`: the upper layer is thrown away with the instance, so it is never synced to disk.
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
  const options = `lowerdir=${lower},upperdir=${upper},workdir=${work},volatile`;
  await run("mount", ["-t", "overlay", "overlay", "-o", options, target]).catch((err: Error) => {
    throw new FennecError(
      "SANDBOX_START_FAILED",
      `cannot mount the overlay root at ${target}: ${err.message}`,
    );
  });
  return target;
}

/** Unmounts an overlay root (lazily if something still holds it); nothing when it is not mounted. */
export async function unmountOverlay(target: string): Promise<void> {
  if (!(await mountPointsUnder(target, true)).includes(target)) return;
  await run("umount", [target]).catch(() => run("umount", ["-l", target]).catch(() => undefined));
}
