/**
 * Driver-level wasm measurements, run in their own process (with --expose-gc): instance start
 * to ready with a spare worker waiting and without one, instances created per second, and idle
 * memory per warm instance.
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { randomUUID } from "node:crypto";
import { loadFunctionConfig } from "../src/config/load-function.js";
import { readFileSync } from "node:fs";
import type { SandboxHandle } from "../src/sandbox/contract.js";
import { WasmDriver } from "../src/sandbox/drivers/wasm/driver.js";
import { summarize } from "./stats.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const dir = join(ROOT, "examples", "registry", "echo");
const file = join(dir, "function.toml");
const config = loadFunctionConfig({ user: "default", name: "echo" }, dir, file, readFileSync(file, "utf8"));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const gc = (globalThis as { gc?: () => void }).gc ?? (() => undefined);

function start(driver: WasmDriver): Promise<SandboxHandle> {
  const ac = new AbortController();
  return driver.start({
    instanceId: randomUUID(),
    config,
    callbackUrl: "",
    waitForCallback: () => Promise.resolve(),
    signal: ac.signal,
  });
}

const request = { method: "POST", path: "/", query: "", headers: {}, body: Buffer.from("hi") };

async function main(): Promise<void> {
  const samples = Number(process.argv[2] ?? 200);
  const driver = new WasmDriver({ spareWorkers: 2 });
  await driver.prepare(config);
  await sleep(300);

  // Cold start with a spare worker waiting: what a cold request pays when the node is not in a burst.
  const withSpare: number[] = [];
  const firstCall: number[] = [];
  for (let i = 0; i < samples; i++) {
    const t0 = performance.now();
    const h = await start(driver);
    const t1 = performance.now();
    await h.invoke(request, { signal: new AbortController().signal });
    firstCall.push(performance.now() - t1);
    withSpare.push(t1 - t0);
    await h.destroy();
    await sleep(25);
  }

  // Cold start in a burst: spares run out, so workers are spawned on demand.
  const burst: number[] = [];
  const handles: SandboxHandle[] = [];
  const burstSize = 50;
  const tb = performance.now();
  await Promise.all(
    Array.from({ length: burstSize }, async () => {
      const t0 = performance.now();
      handles.push(await start(driver));
      burst.push(performance.now() - t0);
    }),
  );
  const burstSeconds = (performance.now() - tb) / 1000;
  await Promise.all(handles.splice(0).map((h) => h.destroy()));
  await sleep(300);

  // Idle memory per warm instance.
  gc();
  await sleep(200);
  gc();
  const before = process.memoryUsage().rss;
  const idle = 100;
  for (let i = 0; i < idle; i++) handles.push(await start(driver));
  await Promise.all(handles.map((h) => h.invoke(request, { signal: new AbortController().signal })));
  await sleep(500);
  gc();
  await sleep(200);
  const after = process.memoryUsage().rss;
  await Promise.all(handles.map((h) => h.destroy()));
  await driver.close();

  process.send!({
    coldWithSpareMs: summarize(withSpare),
    firstInvokeMs: summarize(firstCall),
    coldBurstMs: summarize(burst),
    instancesPerSecond: burstSize / burstSeconds,
    idleMiBPerInstance: (after - before) / idle / 2 ** 20,
  });
}

void main();
