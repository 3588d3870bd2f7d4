/**
 * Fennec's core benchmark (issue: core gateway + wasm). One run, side by side:
 * - warm invoke of `echo` through Fennec against a bare node:http server answering the same
 *   bytes, same client (its own process), 1 connection (latency) and 16 (throughput), rounds
 *   interleaved so drift on this noisy machine hits both alike;
 * - wasm cold start, instances per second, idle memory per warm instance (instance-bench.ts).
 * Usage: npm run bench [-- --quick]. Writes bench/results/latest.json and prints a table.
 */
import { fork, spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { cdfChart } from "./plot.js";
import { load, message, type LoadResult } from "./load.js";
import { fmt, summarize } from "./stats.js";
import { threadWakeup } from "./thread-wakeup.js";
import { fennecUrl } from "./fennec-url.js";

const HERE = fileURLToPath(new URL(".", import.meta.url));
const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const quick = process.argv.includes("--quick");
const BODY = "hello fennec bench";
const POST = { method: "POST", body: BODY };

async function startBare(): Promise<{ url: string; stop: () => void }> {
  const child = fork(join(HERE, "bare-server.js"));
  const { port } = await message<{ port: number }>(child);
  return { url: `http://127.0.0.1:${port}/invoke/echo/`, stop: () => child.kill("SIGTERM") };
}

async function startFennec(): Promise<{ url: string; stop: () => Promise<void> }> {
  const cli = join(ROOT, "dist/src/cli/main.js");
  const child = spawn(
    process.execPath,
    [cli, "serve", "-r", join(ROOT, "examples/registry"), "--port", "0"],
    {
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  const url = await fennecUrl(child);
  return {
    url: `${url}/invoke/echo/`,
    stop: () => new Promise((r) => (child.once("exit", () => r()), child.kill("SIGTERM"))),
  };
}

async function main(): Promise<void> {
  const rounds = quick ? 1 : 3;
  const latencyN = quick ? 1000 : 4000;
  const throughputN = quick ? 200 : 800;
  const bare = await startBare();
  const fennec = await startFennec();
  const runs: Record<string, LoadResult[]> = { bare1: [], fennec1: [], bare16: [], fennec16: [] };
  for (let r = 0; r < rounds; r++) {
    console.error(`round ${r + 1}/${rounds}: latency (1 connection) and throughput (16 connections)`);
    runs["bare1"]!.push(await load(bare.url, 1, latencyN, POST));
    runs["fennec1"]!.push(await load(fennec.url, 1, latencyN, POST));
    runs["bare16"]!.push(await load(bare.url, 16, throughputN, POST));
    runs["fennec16"]!.push(await load(fennec.url, 16, throughputN, POST));
  }
  bare.stop();
  await fennec.stop();
  const merged = (k: string) => {
    const rs = runs[k]!;
    const lat = summarize(rs.flatMap((x) => x.latenciesUs));
    const rps = summarize(rs.map((x) => x.latenciesUs.length / x.seconds));
    return { ...lat, rps: rps.p50 };
  };
  const b1 = merged("bare1");
  const f1 = merged("fennec1");
  const b16 = merged("bare16");
  const f16 = merged("fennec16");

  console.error("wasm instance measurements (driver level)");
  const inst = fork(join(HERE, "instance-bench.js"), [String(quick ? 50 : 200)], {
    execArgv: ["--expose-gc"],
  });
  const instance = await message<Record<string, unknown>>(inst);

  console.error("thread wake-up floor");
  const wakeup = await threadWakeup(quick ? 1000 : 5000);

  const result = {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version },
    warm: { bare1: b1, fennec1: f1, bare16: b16, fennec16: f16 },
    ratios: {
      throughput16: f16.rps / b16.rps,
      p50OverheadUs: f1.p50 - b1.p50,
      p99OverheadUs: f1.p99 - b1.p99,
      p50Ratio: f1.p50 / b1.p50,
    },
    instance,
    wakeup,
  };
  mkdirSync(join(ROOT, "docs", "img"), { recursive: true });
  const sorted = (k: string) => runs[k]!.flatMap((x) => x.latenciesUs).sort((a, b) => a - b);
  writeFileSync(
    join(ROOT, "docs", "img", "warm-latency.svg"),
    cdfChart("Warm invoke latency, 1 connection (CDF, clipped at p99)", "round-trip latency (µs)", [
      { label: `bare node:http (p50 ${fmt(b1.p50, 0)} µs)`, colour: "#888", values: sorted("bare1") },
      { label: `Fennec, wasm echo (p50 ${fmt(f1.p50, 0)} µs)`, colour: "#d9480f", values: sorted("fennec1") },
    ]),
  );
  mkdirSync(join(ROOT, "bench", "results"), { recursive: true });
  writeFileSync(join(ROOT, "bench", "results", "latest.json"), JSON.stringify(result, null, 2) + "\n");

  const i = instance as {
    anotherInstanceMs: { p50: number; p99: number };
    coldWithSpareMs: { p50: number; p99: number };
    coldBurstMs: { p50: number; p99: number };
    firstInvokeMs: { p50: number; p99: number };
    instancesPerSecond: number;
    idleMiBPerInstance: number;
  };
  console.log(`
| measure | bare node:http | Fennec (wasm echo) | ratio / overhead |
|---|---|---|---|
| throughput, 16 connections (req/s) | ${fmt(b16.rps, 0)} | ${fmt(f16.rps, 0)} | ${fmt(result.ratios.throughput16 * 100)} % |
| latency p50, 1 connection (µs) | ${fmt(b1.p50)} | ${fmt(f1.p50)} | +${fmt(result.ratios.p50OverheadUs)} µs |
| latency p99, 1 connection (µs) | ${fmt(b1.p99)} | ${fmt(f1.p99)} | +${fmt(result.ratios.p99OverheadUs)} µs |

| wasm instance | p50 | p99 |
|---|---|---|
| cold start: load + instantiate in an idle executor (ms) | ${fmt(i.coldWithSpareMs.p50, 3)} | ${fmt(i.coldWithSpareMs.p99, 3)} |
| another instance of an already loaded revision (ms) | ${fmt(i.anotherInstanceMs.p50, 3)} | ${fmt(i.anotherInstanceMs.p99, 3)} |
| cold start in a burst of 50 (ms) | ${fmt(i.coldBurstMs.p50, 2)} | ${fmt(i.coldBurstMs.p99, 2)} |
| first invocation on a new instance (ms) | ${fmt(i.firstInvokeMs.p50, 3)} | ${fmt(i.firstInvokeMs.p99, 3)} |

| worker message round trip (µs) | p50 | main-thread CPU per message |
|---|---|---|
| worker sleeps between messages | ${fmt(wakeup.sleeping.rttUs.p50)} | ${fmt(wakeup.sleeping.mainCpuUsPerMessage)} µs |
| worker polls (never sleeps) | ${fmt(wakeup.polling.rttUs.p50)} | ${fmt(wakeup.polling.mainCpuUsPerMessage)} µs |

instances created per second (burst of 50): ${fmt(i.instancesPerSecond, 0)}
idle memory per warm instance: ${fmt(i.idleMiBPerInstance, 2)} MiB
`);
}

await main();
