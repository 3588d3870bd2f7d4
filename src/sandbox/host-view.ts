import { accessSync, constants, existsSync } from "node:fs";
import { delimiter, join } from "node:path";
import { FennecError } from "../core/errors.js";

/**
 * What an isolated instance (bubblewrap, OCI) sees of the host, shared by those drivers: the host's
 * program directories read-only ("Node and its libraries taken from the host"), the function
 * directory read-only at /fn, its socket directory at /run/fennec, and the handler runtime.
 */
export const INSIDE = {
  functionDir: "/fn",
  runDir: "/run/fennec",
  runtime: "/opt/fennec/handler-server.js",
  /** Where a handler's bundle appears, given it is built into `<function>/.fennec/build/`. */
  bundle: "/fn/.fennec/build/handler.mjs",
} as const;

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

/** The host directories an isolated instance gets read-only (those that exist here). */
export function systemDirs(): string[] {
  return SYSTEM_DIRS.filter((d) => existsSync(d));
}

/** Whether this user may execute `path`. */
export function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** An executable on PATH (or in the sbin directories), or a clear error naming the package to install. */
export function findExecutable(name: string, debianPackage: string): string {
  const dirs = (process.env["PATH"] ?? "/usr/bin:/bin").split(delimiter).concat(["/usr/sbin", "/sbin"]);
  for (const dir of dirs) {
    const candidate = join(dir, name);
    if (isExecutable(candidate)) return candidate;
  }
  throw new FennecError("SANDBOX_START_FAILED", `${name} is not installed: apt-get install ${debianPackage}`);
}
