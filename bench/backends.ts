/**
 * Out-of-process backends side by side (container issue), one run: the same fetch handler
 * (examples/registry/hello-process/handler.ts, bundled once) on every backend, each next to the bare
 * tool doing the same work, so Fennec's own overhead shows as a ratio:
 *
 * - bare Node on the bundle ↔ process, process + bubblewrap;
 * - `runc run` / `runsc run` of the same bundle (built root, same config.json) ↔ oci runc / runsc,
 *   with the root shared read-only or an overlay per instance, and with the host's directories
 *   bound instead (a `command`, the layout before the built root);
 * - `docker run` of the same image (same options) ↔ container on runc / runsc;
 * - the sandbox alone: `/usr/bin/true` in the same kind of root, runtime start to exit;
 * - warm invoke through the whole gateway (`fennec serve`, a separate load client) against bare
 *   node:http serving the same handler on TCP.
 *
 * Per row: cold start to the first response (p50/p99), warm invoke latency on one instance
 * (p50/p99, 1 in flight), throughput (8 in flight), idle PSS per instance (its whole process tree:
 * runtime, sandbox, shim). Needs root, bubblewrap, runc, runsc and docker.io (a private dockerd is
 * started). Writes bench/results/backends.json and docs/img/backends-warm-latency.svg.
 * Usage: npm run bench:backends [-- COLD_SAMPLES]
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { chmod, cp, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type { FunctionConfig } from "../src/config/function-config.js";
import { removeNested } from "../src/sandbox/cgroups.js";
import { sandboxKinds } from "../src/sandbox/drivers/index.js";
import type { SandboxDriver, SandboxHandle } from "../src/sandbox/contract.js";
import { ContainerDriver } from "../src/sandbox/drivers/container/driver.js";
import { OciDriver } from "../src/sandbox/drivers/oci/driver.js";
import { ociSpec } from "../src/sandbox/drivers/oci/spec.js";
import { ProcessDriver } from "../src/sandbox/drivers/process/driver.js";
import { buildHandler, HANDLER_RUNTIME } from "../src/sandbox/handler-build.js";
import { findExecutable, INSIDE } from "../src/sandbox/host-view.js";
import { HttpTransport } from "../src/sandbox/http-transport.js";
import { ReadinessHub } from "../src/sandbox/readiness.js";
import { assembleRootfs, nodeInside } from "../src/sandbox/rootfs-build.js";
import { giveToSandboxUser } from "../src/sandbox/unprivileged.js";
import { runRoot } from "../src/sandbox/run-dir.js";
import { waitForSocket } from "../src/sandbox/wait-socket.js";
import { startDockerd, type TestDockerd } from "../test/helpers/docker.js";
import { drain, request } from "./empty-call.js";
import { fennecUrl } from "./fennec-url.js";
import { cdfChart } from "./plot.js";
import { load } from "./load.js";
import { machine, writeResults } from "./results.js";
import { fmt, summarize } from "./stats.js";
import { processTree } from "./wrk.js";

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const COLD = Number(process.argv[2] ?? 10);
const WARM = 1000;
const TPUT = 2000;
const IN_FLIGHT = 8;
const IDLE_N = 4;

type Stats = ReturnType<typeof summarize>;
interface Started {
  readonly invoke: () => Promise<unknown>;
  readonly stop: () => Promise<void>;
  /** A driver's instance id. */
  readonly id?: string;
}
interface Row {
  readonly name: string;
  /** The bare row this one is compared with (its name). */
  readonly vs?: string;
  readonly start: () => Promise<Started>;
}
interface Result {
  name: string;
  vs?: string;
  cold: Stats;
  warm: Stats;
  warmSamples: number[];
  rps: number;
  idleMiB: number;
}

/**
 * Each start and call's deadline. Generous: gVisor under ptrace behind docker took over 60 s to
 * start on this machine at a load average of 10, and a run that dies loses every row measured.
 */
const signal = () => AbortSignal.timeout(300_000);

// ---------------------------------------------------------------- measurement

async function warmLatency(invoke: () => Promise<unknown>): Promise<number[]> {
  for (let i = 0; i < 100; i++) await invoke();
  const lat: number[] = [];
  for (let i = 0; i < WARM; i++) {
    const t0 = performance.now();
    await invoke();
    lat.push((performance.now() - t0) * 1000);
  }
  return lat;
}

