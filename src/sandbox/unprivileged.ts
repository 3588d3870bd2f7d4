import { chmod, chown, lstat, rename, rm } from "node:fs/promises";
import { basename } from "node:path";
import { FennecError } from "../core/errors.js";

/**
 * The host identity every container process runs as, on every container runtime (runc, runsc,
 * Docker): nobody:nogroup. Not root, so a process that escapes its namespaces holds no more than an
 * unprivileged user on the host; and an id that owns nothing on a Debian host, so no host file is
 * its to write. Chosen over a user namespace (root inside mapped to an unprivileged range) because
 * it costs nothing at start: the built roots and the function directory stay owned by root and
 * readable by all, with no chown of a whole root per id range and no runsc/runc userns differences.
 */
export const SANDBOX_USER = { uid: 65534, gid: 65534 } as const;

/**
 * Hands a directory the container must write (its socket directory) to the sandbox user, mode 0700:
 * writable by the container and root, by nobody else. Its parent (the run directory) stays root's.
 */
export async function giveToSandboxUser(dir: string): Promise<void> {
  await chown(dir, SANDBOX_USER.uid, SANDBOX_USER.gid);
  await chmod(dir, 0o700);
}

/**
 * Moves the socket an instance made in its own, writable directory to `to`, where only root can
 * reach, and checks that what was moved is a socket. Fennec connects as root: left in place, the
 * path could be swapped by the container for a symlink to any host socket (the Docker engine's,
 * say), and Fennec's next connection would follow it, carrying the caller's request. After the move
 * nothing inside the container can change what `to` names.
 */
export async function takeSocket(from: string, to: string, what: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (err) {
    throw new FennecError("FN_CRASHED", `${what}: its socket disappeared at start`, { cause: err });
  }
  const st = await lstat(to);
  if (!st.isSocket()) {
    await rm(to, { force: true });
    throw new FennecError(
      "FN_CRASHED",
      `${what}: ${basename(from)} in its socket directory is not a socket (${st.isSymbolicLink() ? "a symlink" : "another file"})`,
    );
  }
}
