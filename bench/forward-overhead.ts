/**
 * What forwarding a call to another node costs (issue 13), with the two nodes as separate
 * processes: `fennec serve --cluster NATS --node a|b` on a nats-server of the bench's own (as the
 * e2e tests start them), wrk as the client, side by side in one run, rounds interleaved:
 *
 * - **bare echo**: a node:http server answering with the request body (bare-server.ts);
 * - **bare hop**: a node:http proxy with an undici Pool (node-proxy.ts) in front of that echo, the
 *   floor any hop written on Node's HTTP stack could reach on this machine (`whole`: the same
 *   proxy reading a small body whole each way instead of streaming it);
 * - **direct**: wrk to node B, which runs the function (a wasm echo);
 * - **forwarded**: wrk to node A, which forwards every call to B. Placement does it, as in
 *   production: A's memory budget (`--memory 8`) has no room for one instance of the function
 *   (16 MiB), B's has, so B is the function's node (docs/cluster.md, "Placement").
 *
 * With `--compare DIR` (another checkout, built) a second pair of nodes from that build, on a
 * nats-server of its own, adds its direct and forwarded rows: before and after in one run.
 * Besides req/s and latency, the CPU each process spent per request (`/proc/<pid>/stat`): on this
 * shared machine the cost per call moves less than the latency does.
 *
 *   npm run build && node dist/bench/forward-overhead.js [--seconds 5] [--rounds 3]
 *     [--connections 8] [--body 5] [--compare DIR] [--profile DIR]
 *
 * `--profile DIR`: node A alone under `node --cpu-prof` with the forwarded load, then prints the
 * `cpu-profile.js` command that reads its warm path.
 */
import { copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { startNats, type TestNats } from "../test/helpers/nats.js";
import { startNodeProxy } from "./hop-backends.js";
import { startBare, startFennec, Servers, waitForUrl, type Server } from "./servers.js";
import { fmt } from "./stats.js";
import { cpuSeconds, wrk, wrkScript, type WrkResult } from "./wrk.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const { values: opts } = parseArgs({
  options: {
    rounds: { type: "string", default: "3" },
    seconds: { type: "string", default: "5" },
    connections: { type: "string", default: "8" },
    body: { type: "string", default: "5" },
    compare: { type: "string" },
    profile: { type: "string" },
  },
});
const ROUNDS = Number(opts.rounds);
const LOAD = { threads: 1, connections: Number(opts.connections), seconds: Number(opts.seconds) };
const FUNCTION = "fwd-echo";
/** The pair's function needs 16 MiB; A's budget has no room for it, B's has. */
const ENTRY_MEMORY_MIB = "8";

interface Row {
  readonly name: string;
  readonly url: string;
  /** The process in front (the proxy, node A); undefined when wrk reaches the server directly. */
  readonly front: number | undefined;
  /** The process that answers (the echo, node B). */
  readonly back: number;
  /** The node that must have served a call of this row (its `x-fennec-node`), for Fennec's rows. */
  readonly servedBy?: string;
}