async function throughput(invoke: () => Promise<unknown>): Promise<number> {
  let left = TPUT;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (left-- > 0) await invoke();
    }),
  );
  return TPUT / ((performance.now() - t0) / 1000);
}

/** PSS (MiB) of this process's descendants and of every process whose cgroup or command line names one of `ids`. */
function pssMiB(ids: readonly string[]): number {
  const mine = new Set(processTree(process.pid));
  const named = (pid: number): boolean => {
    if (ids.length === 0) return false;
    try {
      const text = readFileSync(`/proc/${pid}/cgroup`, "utf8") + readFileSync(`/proc/${pid}/cmdline`, "utf8");
      return ids.some((id) => text.includes(id));
    } catch {
      return false;
    }
  };
  let kib = 0;
  for (const pid of readdirSync("/proc")
    .filter((n) => /^\d+$/.test(n))
    .map(Number)) {
    if (pid === process.pid || !(mine.has(pid) || named(pid))) continue;
    try {
      const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"));
      kib += Number(m?.[1] ?? 0);
    } catch {
      // exited meanwhile
    }
  }
  return kib / 1024;
}

/** Docker container ids, for attributing the processes of containers (their shims are not our descendants). */
let dockerIds: () => Promise<string[]> = () => Promise.resolve([]);

/**
 * One group (a bare tool and the Fennec rows compared with it): cold starts interleaved row by row,
 * so drift on this noisy machine hits every row alike; then warm latency, throughput and idle
 * memory row by row.
 */
async function measureGroup(group: readonly Row[]): Promise<Result[]> {
  console.error(`${group.map((r) => r.name).join(" | ")}: ${COLD} cold starts each, interleaved`);
  const colds = group.map(() => [] as number[]);
  for (let i = 0; i < COLD; i++) {
    for (const [k, row] of group.entries()) {
      const t0 = performance.now();
      const s = await row.start();
      await s.invoke();
      colds[k]!.push(performance.now() - t0);
      await s.stop();
    }
  }
  const results: Result[] = [];
  for (const [k, row] of group.entries()) {
    console.error(`${row.name}: ${WARM} warm invocations, ${TPUT} at ${IN_FLIGHT} in flight, idle memory`);
    const s = await row.start();
    await s.invoke();
    const warmSamples = await warmLatency(s.invoke);
    const rps = await throughput(s.invoke);
    await s.stop();
    await new Promise((r) => setTimeout(r, 500));
    const before = pssMiB(await dockerIds());
    const live: Started[] = [];
    for (let i = 0; i < IDLE_N; i++) {
      const one = await row.start();
      await one.invoke();
      live.push(one);
    }
    await new Promise((r) => setTimeout(r, 1500));
    const idleMiB = (pssMiB(await dockerIds()) - before) / IDLE_N;
    for (const one of live) await one.stop();
    results.push({
      name: row.name,
      ...(row.vs ? { vs: row.vs } : {}),
      cold: summarize(colds[k]!),
      warm: summarize(warmSamples),
      warmSamples,
      rps,
      idleMiB,
    });
  }
  return results;
}

// ---------------------------------------------------------------- what is measured

const hub = new ReadinessHub();
const callbacks = createServer((req, res) => {
  hub.signal((req.url ?? "").replace("/ready/", ""));
  res.end("ok");
});

/**
 * A function's config as Fennec loads it from function.toml: every limit the TOML leaves out
 * (memory, pids, ...) is the driver's own default, so the bench never restates one.
 */
function config(dir: string, table: string): FunctionConfig {
  const toml = `keepalive = 60\nconcurrent-requests = ${IN_FLIGHT}\nmax-instances = 1\nmax-queue = 10\n\n${table}\n`;
  return sandboxKinds.loader.load({ user: "default", name: "bench" }, dir, "function.toml", toml);
}

/** Memory and pids limits of a sandbox config (what the bare rows must apply too). */
function limitsOf(c: FunctionConfig): { memoryMiB: number; pids: number } {
  const s = c.sandbox;
  if (s.kind !== "oci" && s.kind !== "container" && s.kind !== "process")
    throw new Error(`no limits in ${s.kind}`);
  return { memoryMiB: s.memoryMiB, pids: s.pids };
}

