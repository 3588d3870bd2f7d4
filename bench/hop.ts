/**
 * The warm hop (issue 10, item 6), side by side in one run: the same echo fetch handler
 * (hop-handlers.ts) measured with wrk (2 threads, 8 connections, a small POST) on
 *
 * - Fennec's handler runtime alone on a loopback port (no proxy);
 * - nginx from Debian proxying to that same runtime process (keep-alive upstream), with one
 *   worker (Fennec's gateway is one event loop) and with Debian's `worker_processes auto`;
 * - a bare reverse proxy on Node (node-proxy.ts: node:http and undici, nothing else), the floor
 *   for any gateway on Node's HTTP stack;
 * - `fennec serve` calling it as a `[process]` function (one instance, 8 concurrent requests) and
 *   as an `[oci]` function on runc;
 * - workerd serving the very same module (the runtime's Request/Response against a native one).
 *
 * Rounds are interleaved row by row, so drift on this shared machine hits every row alike; each
 * figure is the median over rounds. Besides req/s and latency it reports the CPU the proxy
 * (nginx's processes, Fennec's own process) spent per request, which is the hop's cost whatever
 * else runs on the machine.
 *
 * Usage: npm run bench:hop [-- --rounds 3 --seconds 10 --no-oci --compare DIR]
 *        (--compare: one more Fennec row from the build in DIR, another checkout with `npm run build`
 *        done, e.g. a branch's worktree: before and after side by side in one run)
 *        node dist/bench/hop.js --profile DIR   (Fennec alone under `node --cpu-prof`, profile in DIR)
 * Writes bench/results/hop.json and docs/img/hop-latency.svg. Needs root for `[oci]`, nginx and wrk.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { cp, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { ECHO } from "./hop-handlers.js";
import { startNginx, startNodeProxy, startRuntime } from "./hop-backends.js";
import { startFennec, startWorkerd, waitForUrl, Servers, writeFunction, type Server } from "./servers.js";
import { cdfChart, fromPercentiles } from "./plot.js";
import { machine, writeResults } from "./results.js";
import { fmt } from "./stats.js";
import { cpuSeconds, processTree, wrk, wrkScript, type WrkResult } from "./wrk.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const { values: opts } = parseArgs({
  options: {
    rounds: { type: "string", default: "3" },
    seconds: { type: "string", default: "10" },
    "no-oci": { type: "boolean", default: false },
    profile: { type: "string" },
    compare: { type: "string" },
  },
});
const ROUNDS = Number(opts.rounds);
const SECONDS = Number(opts.seconds);
const LOAD = { threads: 2, connections: 8, seconds: SECONDS };
const BODY = "hello fennec bench";

interface Row {
  readonly name: string;
  readonly url: string;
  /** The processes whose CPU is the hop's own (the proxy); empty for a server with no proxy. */
  readonly proxy: () => number[];
  /** The processes serving the handler behind it. */
  readonly handler: () => number[];
}

