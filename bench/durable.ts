/**
 * Durable invocations (issue 12), side by side in one run against one `fennec serve` child with
 * its store in a fresh state directory:
 *
 * - throughput (wrk): sync calls of the echo example (`POST /f/default/echo`) against accepted
 *   async calls of the same function (`POST /fa/default/echo`, each on disk before its `202`), and
 *   the same sync calls with records off (a second Fennec started with `--no-records`), alternated
 *   over `--rounds` so drift on this shared machine hits every row alike;
 * - end-to-end latency of one async call at low load: from sending it to its callback arriving at
 *   a loopback server (`X-Callback-Url`), one call at a time, next to a sync call's round trip;
 * - a chain of depth 3 (`faasm-chain`, which chains itself and awaits its child) against three
 *   separate sync calls of the echo, when the example is in the registry.
 *
 * Usage: npm run bench:durable [-- --rounds 3 --seconds 5 --calls 200]
 * Writes bench/results/durable.json and prints the table (markdown).
 */
import { copyFile, cp, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { machine, writeResults } from "./results.js";
import { Servers, startFennec, type Server } from "./servers.js";
import { fmt, summarize } from "./stats.js";
import { mainThreadCpuSeconds, processCpuSeconds, wrk, wrkScript, type WrkResult } from "./wrk.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const { values: opts } = parseArgs({
  options: {
    rounds: { type: "string", default: "3" },
    seconds: { type: "string", default: "5" },
    connections: { type: "string", default: "8" },
    calls: { type: "string", default: "200" },
  },
});
const ROUNDS = Number(opts.rounds);
const SECONDS = Number(opts.seconds);
const CONNECTIONS = Number(opts.connections);
const CALLS = Number(opts.calls);
const CHAIN_EXAMPLE = join(ROOT, "examples/registry/faasm-chain");

/** The echo example, taking many calls at once, and the chain example when there is one. */
async function registry(dir: string): Promise<void> {
  await mkdir(join(dir, "echo"), { recursive: true });
  await copyFile(join(ROOT, "examples/registry/echo/echo.wasm"), join(dir, "echo", "echo.wasm"));
  await writeFile(
    join(dir, "echo", "function.toml"),
    `keepalive = 3600\nconcurrent-requests = 64\n\n[wasm]\nmodule = "echo.wasm"\nmemory = 16\n`,
  );
  if (existsSync(CHAIN_EXAMPLE)) await cp(CHAIN_EXAMPLE, join(dir, "faasm-chain"), { recursive: true });
}

interface Row {
  readonly key: string;
  readonly label: string;
  runs: WrkResult[];
  cpuUsPerReq: number[];
  /** All of the Fennec's threads: on a machine whose cores are all busy, what throughput pays for. */
  processCpuUsPerReq: number[];
}