/** A driver's instance, started as the scheduler's lifecycle would (without its bookkeeping). */
function viaDriver(driver: SandboxDriver, c: FunctionConfig): () => Promise<Started> {
  return async () => {
    const id = `bench-${randomUUID().slice(0, 8)}`;
    const port = (callbacks.address() as AddressInfo).port;
    hub.expect(id);
    const s = signal();
    const handle: SandboxHandle = await driver.start({
      instanceId: id,
      config: c,
      callbackUrl: `http://127.0.0.1:${port}/ready/${id}`,
      waitForCallback: () => hub.wait(id, s),
      signal: s,
    });
    hub.forget(id);
    return {
      id,
      invoke: () => handle.invoke(request(), { signal: signal() }).then(drain),
      stop: () => handle.destroy(),
    };
  };
}

/** Something that serves on `<dir>/http.sock`: wait for it, then talk to it as Fennec's transport does. */
async function onSocket(dir: string, stop: () => Promise<void>): Promise<Started> {
  const socketPath = join(dir, "http.sock");
  await waitForSocket(socketPath, signal());
  const transport = new HttpTransport({ socketPath }, "bare");
  return {
    invoke: () => transport.invoke(request(), signal()).then(drain),
    stop: async () => {
      transport.close();
      await stop();
    },
  };
}

function exited(child: ChildProcess): Promise<void> {
  return new Promise((r) => (child.exitCode !== null ? r() : child.once("exit", () => r())));
}

/** Bare Node on the bundle and a socket: no Fennec. */
function bareNode(bundle: string): () => Promise<Started> {
  return async () => {
    const d = await mkdtemp(join(tmpdir(), "fennec-bench-"));
    const child = spawn(process.execPath, [HANDLER_RUNTIME, bundle, "ignore"], {
      env: { ...process.env, FENNEC_SOCKET: join(d, "http.sock") },
      stdio: "ignore",
    });
    return onSocket(d, async () => {
      child.kill("SIGKILL");
      await exited(child);
      await rm(d, { recursive: true, force: true });
    });
  };
}

const BENCH_CGROUP = "fennec-bench";

/** A bundle as the oci driver writes it (same config.json) over `rootfs`, in a fresh directory. */
async function bundle(
  rootfs: string,
  args: string[],
  limits: { memoryMiB: number; pids: number },
): Promise<{ dir: string; id: string }> {
  const id = `bench-${randomUUID().slice(0, 8)}`;
  const dir = await mkdtemp(join(tmpdir(), "fennec-bench-bundle-"));
  await mkdir(join(dir, "sock"));
  await giveToSandboxUser(join(dir, "sock"));
  const spec = ociSpec({
    args,
    env: {
      PATH: "/usr/bin:/bin",
      HOME: "/tmp",
      TMPDIR: "/tmp",
      FENNEC_SOCKET: join(INSIDE.runDir, "http.sock"),
      FENNEC_CALLBACK: "ignore",
    },
    cwd: "/",
    rootfs,
    binds: [{ source: join(dir, "sock"), destination: INSIDE.runDir, writable: true }],
    memoryBytes: limits.memoryMiB * 2 ** 20,
    pids: limits.pids,
    cgroupsPath: join(BENCH_CGROUP, id),
  });
  await writeFile(join(dir, "config.json"), JSON.stringify(spec));
  return { dir, id };
}

function runtimeArgs(runtime: "runc" | "runsc", state: string): string[] {
  return runtime === "runsc"
    ? ["--root", state, "--network=none", "--platform=ptrace", "--host-uds=all", "--oci-seccomp"]
    : ["--root", state];
}

/** `runc run` / `runsc run` of the same bundle, in the foreground, by hand. */
function bareRuntime(
  runtime: "runc" | "runsc",
  rootfs: string,
  state: string,
  limits: { memoryMiB: number; pids: number },
): () => Promise<Started> {
  return async () => {
    const node = await nodeInside();
    const b = await bundle(rootfs, [node, INSIDE.runtime, INSIDE.bundle, "ignore"], limits);
    const args = runtimeArgs(runtime, state);
    const child = spawn(findExecutable(runtime, runtime), [...args, "run", "--bundle", b.dir, b.id], {
      stdio: "ignore",
    });
    return onSocket(join(b.dir, "sock"), async () => {
      await run(runtime, [...args, "kill", b.id, "KILL"]).catch(() => undefined);
      await exited(child);
      await run(runtime, [...args, "delete", "-f", b.id]).catch(() => undefined);
      await removeNested(join(BENCH_CGROUP, b.id));
      await rm(b.dir, { recursive: true, force: true });
    });
  };
}

