import { chmod, chown } from "node:fs/promises";

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
