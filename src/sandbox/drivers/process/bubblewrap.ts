import { accessSync, constants, existsSync } from "node:fs";
import { delimiter, join } from "node:path";
import { FennecError } from "../../../core/errors.js";

/** Where things appear inside an isolated process. */
export const INSIDE = {
  functionDir: "/fn",
  runDir: "/run/fennec",
  runtime: "/opt/fennec/handler-server.js",
} as const;

/** Host directories an isolated process sees, read-only: programs and their libraries, nothing else. */
const SYSTEM_DIRS = [
  "/usr",
  "/lib",
  "/lib64",
  "/lib32",
  "/bin",
  "/sbin",
  "/etc/alternatives",
  "/etc/ssl",
  "/etc/ld.so.cache",
];

let bwrapPath: string | undefined;

/** The bwrap binary, or a clear error naming the package to install. */
export function findBwrap(): string {
  if (bwrapPath) return bwrapPath;
  for (const dir of (process.env["PATH"] ?? "/usr/bin:/bin").split(delimiter)) {
    const candidate = join(dir, "bwrap");
    try {
      accessSync(candidate, constants.X_OK);
      return (bwrapPath = candidate);
    } catch {
      // keep looking
    }
  }
  throw new FennecError(
    "SANDBOX_START_FAILED",
    "isolate = true needs bubblewrap (bwrap), which is not installed: apt-get install bubblewrap",
  );
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
  for (const dir of SYSTEM_DIRS) if (existsSync(dir)) args.push("--ro-bind", dir, dir);
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
