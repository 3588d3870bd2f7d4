/**
 * Out-of-process backends side by side (container issue): cold start to handler-ready and warm
 * invoke latency for the process driver (plain and isolated) and the oci driver (runc, runsc), all
 * running the same fetch handler (examples/registry/hello-process/handler.ts), next to the bare
 * tool doing the same work: Node started directly on the same bundle, no Fennec in between; and
 * idle memory (PSS of each instance's whole process tree, runtime and sandbox included).
 * Needs root, bubblewrap, runc and runsc. Usage: node dist/bench/backends.js [coldSamples]
 */
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { FunctionConfig, SandboxConfig } from "../src/config/function-config.js";
import type { SandboxDriver, SandboxHandle } from "../src/sandbox/contract.js";
import { OciDriver } from "../src/sandbox/drivers/oci/driver.js";
import { ProcessDriver } from "../src/sandbox/drivers/process/driver.js";
import { buildHandler, HANDLER_RUNTIME } from "../src/sandbox/handler-build.js";
import { HttpTransport } from "../src/sandbox/http-transport.js";
import { ReadinessHub } from "../src/sandbox/readiness.js";
import { waitForSocket } from "../src/sandbox/wait-socket.js";
import { fmt, summarize } from "./stats.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const dir = join(ROOT, "examples", "registry", "hello-process");
const handler = join(dir, "handler.ts");
const cold = Number(process.argv[2] ?? 10);
const WARM = 500;

function config(sandbox: SandboxConfig): FunctionConfig {
  return {
    id: { user: "default", name: "bench" },
    key: "default/bench",
    dir,
    file: join(dir, "function.toml"),
    keepaliveMs: 60_000,
    concurrentRequests: 1,
    singleUse: false,
    timeoutMs: 30_000,
    minInstances: 0,
    maxInstances: 1,
    maxQueue: 10,
    queueTimeoutMs: 30_000,
    sandbox,
    revision: "bench",
  };
}

const base = { command: undefined, handler, env: {}, memoryMiB: 256 };
const backends: Array<[string, SandboxDriver, FunctionConfig]> = [
  [
    "process",
    new ProcessDriver(),
    config({ kind: "process", ...base, transport: "unix", isolate: false, pids: 512 }),
  ],
  [
    "process + bwrap + cgroups",
    new ProcessDriver(),
    config({ kind: "process", ...base, transport: "unix", isolate: true, pids: 512 }),
  ],
  [
    "oci: runc",
    new OciDriver(),
    config({ kind: "oci", ...base, runtime: "runc", pids: 1024, rootfs: "shared" }),
  ],
  [
    "oci: runsc (gVisor, ptrace)",
    new OciDriver(),
    config({ kind: "oci", ...base, runtime: "runsc", pids: 1024, rootfs: "shared" }),
  ],
];

const request = { method: "GET", path: "/", query: "", headers: {}, body: new Uint8Array(0) };

// Readiness callbacks for the plain process driver, as the gateway's /ready route serves them.
const hub = new ReadinessHub();
const callbacks = createServer((req, res) => {
  hub.signal((req.url ?? "").replace("/ready/", ""));
  res.end("ok");
});

async function startOnce(
  driver: SandboxDriver,
  c: FunctionConfig,
): Promise<{ ms: number; handle: SandboxHandle }> {
  const id = `bench-${randomUUID().slice(0, 8)}`;
  const signal = AbortSignal.timeout(60_000);
  const port = (callbacks.address() as AddressInfo).port;
  hub.expect(id);
  const t0 = performance.now();
  const handle = await driver.start({
    instanceId: id,
    config: c,
    callbackUrl: `http://127.0.0.1:${port}/ready/${id}`,
    waitForCallback: () => hub.wait(id, signal),
    signal,
  });
  hub.forget(id);
  // Ready means answering: the first request completes the cold start.
  await handle.invoke(request, { signal: AbortSignal.timeout(60_000) });
  return { ms: performance.now() - t0, handle };
}

async function warm(invoke: () => Promise<unknown>): Promise<ReturnType<typeof summarize>> {
  for (let i = 0; i < 50; i++) await invoke();
  const lat: number[] = [];
  for (let i = 0; i < WARM; i++) {
    const t0 = performance.now();
    await invoke();
    lat.push((performance.now() - t0) * 1000);
  }
  return summarize(lat);
}

