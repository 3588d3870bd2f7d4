import assert from "node:assert/strict";

/** What the process fixture's `privileges` mode reports from inside its sandbox. */
export interface Privileges {
  status: Record<string, string>;
  unshare: { status: number | null; stderr: string; error?: string };
  writes: Record<string, string>;
}

/**
 * The least-privilege checks every container runtime must pass, from inside (`seen`) and from the
 * host (`onHost`, the host's /proc/<pid>/status of the container or of its gVisor sandbox).
 */
export function assertLeastPrivileged(seen: Privileges, runtime: "runc" | "runsc", onHost: string): void {
  const s = seen.status;
  assert.equal(s["Uid"], "65534\t65534\t65534\t65534", "inside: nobody, never root");
  assert.equal(s["Gid"], "65534\t65534\t65534\t65534");
  // gVisor's /proc/self/status has no CapAmb or NoNewPrivs lines; Linux's (runc) has both.
  const gvisor = runtime === "runsc";
  const sets = ["CapInh", "CapPrm", "CapEff", "CapBnd", ...(gvisor ? [] : ["CapAmb"])];
  for (const set of sets) assert.equal(s[set], "0000000000000000", `${set} is empty`);
  if (!gvisor) assert.equal(s["NoNewPrivs"], "1");
  assert.equal(s["Seccomp"], "2", "a seccomp filter is installed");
  // unshare(2) needs no capability for a user namespace: only the filter refuses it.
  assert.notEqual(seen.unshare.status, 0, JSON.stringify(seen.unshare));
  assert.match(seen.unshare.stderr, /Operation not permitted/, JSON.stringify(seen.unshare));
  // Writes: only /tmp (its own tmpfs); not the function directory, the root or /run.
  assert.equal(seen.writes["/tmp/written.txt"], "written");
  for (const path of ["/fn/written.txt", "/written.txt", "/run/written.txt"])
    assert.ok(["EROFS", "EACCES"].includes(seen.writes[path]!), `${path}: ${seen.writes[path]}`);
  // The host's view: the container's process, or runsc's sandbox, is not root there either.
  assert.doesNotMatch(onHost, /^Uid:\s+0\s/m, onHost);
}
