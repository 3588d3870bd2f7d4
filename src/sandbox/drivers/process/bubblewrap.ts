import { findExecutable, INSIDE, systemDirs } from "../../host-view.js";

/** The bwrap binary, or a clear error naming the package to install. */
export function findBwrap(): string {
  return findExecutable("bwrap", "bubblewrap");
}

/**
 * bwrap arguments for an isolated instance: every namespace unshared (so no network at all), the
 * system directories and the function directory read-only, its run directory (socket) writable,
 * a private /tmp, and death with its parent.
 */
export function bwrapArgs(opts: {
  functionDir: string;
  runDir: string;
  runtime: string | undefined;
}): string[] {
  const args = ["--unshare-all", "--die-with-parent", "--new-session", "--unsetenv", "FENNEC_CGROUP_PROCS"];
  for (const dir of systemDirs()) args.push("--ro-bind", dir, dir);
  args.push("--ro-bind", opts.functionDir, INSIDE.functionDir, "--bind", opts.runDir, INSIDE.runDir);
  if (opts.runtime) args.push("--ro-bind", opts.runtime, INSIDE.runtime);
  args.push("--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev", "--chdir", INSIDE.functionDir);
  return args;
}

/**
 * A shell prologue that moves itself into the instance's cgroups before exec'ing bwrap, so the
 * function is limited from its first instruction (moving it after spawn would race its start).
 */
export const JOIN_CGROUPS_THEN_EXEC =
  'for f in $FENNEC_CGROUP_PROCS; do echo $$ > "$f" || exit 97; done; exec "$@"';