/** The sandbox alone: `true` in a root, from `<runtime> run` to its exit (and delete). */
async function sandboxFloor(
  runtime: "runc" | "runsc" | "none",
  rootfs: string,
  state: string,
  limits: { memoryMiB: number; pids: number },
): Promise<Stats> {
  const times: number[] = [];
  for (let i = 0; i < Math.max(COLD, 10); i++) {
    const b = await bundle(rootfs, ["/usr/bin/true"], limits);
    const args = runtime === "none" ? [] : runtimeArgs(runtime, state);
    const t0 = performance.now();
    if (runtime === "none") await run("/usr/bin/true");
    else await run(runtime, [...args, "run", "--bundle", b.dir, b.id]);
    times.push(performance.now() - t0);
    if (runtime !== "none") await run(runtime, [...args, "delete", "-f", b.id]).catch(() => undefined);
    await removeNested(join(BENCH_CGROUP, b.id));
    await rm(b.dir, { recursive: true, force: true });
  }
  return summarize(times);
}

/**
 * `docker run -d` of the same image with the driver's options, by hand (the docker CLI); memory and
 * pids from the same config the container rows run with.
 */
function bareDocker(
  d: TestDockerd,
  image: string,
  runtime: string | undefined,
  limits: { memoryMiB: number; pids: number },
): () => Promise<Started> {
  return async () => {
    const dir = await mkdtemp(join(tmpdir(), "fennec-bench-docker-"));
    await run("chmod", ["777", dir]);
    const name = `bench-${randomUUID().slice(0, 8)}`;
    const docker = ["-H", `unix://${d.socketPath}`];
    await run("docker", [
      ...docker,
      "run",
      "-d",
      "--name",
      name,
      "--network",
      "none",
      "--read-only",
      "--tmpfs",
      "/tmp:rw,nosuid,nodev,size=65536k",
      "--cap-drop",
      "ALL",
      "--security-opt",
      "no-new-privileges",
      "--memory",
      `${limits.memoryMiB}m`,
      "--memory-swap",
      `${limits.memoryMiB}m`,
      "--pids-limit",
      String(limits.pids),
      "-v",
      `${dir}:${INSIDE.runDir}`,
      "-e",
      `FENNEC_SOCKET=${INSIDE.runDir}/http.sock`,
      ...(runtime ? ["--runtime", runtime] : []),
      image,
      "ignore",
    ]);
    return onSocket(dir, async () => {
      await run("docker", [...docker, "rm", "-f", name]).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    });
  };
}

async function dockerFloor(d: TestDockerd, image: string, runtime: string | undefined): Promise<Stats> {
  const times: number[] = [];
  for (let i = 0; i < Math.max(COLD, 10); i++) {
    const t0 = performance.now();
    await run("docker", [
      ...["-H", `unix://${d.socketPath}`, "run", "--rm", "--network", "none"],
      ...(runtime ? ["--runtime", runtime] : []),
      ...["--entrypoint", "/usr/bin/true", image],
    ]);
    times.push(performance.now() - t0);
  }
  return summarize(times);
}

// ---------------------------------------------------------------- the gateway, end to end

