import { execFileSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { OciDriver } from "../../src/sandbox/drivers/oci/driver.js";
import { ociFixtureConfig } from "../helpers/config.js";
import { runConformance } from "./suite.js";

// Needs root, runc and runsc (.ci/run installs them); under CI=true a missing tool fails.
const ociFn = (name: string, mode: string, runtime: "runc" | "runsc", memoryMiB?: number) =>
  ociFixtureConfig(mode, runtime, { name, ...(memoryMiB ? { memoryMiB } : {}) });

/** A container the runtime still lists, or its state (runc: a directory, runsc: `<id>_sandbox:<id>.*` files). */
function runtimeLeftovers(runtime: "runc" | "runsc", id: string): string[] {
  const state = OciDriver.stateRoot(runtime);
  if (!existsSync(state)) return [];
  const found = readdirSync(state)
    .filter((name) => name === id || name.startsWith(`${id}_`))
    .map((name) => `${runtime} state ${join(state, name)}`);
  const listed = execFileSync(runtime, ["--root", state, "list", "--quiet"], { encoding: "utf8" });
  if (listed.split("\n").includes(id)) found.push(`${runtime} container ${id}`);
  return found;
}

for (const runtime of ["runc", "runsc"] as const) {
  runConformance(`oci (${runtime})`, async () => ({
    driver: new OciDriver(),
    echo: ociFn("echo", "echo", runtime),
    hang: ociFn("hang", "hang", runtime),
    fail: ociFn("fail", "fail", runtime),
    crash: { config: ociFn("fail", "fail", runtime), exitCode: 3 },
    failedStart: { config: ociFn("crash-at-start", "crash-at-start", runtime), exitCode: 7 },
    // gVisor's own Sentry and gofer count against the limit, so it needs more room to start.
    oom: ociFn("alloc", "alloc", runtime, runtime === "runsc" ? 160 : 96),
    leftovers: async (id) => runtimeLeftovers(runtime, id),
  }));
}