/** Waits until the async queue is empty: the call sent last (oldest first) has finished. */
async function drain(base: string): Promise<void> {
  const res = await fetch(`${base}/fa/default/echo`, { method: "POST", body: "drain" });
  const { callId } = (await res.json()) as { callId: string };
  for (;;) {
    const r = await fetch(`${base}/fa/calls/${callId}`);
    await r.arrayBuffer();
    if (r.status !== 202) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** A loopback server that resolves the waiter of each call id when its callback arrives. */
async function callbackServer(): Promise<{
  url: string;
  wait(id: string): Promise<number>;
  close(): Promise<void>;
}> {
  const waiting = new Map<string, (t: number) => void>();
  const arrived = new Map<string, number>();
  const server = createServer((req: IncomingMessage, res) => {
    const t = performance.now();
    const id = String(req.headers["x-call-id"] ?? "");
    req.resume();
    req.on("end", () => res.end("ok"));
    const w = waiting.get(id);
    if (w) w(t);
    else arrived.set(id, t);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/done`,
    wait: (id) =>
      arrived.has(id) ? Promise.resolve(arrived.get(id)!) : new Promise((r) => waiting.set(id, r)),
    close: () => new Promise((r) => server.close(() => r(undefined))),
  };
}

async function main(): Promise<void> {
  const scratch = await mkdtemp(join(tmpdir(), "fennec-bench-durable-"));
  const servers = new Servers();
  try {
    const reg = join(scratch, "registry");
    await registry(reg);
    const script = await wrkScript(scratch, "hello");
    // The callback receiver is on loopback, where callbacks go only when listed (docs/security.md).
    const on: Server = await servers.start(
      startFennec(reg, ["--state-dir", join(scratch, "state-on"), "--callback-allow", "127.0.0.1"]),
    );
    const off: Server = await servers.start(
      startFennec(reg, ["--state-dir", join(scratch, "state-off"), "--no-records"]),
    );
    const base = (s: Server) => s.url.replace(/\/$/, "");
    const rows: Row[] = [
      { key: "sync", label: "sync call (records on)", runs: [], cpuUsPerReq: [], processCpuUsPerReq: [] },
      {
        key: "sync-no-records",
        label: "sync call (--no-records)",
        runs: [],
        cpuUsPerReq: [],
        processCpuUsPerReq: [],
      },
      {
        key: "async",
        label: "async call accepted (on disk before its 202)",
        runs: [],
        cpuUsPerReq: [],
        processCpuUsPerReq: [],
      },
    ];
    const target = (key: string) =>
      key === "sync"
        ? { server: on, url: `${base(on)}/f/default/echo` }
        : key === "sync-no-records"
          ? { server: off, url: `${base(off)}/f/default/echo` }
          : { server: on, url: `${base(on)}/fa/default/echo` };
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 === 0 ? rows : [...rows].reverse();
      for (const row of order) {
        const { server, url } = target(row.key);
        const cpu0 = mainThreadCpuSeconds(server.pid);
        const process0 = processCpuSeconds(server.pid);
        const r = await wrk(url, script, { threads: 1, connections: CONNECTIONS, seconds: SECONDS });
        row.runs.push(r);
        row.cpuUsPerReq.push(((mainThreadCpuSeconds(server.pid) - cpu0) / r.requests) * 1e6);
        row.processCpuUsPerReq.push(((processCpuSeconds(server.pid) - process0) / r.requests) * 1e6);
        process.stderr.write(`round ${round + 1}/${ROUNDS} ${row.key}: ${Math.round(r.rps)} req/s\n`);
        // The accepted calls still run: let them, so the next row measures a quiet Fennec.
        if (row.key === "async") await drain(base(on));
      }
    }

    // End-to-end latency of one async call at a time, against a sync round trip.
    const cb = await callbackServer();
    const asyncMs: number[] = [];
    const syncMs: number[] = [];
    for (let i = 0; i < CALLS; i++) {
      let t0 = performance.now();
      const r = await fetch(`${base(on)}/f/default/echo`, { method: "POST", body: "hello" });
      await r.arrayBuffer();
      syncMs.push(performance.now() - t0);
      t0 = performance.now();
      const a = await fetch(`${base(on)}/fa/default/echo`, {
        method: "POST",
        body: "hello",
        headers: { "x-callback-url": cb.url },
      });
      const { callId } = (await a.json()) as { callId: string };
      asyncMs.push((await cb.wait(callId)) - t0);
    }
    await cb.close();

    // A chain of depth 3 against three separate sync calls.
    let chain: { chainMs: number[]; threeMs: number[] } | undefined;
    if (existsSync(CHAIN_EXAMPLE)) {
      chain = { chainMs: [], threeMs: [] };
      for (let i = 0; i < CALLS; i++) {
        let t0 = performance.now();
        const r = await fetch(`${base(on)}/f/default/faasm-chain`, { method: "POST", body: "3" });
        await r.arrayBuffer();
        if (!r.ok) throw new Error(`faasm-chain answered ${r.status}`);
        chain.chainMs.push(performance.now() - t0);
        t0 = performance.now();
        for (let k = 0; k < 3; k++) {
          const e = await fetch(`${base(on)}/f/default/echo`, { method: "POST", body: "hello" });
          await e.arrayBuffer();
        }
        chain.threeMs.push(performance.now() - t0);
      }
    }

    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const rps = (key: string) => median(rows.find((r) => r.key === key)!.runs.map((r) => r.rps));
    const cpu = (key: string) => median(rows.find((r) => r.key === key)!.processCpuUsPerReq);
    const ratios = {
      asyncAcceptedOverSync: rps("async") / rps("sync"),
      recordsOnOverOff: rps("sync") / rps("sync-no-records"),
      // The steadier figure on a busy machine: CPU per call without records over with them.
      recordsOffOverOnProcessCpu: cpu("sync-no-records") / cpu("sync"),
      asyncEndToEndOverSyncP50: summarize(asyncMs).p50 / summarize(syncMs).p50,
      ...(chain
        ? { chainDepth3OverThreeCallsP50: summarize(chain.chainMs).p50 / summarize(chain.threeMs).p50 }
        : {}),
    };
    const lines = [
      `| row | req/s (median of ${ROUNDS}) | p50 (µs) | p99 (µs) | gateway main-thread CPU/req (µs) | whole process CPU/req (µs) | errors |`,
      "|---|---|---|---|---|---|---|",
      ...rows.map((row) => {
        const r = row.runs.find((x) => x.rps === rps(row.key))!;
        return `| ${row.label} | ${Math.round(r.rps)} | ${r.latencyUs["50"]} | ${r.latencyUs["99"]} | ${Math.round(median(row.cpuUsPerReq))} | ${Math.round(median(row.processCpuUsPerReq))} | ${row.runs.reduce((n, x) => n + x.errors, 0)} |`;
      }),
      "",
      `| one call at a time (${CALLS} calls) | p50 (ms) | mean (ms) | p99 (ms) |`,
      "|---|---|---|---|",
      `| sync round trip | ${fmt(summarize(syncMs).p50)} | ${fmt(summarize(syncMs).mean)} | ${fmt(summarize(syncMs).p99)} |`,
      `| async: sent → callback received | ${fmt(summarize(asyncMs).p50)} | ${fmt(summarize(asyncMs).mean)} | ${fmt(summarize(asyncMs).p99)} |`,
      ...(chain
        ? [
            `| chain of depth 3 (faasm-chain) | ${fmt(summarize(chain.chainMs).p50)} | ${fmt(summarize(chain.chainMs).mean)} | ${fmt(summarize(chain.chainMs).p99)} |`,
            `| three separate sync calls | ${fmt(summarize(chain.threeMs).p50)} | ${fmt(summarize(chain.threeMs).mean)} | ${fmt(summarize(chain.threeMs).p99)} |`,
          ]
        : []),
      "",
      ...Object.entries(ratios).map(([k, v]) => `- ${k}: ${v.toFixed(2)}×`),
    ];
    console.log(lines.join("\n"));
    writeResults("durable.json", {
      machine: machine(),
      rounds: ROUNDS,
      seconds: SECONDS,
      connections: CONNECTIONS,
      rows,
      syncMs: summarize(syncMs),
      asyncMs: summarize(asyncMs),
      ...(chain ? { chainMs: summarize(chain.chainMs), threeMs: summarize(chain.threeMs) } : {}),
      ratios,
    });
  } finally {
    await servers.stopAll();
    await rm(scratch, { recursive: true, force: true });
  }
}

await main();