async function gateway(
  registry: string,
  bundle: string,
  dockerSocket: string,
): Promise<Array<{ name: string; p50: number; p99: number; rps: number; samples: number[] }>> {
  const cli = join(ROOT, "dist/src/cli/main.js");
  const fennec = spawn(
    process.execPath,
    [cli, "serve", "-r", registry, "--port", "0", "--process", "--docker-host", dockerSocket],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const url = await fennecUrl(fennec);
  const bare = spawn(process.execPath, [HANDLER_RUNTIME, bundle, "ignore"], {
    env: { ...process.env, PORT: "18199" },
    stdio: "ignore",
  });
  const targets: Array<[string, string]> = [
    ["bare node:http (the handler runtime on TCP)", "http://127.0.0.1:18199/"],
    ["Fennec gateway → process", `${url}/invoke/gw-process/`],
    ["Fennec gateway → oci runc", `${url}/invoke/gw-runc/`],
    ["Fennec gateway → container runc", `${url}/invoke/gw-docker/`],
  ];
  for (const [, u] of targets) {
    for (let i = 0; ; i++) {
      const ok = await fetch(u).then(
        (r) => r.ok,
        () => false,
      );
      if (ok) break;
      if (i > 200) throw new Error(`${u} never answered`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const out: Record<string, { lat: number[]; rps: number[] }> = {};
  for (let round = 0; round < 3; round++) {
    for (const [name, u] of targets) {
      console.error(`gateway round ${round + 1}/3: ${name}`);
      const one = await load(u, 1, 2000);
      const many = await load(u, 16, 500);
      const o = (out[name] ??= { lat: [], rps: [] });
      o.lat.push(...one.latenciesUs);
      o.rps.push(many.latenciesUs.length / many.seconds);
    }
  }
  bare.kill("SIGTERM");
  fennec.kill("SIGTERM");
  await Promise.all([exited(bare), exited(fennec)]);
  return targets.map(([name]) => {
    const s = summarize(out[name]!.lat);
    return {
      name,
      p50: s.p50,
      p99: s.p99,
      rps: summarize(out[name]!.rps).p50,
      samples: [...out[name]!.lat].sort((a, b) => a - b),
    };
  });
}

// ---------------------------------------------------------------- disk

/** Apparent bytes under `dir`, and the bytes of files that are not hard links of something else. */
function diskOf(dir: string): { apparent: number; own: number } {
  let apparent = 0;
  let own = 0;
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const st = lstatSync(p);
      if (e.isDirectory()) walk(p);
      else {
        apparent += st.size;
        if (st.nlink === 1) own += st.size;
      }
    }
  };
  if (existsSync(dir)) walk(dir);
  return { apparent, own };
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  await new Promise<void>((r) => callbacks.listen(0, "127.0.0.1", () => r()));
  const work = await mkdtemp(join(tmpdir(), "fennec-bench-work-"));
  // The function's directory lies below: an isolated instance (uid 65534) must be able to reach it.
  await chmod(work, 0o755);
  const state = join(work, "state");
  const dockerd = await startDockerd();
  try {
    dockerIds = async () =>
      (await dockerd.engine.api.listContainers({ all: true })).map((c) => c.Id.slice(0, 64));
    // The function: hello-process's handler, in a directory of its own.
    const fnDir = join(work, "fn");
    await mkdir(fnDir);
    await cp(join(ROOT, "examples/registry/hello-process/handler.ts"), join(fnDir, "handler.ts"));
    await writeFile(join(fnDir, "function.toml"), "# bench\n");
    const handler = join(fnDir, "handler.ts");
    const processCfg = config(fnDir, `[process]\nhandler = "handler.ts"`);
    const bundlePath = await buildHandler(processCfg, handler);
    const oci = (runtime: "runc" | "runsc", rootfs: "shared" | "overlay") =>
      config(fnDir, `[oci]\nhandler = "handler.ts"\nruntime = "${runtime}"\nrootfs = "${rootfs}"`);
    // The layout before the built root: the host's directories bound, the runtime and bundle in /fn.
    const hostDir = join(work, "fn-host");
    await mkdir(hostDir);
    await cp(HANDLER_RUNTIME, join(hostDir, "handler-server.js"));
    await cp(bundlePath, join(hostDir, "handler.mjs"));
    const ociHost = (runtime: "runc" | "runsc") =>
      config(
        hostDir,
        `[oci]\ncommand = ${JSON.stringify([process.execPath, "/fn/handler-server.js", "/fn/handler.mjs"])}\nruntime = "${runtime}"`,
      );
    const container = (runtime: string | undefined) =>
      config(fnDir, `[container]\nhandler = "handler.ts"${runtime ? `\nruntime = "${runtime}"` : ""}`);
    const ociDriver = new OciDriver();
    const root = await ociDriver.rootfs(oci("runc", "shared"));
    const docker = new ContainerDriver({ socketPath: dockerd.socketPath });
    const image = await docker.image(container(undefined));

    const rows: Row[] = [
      { name: "bare: node on the bundle", start: bareNode(bundlePath) },
      { name: "process", vs: "bare: node on the bundle", start: viaDriver(new ProcessDriver(), processCfg) },
      {
        name: "process + bwrap + cgroups",
        vs: "bare: node on the bundle",
        start: viaDriver(
          new ProcessDriver(),
          config(fnDir, `[process]\nhandler = "handler.ts"\nisolate = true`),
        ),
      },
      ...(["runc", "runsc"] as const).flatMap((rt) => {
        const bare = `bare: ${rt} run (same bundle)`;
        return [
          { name: bare, start: bareRuntime(rt, root.dir, state, limitsOf(oci(rt, "shared"))) },
          { name: `oci ${rt}, shared root`, vs: bare, start: viaDriver(ociDriver, oci(rt, "shared")) },
          { name: `oci ${rt}, overlay root`, vs: bare, start: viaDriver(ociDriver, oci(rt, "overlay")) },
          { name: `oci ${rt}, host dirs bound`, vs: bare, start: viaDriver(ociDriver, ociHost(rt)) },
        ];
      }),
      {
        name: "bare: docker run (same image)",
        start: bareDocker(dockerd, image, undefined, limitsOf(container(undefined))),
      },
      {
        name: "container runc",
        vs: "bare: docker run (same image)",
        start: viaDriver(docker, container(undefined)),
      },
      {
        name: "bare: docker run --runtime runsc",
        start: bareDocker(dockerd, image, "runsc", limitsOf(container("runsc"))),
      },
      {
        name: "container runsc",
        vs: "bare: docker run --runtime runsc",
        start: viaDriver(docker, container("runsc")),
      },
    ];
    // Groups: each bare tool with the rows compared with it.
    const results: Result[] = [];
    const groups = new Map<string, Row[]>();
    for (const row of rows) groups.set(row.vs ?? row.name, [...(groups.get(row.vs ?? row.name) ?? []), row]);
    for (const group of groups.values()) {
      const measured = await measureGroup(group);
      results.push(...measured);
      // Each group's figures as they come: a run that dies later (a backend that never starts)
      // still leaves what it measured.
      for (const r of measured)
        console.error(
          `  ${r.name}: cold p50 ${fmt(r.cold.p50, 1)} ms, p99 ${fmt(r.cold.p99, 1)} ms; warm p50 ${fmt(r.warm.p50, 0)} µs; ${fmt(r.rps, 0)} req/s; idle ${fmt(r.idleMiB, 1)} MiB`,
        );
    }

    // The sandbox alone: `true` in a root of its own (true and its libraries only).
    console.error("sandbox floor: /usr/bin/true");
    const trueRoot = await assembleRootfs(join(work, "true-root"), {
      binaries: ["/usr/bin/true"],
      files: [],
    });
    const floors = {
      "spawn true (no sandbox)": await sandboxFloor(
        "none",
        trueRoot.dir,
        state,
        limitsOf(oci("runc", "shared")),
      ),
      "runc run true": await sandboxFloor("runc", trueRoot.dir, state, limitsOf(oci("runc", "shared"))),
      "runsc run true": await sandboxFloor("runsc", trueRoot.dir, state, limitsOf(oci("runsc", "shared"))),
    } as Record<string, Stats>;
    await dockerd.engine.importRootfs(trueRoot.dir, "fennec-bench/true:1", trueRoot.digest, [
      "/usr/bin/true",
    ]);
    floors["docker run true"] = await dockerFloor(dockerd, "fennec-bench/true:1", undefined);
    floors["docker run --runtime runsc true"] = await dockerFloor(dockerd, "fennec-bench/true:1", "runsc");

    // Disk: the built root, and what an overlay instance adds.
    const rootDisk = diskOf(root.dir);
    const ov = await viaDriver(ociDriver, oci("runc", "overlay"))();
    await ov.invoke();
    const upperDisk = [diskOf(join(runRoot("oci"), ov.id!, "upper")).apparent];
    await ov.stop();

    // The gateway, end to end.
    const registry = join(work, "registry");
    for (const [name, table] of [
      ["gw-process", `[process]\nhandler = "handler.ts"`],
      ["gw-runc", `[oci]\nhandler = "handler.ts"\nruntime = "runc"`],
      ["gw-docker", `[container]\nhandler = "handler.ts"`],
    ] as const) {
      await mkdir(join(registry, name), { recursive: true });
      await cp(handler, join(registry, name, "handler.ts"));
      await writeFile(
        join(registry, name, "function.toml"),
        `keepalive = 600\nconcurrent-requests = 16\nmax-instances = 1\n${table}\n`,
      );
    }
    const gw = await gateway(registry, bundlePath, dockerd.socketPath);
    await ociDriver.close();
    await removeNested(BENCH_CGROUP, async () => "gone"); // every group of the bench is its own

    report(results, floors, rootDisk, upperDisk, gw);
  } finally {
    await dockerd.stop();
    await rm(work, { recursive: true, force: true });
    callbacks.close();
  }
}

function report(
  results: Result[],
  floors: Record<string, Stats>,
  rootDisk: { apparent: number; own: number },
  upperDisk: number[],
  gw: Awaited<ReturnType<typeof gateway>>,
): void {
  const by = new Map(results.map((r) => [r.name, r]));
  const lines = results.map((r) => {
    const b = r.vs ? by.get(r.vs) : undefined;
    const ratio = b ? `${fmt(r.cold.p50 / b.cold.p50, 2)}×` : "1.00×";
    const warmOver = b ? `${r.warm.p50 - b.warm.p50 >= 0 ? "+" : ""}${fmt(r.warm.p50 - b.warm.p50, 0)}` : "—";
    const rpsRatio = b ? `${fmt((r.rps / b.rps) * 100, 0)} %` : "100 %";
    return `| ${r.name} | ${fmt(r.cold.p50, 1)} | ${fmt(r.cold.p99, 1)} | ${ratio} | ${fmt(r.warm.p50, 0)} | ${fmt(r.warm.p99, 0)} | ${warmOver} | ${fmt(r.rps, 0)} | ${rpsRatio} | ${fmt(r.idleMiB, 1)} |`;
  });
  const floorLines = Object.entries(floors).map(([k, s]) => `| ${k} | ${fmt(s.p50, 1)} | ${fmt(s.p99, 1)} |`);
  const bareGw = gw[0]!;
  const gwLines = gw.map(
    (g) =>
      `| ${g.name} | ${fmt(g.p50, 0)} | ${fmt(g.p99, 0)} | ${g === bareGw ? "—" : `+${fmt(g.p50 - bareGw.p50, 0)}`} | ${fmt(g.rps, 0)} | ${fmt((g.rps / bareGw.rps) * 100, 0)} % |`,
  );
  const mib = (b: number) => fmt(b / 2 ** 20, 2);
  const text = `
| backend (same fetch handler) | cold start to first response p50 (ms) | p99 (ms) | cold vs bare | warm p50 (µs) | warm p99 (µs) | warm p50 vs bare (µs) | throughput, ${IN_FLIGHT} in flight (req/s) | vs bare | idle PSS per instance (MiB) |
|---|---|---|---|---|---|---|---|---|---|
${lines.join("\n")}

| the sandbox alone: /usr/bin/true in a minimal root, start to exit | p50 (ms) | p99 (ms) |
|---|---|---|
${floorLines.join("\n")}

| through the gateway (separate load client), same handler | latency p50, 1 connection (µs) | p99 (µs) | p50 over bare | throughput, 16 connections (req/s) | vs bare |
|---|---|---|---|---|---|
${gwLines.join("\n")}

built root: ${mib(rootDisk.apparent)} MiB apparent, ${mib(rootDisk.own)} MiB of it not hard-linked from the host; overlay upper layer per instance after its first response: ${upperDisk.map((b) => `${fmt(b / 1024, 1)} KiB`).join(", ")}
`;
  console.log(text);
  writeResults("backends.json", {
    machine: machine(),
    cold: COLD,
    results: results.map(({ warmSamples: _, ...r }) => r),
    floors,
    rootDisk,
    upperDisk,
    gateway: gw.map(({ samples: _, ...g }) => g),
  });
  mkdirSync(join(ROOT, "docs", "img"), { recursive: true });
  writeFileSync(
    join(ROOT, "docs", "img", "backends-warm-latency.svg"),
    cdfChart("Warm invoke latency through the gateway, 1 connection (CDF, clipped at p99)", "latency (µs)", [
      { label: `bare node:http (p50 ${fmt(gw[0]!.p50, 0)} µs)`, colour: "#888", values: gw[0]!.samples },
      { label: `→ process (p50 ${fmt(gw[1]!.p50, 0)} µs)`, colour: "#1c7ed6", values: gw[1]!.samples },
      { label: `→ oci runc (p50 ${fmt(gw[2]!.p50, 0)} µs)`, colour: "#d9480f", values: gw[2]!.samples },
      { label: `→ container runc (p50 ${fmt(gw[3]!.p50, 0)} µs)`, colour: "#2b8a3e", values: gw[3]!.samples },
    ]),
  );
}

void main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