/** PSS in MiB of every process descending from this one (instances, runtimes, sandboxes). */
function descendantsPssMiB(): number {
  const parent = new Map<number, number>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      parent.set(Number(name), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {
      // exited meanwhile
    }
  }
  const mine = (pid: number): boolean => {
    for (let p = parent.get(pid); p !== undefined && p > 1; p = parent.get(p))
      if (p === process.pid) return true;
    return false;
  };
  let kib = 0;
  for (const pid of parent.keys()) {
    if (!mine(pid)) continue;
    try {
      const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"));
      kib += Number(m?.[1] ?? 0);
    } catch {
      // exited meanwhile
    }
  }
  return kib / 1024;
}

/** Idle memory per instance: PSS of `n` idle instances' whole process trees, divided by n. */
async function idleMiB(driver: SandboxDriver, c: FunctionConfig, n = 5): Promise<number> {
  const before = descendantsPssMiB();
  const handles: SandboxHandle[] = [];
  for (let i = 0; i < n; i++) handles.push((await startOnce(driver, c)).handle);
  await new Promise((r) => setTimeout(r, 1000));
  const after = descendantsPssMiB();
  await Promise.all(handles.map((h) => h.destroy()));
  return (after - before) / n;
}

/** The bare baseline: Node started directly on the same bundle and socket, no Fennec. */
async function bare(
  bundle: string,
): Promise<{ cold: ReturnType<typeof summarize>; warm: ReturnType<typeof summarize> }> {
  const colds: number[] = [];
  let warmStats: ReturnType<typeof summarize> | undefined;
  for (let i = 0; i < cold; i++) {
    const d = mkdtempSync(join(tmpdir(), "fennec-bare-"));
    const socketPath = join(d, "http.sock");
    const t0 = performance.now();
    const child = spawn(process.execPath, [HANDLER_RUNTIME, bundle, "ignore"], {
      env: { ...process.env, FENNEC_SOCKET: socketPath },
      stdio: "ignore",
    });
    await waitForSocket(socketPath, AbortSignal.timeout(30_000));
    const transport = new HttpTransport({ socketPath }, "bare");
    await transport.invoke(request, AbortSignal.timeout(30_000));
    colds.push(performance.now() - t0);
    if (i === 0) warmStats = await warm(() => transport.invoke(request, AbortSignal.timeout(30_000)));
    transport.close();
    child.kill("SIGKILL");
    await new Promise((r) => child.once("exit", r));
    rmSync(d, { recursive: true, force: true });
  }
  return { cold: summarize(colds), warm: warmStats! };
}

async function main(): Promise<void> {
  await new Promise<void>((r) => callbacks.listen(0, "127.0.0.1", () => r()));
  const bundle = await buildHandler(
    config({ kind: "process", ...base, transport: "unix", isolate: false, pids: 512 }),
    handler,
  );
  const rows: string[] = [];
  const b = await bare(bundle);
  rows.push(
    `| bare: node on the same bundle, no Fennec | ${fmt(b.cold.p50, 1)} | ${fmt(b.cold.p99, 1)} | 1.00× | ${fmt(b.warm.p50)} | ${fmt(b.warm.p99)} | — |`,
  );
  for (const [name, driver, c] of backends) {
    console.error(`${name}: ${cold} cold starts, ${WARM} warm invocations`);
    const colds: number[] = [];
    let warmStats: ReturnType<typeof summarize> | undefined;
    for (let i = 0; i < cold; i++) {
      const { ms, handle } = await startOnce(driver, c);
      colds.push(ms);
      if (i === 0)
        warmStats = await warm(() => handle.invoke(request, { signal: AbortSignal.timeout(30_000) }));
      await handle.destroy();
    }
    const s = summarize(colds);
    const idle = await idleMiB(driver, c);
    rows.push(
      `| ${name} | ${fmt(s.p50, 1)} | ${fmt(s.p99, 1)} | ${fmt(s.p50 / b.cold.p50, 2)}× | ${fmt(warmStats!.p50)} | ${fmt(warmStats!.p99)} | ${fmt(idle, 1)} |`,
    );
    await driver.close?.();
  }
  console.log(`
| backend (same fetch handler) | cold start to first response p50 (ms) | p99 (ms) | cold vs bare | warm invoke p50 (µs) | warm p99 (µs) | idle PSS per instance (MiB) |
|---|---|---|---|---|---|---|
${rows.join("\n")}
`);
  callbacks.close();
}

void main();
