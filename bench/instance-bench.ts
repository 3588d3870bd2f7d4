/**
 * Driver-level wasm measurements, run in their own process (with --expose-gc). Each sample uses a
 * new config revision, so every start is a real cold start: the module (compiled once, cached) is
 * loaded and instantiated in an executor thread. Also: a further instance of an already loaded
 * revision, the first invocation, a burst of simultaneous cold starts, and idle memory.
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { randomUUID } from "node:crypto";
import { loadFunctionConfig } from "../src/config/load-function.js";
import { bodyOf, readBody } from "../src/core/body.js";
import type { Body } from "../src/core/types.js";
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

let revisions = 0;

/** A new revision of echo, prepared (compiled, cached) as Fennec prepares functions at load. */
async function newRevision(driver: WasmDriver): Promise<typeof config> {
  const c = { ...config, revision: `${config.revision}.${revisions++}` };
  await driver.prepare(c);
  return c;
}

function start(driver: WasmDriver, c: typeof config = config): Promise<SandboxHandle> {
  const ac = new AbortController();
  return driver.start({
    instanceId: randomUUID(),
    config: c,
    callbackUrl: "",
    waitForCallback: () => Promise.resolve(),
    signal: ac.signal,
  });
}

const request = () => ({
  method: "POST",
  path: "/",
  query: "",
  headers: { "content-length": "2" },
  body: bodyOf("hi"),
});
/** A fresh request each time (a body is a stream, read once), and its response read to the end. */
const drain = (r: { body: Body }) => readBody(r.body, Number.POSITIVE_INFINITY, () => new Error("unbounded"));

async function main(): Promise<void> {
  const samples = Number(process.argv[2] ?? 200);
  const driver = new WasmDriver({ spareExecutors: 2 });
  await driver.prepare(config);
  await sleep(300);

  // Another instance of a revision some executor already has loaded.
  const another: number[] = [];
  await (await start(driver)).close();
  for (let i = 0; i < samples; i++) {
    const t0 = performance.now();
    const h = await start(driver);
    another.push(performance.now() - t0);
    await h.close();
  }

  // Cold start: a new revision, loaded and instantiated in an idle executor.
  const withSpare: number[] = [];
  const firstCall: number[] = [];
  for (let i = 0; i < samples; i++) {
    const c = await newRevision(driver);
    const t0 = performance.now();
    const h = await start(driver, c);
    const t1 = performance.now();
    await h.invoke(request(), { signal: new AbortController().signal }).then(drain);
    firstCall.push(performance.now() - t1);
    withSpare.push(t1 - t0);
    await h.destroy();
    await sleep(5);
  }

  // Cold start in a burst: spares run out, so workers are spawned on demand.
  const burst: number[] = [];
  const handles: SandboxHandle[] = [];
  const burstSize = 50;
  const burstConfigs = await Promise.all(Array.from({ length: burstSize }, () => newRevision(driver)));
  const tb = performance.now();
  await Promise.all(
    burstConfigs.map(async (c) => {
      const t0 = performance.now();
      handles.push(await start(driver, c));
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
  for (let i = 0; i < idle; i++) handles.push(await start(driver, await newRevision(driver)));
  await Promise.all(
    handles.map((h) => h.invoke(request(), { signal: new AbortController().signal }).then(drain)),
  );
  await sleep(500);
  gc();
  await sleep(200);
  const after = process.memoryUsage().rss;
  await Promise.all(handles.map((h) => h.destroy()));
  await driver.close();

  process.send!({
    anotherInstanceMs: summarize(another),
    coldWithSpareMs: summarize(withSpare),
    firstInvokeMs: summarize(firstCall),
    coldBurstMs: summarize(burst),
    instancesPerSecond: burstSize / burstSeconds,
    idleMiBPerInstance: (after - before) / idle / 2 ** 20,
  });
}

void main();
