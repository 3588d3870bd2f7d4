import { execFileSync, spawn } from "node:child_process";
import { closeSync, existsSync, openSync, readdirSync, readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DockerEngine } from "../../src/sandbox/drivers/container/engine.js";
import { findExecutable } from "../../src/sandbox/host-view.js";
import { assembleRootfs, nodeInside } from "../../src/sandbox/rootfs-build.js";
import { ROOT } from "./paths.js";

const PREFIX = "fennec-dockerd-";

/** A Docker engine of the test's own: its socket, an API client, and a stop that removes everything. */
export interface TestDockerd {
  readonly socketPath: string;
  readonly engine: DockerEngine;
  readonly dir: string;
  stop(): Promise<void>;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Unmounts whatever is still mounted below `dir` (deepest first) so removing it cannot reach into a mount. */
function unmountBelow(dir: string): void {
  const mounts = readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((line) => line.split(" ")[4])
    .filter((m): m is string => m !== undefined && m.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) {
    try {
      execFileSync("umount", ["-l", m], { stdio: "ignore" });
    } catch {
      // already gone
    }
  }
}

/** Removes the directories of test engines whose dockerd is gone (an earlier test run that crashed). */
function sweepStaleEngines(): void {
  for (const name of readdirSync(tmpdir()).filter((n) => n.startsWith(PREFIX))) {
    const dir = join(tmpdir(), name);
    const pid = Number(existsSync(join(dir, "pid")) ? readFileSync(join(dir, "pid"), "utf8") : NaN);
    if (Number.isInteger(pid) && alive(pid)) continue;
    unmountBelow(dir);
    execFileSync("rm", ["-rf", "--one-file-system", dir]);
  }
}

/**
 * Starts a real dockerd as this machine allows (`--iptables=false --bridge=none`) with its own data
 * root, exec root and socket in a temporary directory, and the `runsc` runtime configured as
 * /etc/docker/daemon.json would name it. Needs root and docker.io (`.ci/run` installs it).
 */
export async function startDockerd(): Promise<TestDockerd> {
  sweepStaleEngines();
  const dockerd = findExecutable("dockerd", "docker.io");
  const runsc = findExecutable("runsc", "runsc");
  const dir = await mkdtemp(join(tmpdir(), PREFIX));
  const socketPath = join(dir, "docker.sock");
  await writeFile(
    join(dir, "daemon.json"),
    JSON.stringify({
      runtimes: {
        runsc: {
          path: runsc,
          runtimeArgs: ["--platform=ptrace", "--network=none", "--host-uds=all", "--oci-seccomp"],
        },
        // gVisor as it would ignore Docker's seccomp profile: the driver must refuse it.
        "runsc-no-seccomp": {
          path: runsc,
          runtimeArgs: ["--platform=ptrace", "--network=none", "--host-uds=all"],
        },
      },
    }),
  );
  const logFd = openSync(join(dir, "dockerd.log"), "a");
  const child = spawn(
    dockerd,
    [
      "--iptables=false",
      "--bridge=none",
      "--config-file",
      join(dir, "daemon.json"),
      "--data-root",
      join(dir, "data"),
      "--exec-root",
      join(dir, "exec"),
      "--pidfile",
      join(dir, "pid"),
      "--host",
      `unix://${socketPath}`,
    ],
    // A file, not a pipe: containerd's shims inherit dockerd's stderr and outlive it, and an open
    // pipe would keep the test process alive.
    { stdio: ["ignore", "ignore", logFd] },
  );
  closeSync(logFd);
  const log = () => readFileSync(join(dir, "dockerd.log"), "utf8").slice(-4000);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const engine = new DockerEngine(socketPath);
  const stop = async () => {
    if (child.exitCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(timer);
    }
    unmountBelow(dir);
    execFileSync("rm", ["-rf", "--one-file-system", dir]);
  };
  // Generous: dockerd takes a while to come up on a busy machine.
  const deadline = Date.now() + 120_000;
  for (;;) {
    try {
      await engine.ping();
      break;
    } catch (err) {
      if (child.exitCode !== null || Date.now() > deadline) {
        await stop();
        throw new Error(`dockerd did not come up: ${(err as Error).message}\n${log()}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return { socketPath, engine, dir, stop };
}

/**
 * Imports the process fixture (test/fixtures/process/server.mjs) as a Docker image: Node, `sleep`,
 * `unshare` and `true` (for the probes) and the script, entrypoint `node /fn/server.mjs`; FENNEC_TEST_MODE picks the mode.
 */
export async function importFixtureImage(d: TestDockerd, ref = "fennec-test/server:1"): Promise<string> {
  const rootfs = await assembleRootfs(join(d.dir, "fixture-rootfs"), {
    // sleep for the fork probe; unshare and true for the privileges probe.
    binaries: [
      process.execPath,
      findExecutable("sleep", "coreutils"),
      findExecutable("unshare", "util-linux"),
      findExecutable("true", "coreutils"),
    ],
    files: [{ source: join(ROOT, "test", "fixtures", "process", "server.mjs"), target: "/fn/server.mjs" }],
  });
  await d.engine.importRootfs(rootfs.dir, ref, rootfs.digest, [await nodeInside(), "/fn/server.mjs"]);
  await rm(rootfs.dir, { recursive: true, force: true });
  return ref;
}
