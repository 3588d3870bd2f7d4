import { findExecutable, INSIDE, systemDirs } from "../../host-view.js";
import { SANDBOX_USER } from "../../unprivileged.js";

/** The bwrap binary, or a clear error naming the package to install. */
export function findBwrap(): string {
  return findExecutable("bwrap", "bubblewrap");
}

/** setpriv (util-linux), which drops Fennec's root before bwrap runs. */
export function findSetpriv(): string {
  return findExecutable("setpriv", "util-linux");
}

/**
 * The descriptors (as the child numbers them) of what the instance gets, opened by Fennec while
 * still root: bwrap runs unprivileged and might not be allowed to walk to the paths itself.
 */
export interface BwrapFds {
  readonly functionDir: number;
  /** The directory the instance's socket is made in: the only host directory it may write. */
  readonly socketDir: number;
  readonly runtime: number | undefined;
  /** The compiled seccomp program (see seccomp.ts). */
  readonly seccomp: number;
}

/**
 * bwrap arguments for an isolated instance: every namespace unshared (so no network at all), run
 * as SANDBOX_USER with no capabilities, no way to make a user namespace of its own, a seccomp
 * filter, its own session (no TIOCSTI into Fennec's terminal) and death with its parent; the
 * system directories and the function directory read-only, its socket directory writable, a
 * private /tmp.
 */
export function bwrapArgs(fds: BwrapFds): string[] {
  const uid = String(SANDBOX_USER.uid);
  const gid = String(SANDBOX_USER.gid);
  const args = [
    "--unshare-all",
    "--unshare-user",
    "--disable-userns",
    "--uid",
    uid,
    "--gid",
    gid,
    "--cap-drop",
    "ALL",
    "--seccomp",
    String(fds.seccomp),
    "--die-with-parent",
    "--new-session",
    "--unsetenv",
    "FENNEC_CGROUP_PROCS",
  ];
  for (const dir of systemDirs()) args.push("--ro-bind", dir, dir);
  args.push("--ro-bind-fd", String(fds.functionDir), INSIDE.functionDir);
  args.push("--bind-fd", String(fds.socketDir), INSIDE.runDir);
  if (fds.runtime !== undefined) args.push("--ro-bind-fd", String(fds.runtime), INSIDE.runtime);
  args.push("--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev", "--chdir", INSIDE.functionDir);
  return args;
}

/**
 * A shell prologue that moves itself into the instance's cgroups before exec'ing the rest (setpriv,
 * then bwrap), so the function is limited from its first instruction (moving it after spawn would
 * race its start); it must do so as root, before setpriv drops that.
 */
export const JOIN_CGROUPS_THEN_EXEC =
  'for f in $FENNEC_CGROUP_PROCS; do echo $$ > "$f" || exit 97; done; exec "$@"';

/**
 * setpriv arguments that make the rest of the command run as SANDBOX_USER, with no groups or
 * capabilities: bwrap started by root would map the sandbox's uid to host root (owner of every root
 * file it can see), so Fennec drops to it first and bwrap maps it to itself.
 */
export function dropRootArgs(): string[] {
  const { uid, gid } = SANDBOX_USER;
  return [`--reuid=${uid}`, `--regid=${gid}`, "--clear-groups", "--inh-caps=-all", "--"];
}