interface Measured {
  readonly row: Row;
  readonly runs: WrkResult[];
  frontCpuS: number;
  backCpuS: number;
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** A registry holding the example echo module as FUNCTION, one instance taking every connection. */
async function registry(dir: string): Promise<string> {
  await mkdir(join(dir, FUNCTION), { recursive: true });
  await copyFile(join(ROOT, "examples/registry/echo/echo.wasm"), join(dir, FUNCTION, "echo.wasm"));
  await writeFile(
    join(dir, FUNCTION, "function.toml"),
    `keepalive = 3600\nconcurrent-requests = 64\n\n[wasm]\nmodule = "echo.wasm"\nmemory = 16\n`,
  );
  return dir;
}

/** `fennec serve --cluster` as node `name` of the build in `checkout`, its own registry and state. */
function node(
  work: string,
  nats: TestNats,
  name: string,
  checkout: string,
  extra: readonly string[] = [],
  nodeArgs: readonly string[] = [],
): Promise<Server> {
  const dir = join(work, name);
  return registry(join(dir, "registry")).then((reg) =>
    startFennec(
      reg,
      [
        "--cluster",
        nats.url,
        "--node",
        name,
        "--state-dir",
        join(dir, "state"),
        "--cache-dir",
        join(dir, "cache"),
        "--no-records",
        ...extra,
      ],
      nodeArgs,
      checkout,
    ),
  );
}

/** Waits until entry node `a` forwards a call to `b` (membership seen, placement on `b`). */
async function forwarding(a: Server, b: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const res = await fetch(`${a.url}/invoke/${FUNCTION}`, { method: "POST", body: "hi" }).catch(
      () => undefined,
    );
    const servedBy = res?.headers.get("x-fennec-node");
    await res?.arrayBuffer();
    if (res?.ok && servedBy === b) return;
    if (Date.now() > deadline)
      throw new Error(`node a never forwarded to ${b} (last answer ${res?.status} from ${servedBy})`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The node that served one call of `row` (checked before and after the measurement). */
async function servedBy(row: Row): Promise<void> {
  if (!row.servedBy) return;
  const res = await fetch(row.url, { method: "POST", body: "check" });
  await res.arrayBuffer();
  const by = res.headers.get("x-fennec-node");
  if (!res.ok || by !== row.servedBy)
    throw new Error(`${row.name}: served by ${by} (HTTP ${res.status}), not ${row.servedBy}`);
}

/** A pair of nodes (B runs the function, A forwards to it) on a nats-server of their own. */
async function pair(
  work: string,
  servers: Servers,
  tag: string,
  checkout: string,
  label: string,
): Promise<Row[]> {
  const nats = await startNats();
  await servers.start(Promise.resolve({ url: nats.url, pid: 0, stop: () => nats.stop() }));
  const b = await servers.start(node(join(work, tag), nats, "b", checkout));
  const a = await servers.start(node(join(work, tag), nats, "a", checkout, ["--memory", ENTRY_MEMORY_MIB]));
  await waitForUrl(`${b.url}/invoke/${FUNCTION}`);
  await forwarding(a, "b");
  return [
    {
      name: `${label} direct (wrk → B)`,
      url: `${b.url}/invoke/${FUNCTION}`,
      front: undefined,
      back: b.pid,
      servedBy: "b",
    },
    {
      name: `${label} forwarded (wrk → A → B)`,
      url: `${a.url}/invoke/${FUNCTION}`,
      front: a.pid,
      back: b.pid,
      servedBy: "b",
    },
  ];
}

const load = () =>
  loadavg()
    .map((x) => x.toFixed(1))
    .join(" ");

async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), "fennec-forward-bench-"));
  const servers = new Servers();
  const stop = () => void servers.stopAll().finally(() => rm(work, { recursive: true, force: true }));
  process.once("SIGINT", stop);
  try {
    const script = await wrkScript(work, "x".repeat(Number(opts.body)));
    if (opts.profile) return await profile(work, servers, script, resolve(opts.profile));
    console.error(`load average before: ${load()}`);
    const echo = await servers.start(startBare());
    const echoPort = Number(new URL(echo.url).port);
    const proxy = await servers.start(startNodeProxy(echoPort));
    const wholeProxy = await servers.start(startNodeProxy(echoPort, "whole"));
    const rows: Row[] = [
      { name: "bare echo (node:http)", url: echo.url, front: undefined, back: echo.pid },
      {
        name: "bare hop (node:http + undici, streamed) → bare echo",
        url: proxy.url,
        front: proxy.pid,
        back: echo.pid,
      },
      {
        name: "bare hop (node:http + undici, small body whole) → bare echo",
        url: wholeProxy.url,
        front: wholeProxy.pid,
        back: echo.pid,
      },
      ...(await pair(work, servers, "this", ROOT, "Fennec")),
    ];
    if (opts.compare) {
      const other = resolve(opts.compare);
      rows.push(...(await pair(work, servers, "compare", other, `Fennec (${basename(other)})`)));
    }
    console.error("warming up every row (2 s of the same load)");
    for (const row of rows) await wrk(row.url, script, { ...LOAD, seconds: 2 });
    const measured: Measured[] = rows.map((row) => ({ row, runs: [], frontCpuS: 0, backCpuS: 0 }));
    for (let round = 0; round < ROUNDS; round++) {
      for (const m of measured) {
        console.error(`round ${round + 1}/${ROUNDS}: ${m.row.name}`);
        const front = m.row.front === undefined ? [] : [m.row.front];
        const f0 = cpuSeconds(front);
        const b0 = cpuSeconds([m.row.back]);
        const r = await wrk(m.row.url, script, LOAD);
        m.frontCpuS += cpuSeconds(front) - f0;
        m.backCpuS += cpuSeconds([m.row.back]) - b0;
        m.runs.push(r);
        if (r.errors > 0) console.error(`  ${r.errors} errors`);
      }
    }
    for (const row of rows) await servedBy(row);
    report(measured);
  } finally {
    process.off("SIGINT", stop);
    await servers.stopAll();
    await rm(work, { recursive: true, force: true });
  }
}