interface Measured {
  readonly name: string;
  readonly runs: WrkResult[];
  proxyCpuS: number;
  handlerCpuS: number;
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** One function per sandbox kind, on one instance that takes wrk's 8 connections at once. */
async function registry(dir: string, withOci: boolean): Promise<void> {
  const tables: Array<[string, string]> = [["hop-process", `[process]\nhandler = "handler.mjs"`]];
  if (withOci) tables.push(["hop-oci", `[oci]\nhandler = "handler.mjs"\nruntime = "runc"`]);
  for (const [name, table] of tables)
    await writeFunction(dir, name, ECHO, { table, concurrency: LOAD.connections });
}

async function copyRegistry(work: string): Promise<string> {
  const dir = join(work, "registry-compare");
  await mkdir(join(dir, "hop-process"), { recursive: true });
  await cp(join(work, "registry", "hop-process"), join(dir, "hop-process"), { recursive: true });
  return dir;
}

async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), "fennec-bench-hop-"));
  const servers = new Servers();
  const start = <T extends Server>(s: Promise<T>) => servers.start(s);
  try {
    const handler = join(work, "echo.mjs");
    await writeFile(handler, ECHO);
    const script = await wrkScript(work, BODY);
    const withOci = !opts["no-oci"] && !opts.profile;
    await registry(join(work, "registry"), withOci);
    if (opts.profile) return await profile(work, script, opts.profile);

    console.error("starting: the runtime alone, nginx, a bare Node proxy, fennec serve, workerd");
    const runtime = await start(startRuntime(handler));
    const nginx1 = await start(startNginx(join(work, "nginx-1"), runtime.port, 1));
    const nginxAuto = await start(startNginx(join(work, "nginx-auto"), runtime.port, "auto"));
    const nodeProxy = await start(startNodeProxy(runtime.port));
    const fennec = await start(startFennec(join(work, "registry")));
    // Its own copy of the registry: each Fennec builds into the function's directory.
    const other = opts.compare
      ? await start(startFennec(await copyRegistry(work), [], [], resolve(opts.compare)))
      : undefined;
    const workerd = await start(startWorkerd(handler));
    const fennecChildren = () => processTree(fennec.pid).filter((p) => p !== fennec.pid);
    const rows: Row[] = [
      { name: "handler runtime alone", url: runtime.url, proxy: () => [], handler: () => [runtime.pid] },
      {
        name: "nginx, 1 worker → runtime",
        url: nginx1.url,
        proxy: () => processTree(nginx1.pid),
        handler: () => [runtime.pid],
      },
      {
        name: "nginx, workers auto → runtime",
        url: nginxAuto.url,
        proxy: () => processTree(nginxAuto.pid),
        handler: () => [runtime.pid],
      },
      {
        name: "bare Node proxy (node:http + undici) → runtime",
        url: nodeProxy.url,
        proxy: () => [nodeProxy.pid],
        handler: () => [runtime.pid],
      },
      {
        name: "Fennec → [process]",
        url: `${fennec.url}/invoke/hop-process/`,
        proxy: () => [fennec.pid],
        handler: fennecChildren,
      },
      ...(other
        ? [
            {
              name: `Fennec (${basename(resolve(opts.compare!))}) → [process]`,
              url: `${other.url}/invoke/hop-process/`,
              proxy: () => [other.pid],
              handler: () => processTree(other.pid).filter((p) => p !== other.pid),
            },
          ]
        : []),
      ...(withOci
        ? [
            {
              name: "Fennec → [oci] runc",
              url: `${fennec.url}/invoke/hop-oci/`,
              proxy: () => [fennec.pid],
              handler: () => [],
            },
          ]
        : []),
      { name: "workerd alone", url: workerd.url, proxy: () => [], handler: () => processTree(workerd.pid) },
    ];
    // The first call of a Fennec function starts its instance (and builds its root for [oci]).
    for (const row of rows) await waitForUrl(row.url);
    console.error(`warming up every row (2 s of the same load)`);
    for (const row of rows) await wrk(row.url, script, { ...LOAD, seconds: 2 });

    const measured: Measured[] = rows.map((r) => ({ name: r.name, runs: [], proxyCpuS: 0, handlerCpuS: 0 }));
    for (let round = 0; round < ROUNDS; round++) {
      for (const [i, row] of rows.entries()) {
        console.error(`round ${round + 1}/${ROUNDS}: ${row.name}`);
        const proxy = row.proxy();
        const behind = row.handler();
        const p0 = cpuSeconds(proxy);
        const h0 = cpuSeconds(behind);
        const result = await wrk(row.url, script, LOAD);
        measured[i]!.proxyCpuS += cpuSeconds(proxy) - p0;
        measured[i]!.handlerCpuS += cpuSeconds(behind) - h0;
        measured[i]!.runs.push(result);
        if (result.errors > 0) console.error(`  ${result.errors} errors`);
      }
    }
    report(measured);
  } finally {
    await servers.stopAll();
    await rm(work, { recursive: true, force: true });
  }
}

/** Fennec alone under the same load with V8's sampling profiler on (`--cpu-prof`), for reading hot paths. */
async function profile(work: string, script: string, dir: string): Promise<void> {
  const t0 = performance.now();
  const fennec = await startFennec(join(work, "registry"), [], ["--cpu-prof", "--cpu-prof-dir", dir]);
  let skip = 0;
  let requests = 0;
  try {
    const url = `${fennec.url}/invoke/hop-process/`;
    await waitForUrl(url);
    await wrk(url, script, { ...LOAD, seconds: 2 });
    skip = (performance.now() - t0) / 1000;
    const cpu0 = cpuSeconds([fennec.pid]);
    const r = await wrk(url, script, LOAD);
    requests = r.requests;
    console.log(
      `Fennec → [process] under --cpu-prof: ${fmt(r.rps, 0)} req/s, p50 ${r.latencyUs["50"]} µs, ` +
        `Fennec's CPU ${fmt(((cpuSeconds([fennec.pid]) - cpu0) / r.requests) * 1e6, 0)} µs per request`,
    );
  } finally {
    await fennec.stop(); // the profile is written when the process exits
  }
  console.log(
    `profile written to ${dir}; read the warm path with:\n  node dist/bench/cpu-profile.js ${dir}/<the largest file> --skip ${Math.ceil(skip)} --requests ${requests}`,
  );
}