function report(measured: Measured[]): void {
  const rows = measured.map((m) => {
    const requests = m.runs.reduce((s, r) => s + r.requests, 0);
    return {
      name: m.row.name,
      rps: median(m.runs.map((r) => r.rps)),
      p50: median(m.runs.map((r) => r.latencyUs["50"]!)),
      p99: median(m.runs.map((r) => r.latencyUs["99"]!)),
      errors: m.runs.reduce((s, r) => s + r.errors, 0),
      front: m.row.front === undefined ? undefined : (m.frontCpuS / requests) * 1e6,
      back: (m.backCpuS / requests) * 1e6,
      clientCpu: m.runs.reduce((s, r) => s + r.clientCpuS, 0) / m.runs.reduce((s, r) => s + r.seconds, 0),
      each: m.runs.map((r) => fmt(r.rps, 0)).join(" / "),
    };
  });
  console.log(
    `\nwrk -t${LOAD.threads} -c${LOAD.connections} -d${LOAD.seconds}s, POST of ${opts.body} bytes, ${ROUNDS} rounds interleaved (medians); load average at the end ${load()}\n`,
  );
  console.log(
    "| path | req/s | each round | p50 (ms) | p99 (ms) | front CPU per request (µs) | back CPU per request (µs) | wrk CPU | errors |",
  );
  console.log("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const r of rows)
    console.log(
      `| ${r.name} | ${fmt(r.rps, 0)} | ${r.each} | ${fmt(r.p50 / 1000, 2)} | ${fmt(r.p99 / 1000, 2)} | ${r.front === undefined ? "—" : fmt(r.front, 0)} | ${fmt(r.back, 0)} | ${fmt(r.clientCpu * 100, 0)} % | ${r.errors} |`,
    );
  const by = (name: string) => rows.find((r) => r.name === name)!;
  const bare = by("bare echo (node:http)");
  const hop = rows.find((r) => r.name.startsWith("bare hop (node:http + undici, streamed)"))!;
  console.log(
    `\n- bare hop / bare echo: throughput ${fmt(hop.rps / bare.rps, 2)}×, p50 ${fmt(hop.p50 / bare.p50, 2)}×`,
  );
  for (const label of new Set(
    rows.filter((r) => r.name.includes("direct")).map((r) => r.name.split(" direct")[0]!),
  )) {
    const d = by(`${label} direct (wrk → B)`);
    const f = by(`${label} forwarded (wrk → A → B)`);
    console.log(
      `- ${label} forwarded / direct: throughput ${fmt(f.rps / d.rps, 2)}×, p50 ${fmt(f.p50 / d.p50, 2)}×, p99 ${fmt(f.p99 / d.p99, 2)}×; ` +
        `A's CPU per forwarded call ${fmt(f.front!, 0)} µs = ${fmt(f.front! / hop.front!, 2)}× the bare hop's; ` +
        `B's CPU per call forwarded ${fmt(f.back, 0)} µs against ${fmt(d.back, 0)} µs direct`,
    );
  }
}

/** Node A under `node --cpu-prof` with the forwarded load, to read where a hop's time goes. */
async function profile(work: string, servers: Servers, script: string, dir: string): Promise<void> {
  const nats = await startNats();
  await servers.start(Promise.resolve({ url: nats.url, pid: 0, stop: () => nats.stop() }));
  const b = await servers.start(node(work, nats, "b", ROOT));
  await waitForUrl(`${b.url}/invoke/${FUNCTION}`);
  const t0 = performance.now();
  const a = await node(
    work,
    nats,
    "a",
    ROOT,
    ["--memory", ENTRY_MEMORY_MIB],
    ["--cpu-prof", "--cpu-prof-dir", dir],
  );
  let requests = 0;
  let skip = 0;
  try {
    await forwarding(a, "b");
    const url = `${a.url}/invoke/${FUNCTION}`;
    await wrk(url, script, { ...LOAD, seconds: 2 });
    skip = (performance.now() - t0) / 1000;
    const cpu0 = cpuSeconds([a.pid]);
    const r = await wrk(url, script, LOAD);
    requests = r.requests;
    console.log(
      `forwarded under --cpu-prof: ${fmt(r.rps, 0)} req/s, p50 ${r.latencyUs["50"]} µs, ` +
        `A's CPU ${fmt(((cpuSeconds([a.pid]) - cpu0) / r.requests) * 1e6, 0)} µs per request`,
    );
  } finally {
    await a.stop(); // the profile is written when the process exits
  }
  console.log(
    `profile written to ${dir}; read the warm path with:\n  node dist/bench/cpu-profile.js ${dir}/<the largest file> --skip ${Math.ceil(skip)} --requests ${requests}`,
  );
}

await main();