interface Summary {
  name: string;
  rps: number;
  p50: number;
  p99: number;
  errors: number;
  proxyCpuUsPerReq: number;
  handlerCpuUsPerReq: number;
  rounds: Array<{ rps: number; latencyUs: Record<string, number> }>;
}

function summarise(m: Measured): Summary {
  const requests = m.runs.reduce((s, r) => s + r.requests, 0);
  return {
    name: m.name,
    rps: median(m.runs.map((r) => r.rps)),
    p50: median(m.runs.map((r) => r.latencyUs["50"]!)),
    p99: median(m.runs.map((r) => r.latencyUs["99"]!)),
    errors: m.runs.reduce((s, r) => s + r.errors, 0),
    proxyCpuUsPerReq: (m.proxyCpuS / requests) * 1e6,
    handlerCpuUsPerReq: (m.handlerCpuS / requests) * 1e6,
    rounds: m.runs.map((r) => ({ rps: r.rps, latencyUs: r.latencyUs })),
  };
}

function report(measured: Measured[]): void {
  const rows = measured.map(summarise);
  const by = (prefix: string) => rows.find((r) => r.name.startsWith(prefix))!;
  const runtime = by("handler runtime");
  const nginx1 = by("nginx, 1 worker");
  const nginxAuto = by("nginx, workers auto");
  const workerd = by("workerd");
  const nodeProxy = by("bare Node proxy");
  const table = rows.map(
    (r) =>
      `| ${r.name} | ${fmt(r.rps, 0)} | ${fmt(r.p50 / 1000, 2)} | ${fmt(r.p99 / 1000, 2)} | ${fmt(r.rps / nginx1.rps, 2)}× | ${fmt(r.p50 / nginx1.p50, 2)}× | ${r.proxyCpuUsPerReq > 0 ? fmt(r.proxyCpuUsPerReq, 0) : "—"} | ${fmt(r.handlerCpuUsPerReq, 0)} | ${r.errors} |`,
  );
  const ratios = rows
    .filter((r) => r.name.startsWith("Fennec"))
    .map(
      (f) =>
        `- ${f.name}: ${fmt(f.rps / nginx1.rps, 2)}× nginx (1 worker) throughput, ${fmt(f.rps / nginxAuto.rps, 2)}× nginx (auto), ${fmt(f.rps / nodeProxy.rps, 2)}× the bare Node proxy; p50 ${fmt(f.p50 / nginx1.p50, 2)}× / ${fmt(f.p50 / nginxAuto.p50, 2)}× / ${fmt(f.p50 / nodeProxy.p50, 2)}× (goal ≥ 0.8× and ≤ 1.5× nginx)`,
    );
  const text = `
wrk -t${LOAD.threads} -c${LOAD.connections} -d${LOAD.seconds}s, POST of ${BODY.length} bytes, ${ROUNDS} rounds interleaved (medians); load average at the end ${loadavg()
    .map((x) => x.toFixed(1))
    .join(" ")}

| server (same echo handler) | req/s | p50 (ms) | p99 (ms) | req/s vs nginx 1 worker | p50 vs nginx 1 worker | proxy CPU per request (µs) | handler CPU per request (µs) | errors |
|---|---|---|---|---|---|---|---|---|
${table.join("\n")}

${ratios.join("\n")}
- the runtime against workerd: ${fmt(runtime.rps / workerd.rps, 2)}× the throughput, p50 ${fmt(runtime.p50 / workerd.p50, 2)}×
`;
  console.log(text);
  writeResults("hop.json", { machine: machine(true), load: { ...LOAD, body: BODY, rounds: ROUNDS }, rows });
  const colours = ["#888", "#2b8a3e", "#69db7c", "#f08c00", "#1c7ed6", "#74c0fc", "#d9480f", "#ae3ec9"];
  mkdirSync(join(ROOT, "docs", "img"), { recursive: true });
  writeFileSync(
    join(ROOT, "docs", "img", "hop-latency.svg"),
    cdfChart(
      `Warm hop, wrk -c${LOAD.connections}: latency CDF (last round, clipped at p99)`,
      "latency (µs)",
      rows.map((r, i) => ({
        label: `${r.name} (${fmt(r.rps, 0)} req/s)`,
        colour: colours[i % colours.length]!,
        values: fromPercentiles(r.rounds[r.rounds.length - 1]!.latencyUs),
      })),
    ),
  );
}

void main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
