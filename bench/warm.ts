/**
 * The warm rows of `npm run bench` (issue 11), side by side in one run with one client, wrk:
 *
 * - bare `node:http` echo (bare-server.ts), the limit for anything on Node's HTTP stack;
 * - Cloudflare workerd serving the same echo as a JS worker (hop-handlers.ts `ECHO`);
 * - Fennec → `[wasm]` echo (examples/registry/echo/echo.wasm, `concurrent-requests = 64`);
 * - Fennec → `[process]` echo, the same fetch handler workerd runs, on one instance;
 * - Fennec → `[wasm]` again from a Fennec started with `--no-records`: the cost of a call record
 *   (issue 12) is the first row's throughput over this one's, round by round (the median of the
 *   rounds' ratios);
 * - optionally Fennec → `[wasm]` from another checkout's build (`compare`), before and after.
 *
 * Every row answers a small POST with the same bytes. Each load (1 connection for latency, more
 * for throughput) runs every row in turn, round after round (every other round in reverse), so
 * drift on this shared machine hits every row alike; figures are medians over rounds. The CPU wrk itself used is kept per run: a
 * client near one core per thread would be measuring itself, not the server.
 */
import { copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ECHO } from "./hop-handlers.js";
import { startBare, startFennec, startWorkerd, waitForUrl, writeFunction, type Server } from "./servers.js";
import { cpuSeconds, mainThreadCpuSeconds, processTree, wrk, wrkScript, type WrkResult } from "./wrk.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const BODY = "hello fennec bench";
/** Calls one `[wasm]` or `[process]` instance takes at once (more than any load's connections). */
const CONCURRENCY = 64;

export interface WarmOptions {
  readonly rounds: number;
  readonly seconds: number;
  /** wrk threads for every load. */
  readonly threads: number;
  /** Connections of the throughput loads (latency is always measured at 1). */
  readonly connections: readonly number[];
  /** Another checkout with `npm run build` done: one more Fennec `[wasm]` row from its build. */
  readonly compare?: string;
  /** Only these rows (default: all). */
  readonly rows?: readonly RowKey[];
}

/** What a row is, for ratios: the four rows of issue 11, and the build compared. */
export type RowKey = "bare" | "workerd" | "wasm" | "process" | "wasm-no-records" | "wasm-compare";

export const ROW_KEYS: readonly RowKey[] = [
  "bare",
  "workerd",
  "wasm",
  "process",
  "wasm-no-records",
  "wasm-compare",
];

/** One load on one row, medians over rounds. */
export interface LoadFigures {
  readonly connections: number;
  readonly rps: number;
  /** Latency percentiles (µs) by quantile (%), each the median over rounds. */
  readonly latencyUs: Record<string, number>;
  readonly errors: number;
  /** Cores the server's processes used meanwhile, and their CPU per request. */
  readonly serverCores: number;
  readonly serverCpuUsPerRequest: number;
  /** For a Fennec row: the CPU per request of Fennec's main thread (the gateway's event loop) alone. */
  readonly gatewayThreadCpuUsPerRequest?: number;
  /** Cores wrk used (at most `threads`): the client's own load. */
  readonly clientCores: number;
  readonly rounds: ReadonlyArray<{ rps: number; p50: number; p99: number }>;
}

export interface WarmRow {
  readonly key: RowKey;
  readonly name: string;
  /** Why the row was not (fully) measured; its figures then cover the runs before it failed. */
  error?: string;
  readonly loads: LoadFigures[];
}

interface Target {
  readonly key: RowKey;
  readonly name: string;
  url?: string;
  /** The processes whose CPU is the server's. */
  pids: () => number[];
  /** Fennec's process, whose main thread is the gateway's. */
  gateway?: number;
  error?: string;
  readonly runs: Map<number, Array<{ result: WrkResult; serverCpuS: number; gatewayCpuS: number }>>;
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

const message = (err: unknown) => (err instanceof Error ? err.message : String(err)).slice(0, 600);

/** The scratch registry: `wasm-echo` (the example's module) and `process-echo` (ECHO). */
async function writeRegistry(dir: string): Promise<void> {
  await mkdir(join(dir, "wasm-echo"), { recursive: true });
  await copyFile(join(ROOT, "examples/registry/echo/echo.wasm"), join(dir, "wasm-echo", "echo.wasm"));
  await writeFile(
    join(dir, "wasm-echo", "function.toml"),
    `# the example echo, taking up to ${CONCURRENCY} calls at once on an instance\nkeepalive = 3600\nconcurrent-requests = ${CONCURRENCY}\n\n[wasm]\nmodule = "echo.wasm"\nmemory = 16\n`,
  );
  await writeFunction(dir, "process-echo", ECHO, {
    table: `[process]\nhandler = "handler.mjs"`,
    concurrency: CONCURRENCY,
  });
}

/**
 * Starts every row's server (a row whose server fails is kept with its error), measures them, and
 * stops every server and removes the scratch directory, whatever happened. `onStarted` hands the
 * cleanup to a caller that must run it on a signal.
 */
export async function measureWarm(
  opts: WarmOptions,
  onStarted: (cleanup: () => Promise<void>) => void = () => undefined,
): Promise<WarmRow[]> {
  const work = await mkdtemp(join(tmpdir(), "fennec-bench-warm-"));
  const servers: Server[] = [];
  let cleaned: Promise<void> | undefined;
  const cleanup = () =>
    (cleaned ??= (async () => {
      for (const s of servers.splice(0).reverse()) await s.stop().catch(() => undefined);
      await rm(work, { recursive: true, force: true });
    })());
  onStarted(cleanup);
  try {
    const handler = join(work, "echo.mjs");
    await writeFile(handler, ECHO);
    const script = await wrkScript(work, BODY);
    await writeRegistry(join(work, "registry"));

    const targets: Target[] = [];
    const target = (key: RowKey, name: string): Target => {
      const t: Target = { key, name, pids: () => [], runs: new Map() };
      if (!opts.rows || opts.rows.includes(key)) targets.push(t);
      return t;
    };
    const wanted = (...rows: Target[]) => rows.some((r) => targets.includes(r));
    const bare = target("bare", "bare node:http echo (the limit)");
    const workerd = target("workerd", "Cloudflare workerd, JS worker echo");
    const wasm = target("wasm", `Fennec → [wasm] echo (concurrent-requests = ${CONCURRENCY})`);
    const proc = target("process", "Fennec → [process] fetch handler echo");
    const noRecords = target("wasm-no-records", "Fennec --no-records → [wasm] echo (no call records)");
    const other = opts.compare
      ? target("wasm-compare", `Fennec (${basename(opts.compare)}) → [wasm] echo`)
      : undefined;

    /** Starts a server for `rows`; a failure is each row's error, not the run's end. */
    const start = async (rows: Target[], starting: () => Promise<Server>, wire: (s: Server) => void) => {
      try {
        const s = await starting();
        servers.push(s);
        wire(s);
      } catch (err) {
        for (const r of rows) r.error = `did not start: ${message(err)}`;
      }
    };
    console.error(`starting: ${targets.map((t) => t.key).join(", ")}`);
    if (wanted(bare))
      await start([bare], startBare, (s) => ((bare.url = s.url), (bare.pids = () => [s.pid])));
    if (wanted(workerd))
      await start(
        [workerd],
        () => startWorkerd(handler),
        (s) => {
          workerd.url = s.url;
          workerd.pids = () => processTree(s.pid);
        },
      );
    // [wasm] instances run on threads of Fennec's own process; a [process] instance is a child.
    if (wanted(wasm, proc))
      await start(
        [wasm, proc],
        () => startFennec(join(work, "registry")),
        (s) => {
          wasm.url = `${s.url}/invoke/wasm-echo/`;
          wasm.pids = () => [s.pid];
          wasm.gateway = proc.gateway = s.pid;
          proc.url = `${s.url}/invoke/process-echo/`;
          proc.pids = () => processTree(s.pid);
        },
      );
    if (wanted(noRecords)) {
      await writeRegistry(join(work, "registry-no-records"));
      await start(
        [noRecords],
        () => startFennec(join(work, "registry-no-records"), ["--no-records"]),
        (s) => {
          noRecords.url = `${s.url}/invoke/wasm-echo/`;
          noRecords.pids = () => [s.pid];
          noRecords.gateway = s.pid;
        },
      );
    }
    if (other && wanted(other)) {
      // Its own registry: a Fennec builds [process] handlers into the function's directory.
      await writeRegistry(join(work, "registry-compare"));
      await start(
        [other],
        () => startFennec(join(work, "registry-compare"), [], [], opts.compare),
        (s) => {
          other.url = `${s.url}/invoke/wasm-echo/`;
          other.pids = () => [s.pid];
          other.gateway = s.pid;
        },
      );
    }
    const live = () => targets.filter((t) => t.url !== undefined && t.error === undefined);
    for (const t of live()) {
      // The first call of a Fennec function starts its instance (and builds a [process] handler).
      await waitForUrl(t.url!).catch((err: unknown) => (t.error = `never answered: ${message(err)}`));
    }

    console.error(`warming up every row (1 s at ${opts.connections[0] ?? 8} connections)`);
    for (const t of live()) await run(t, script, opts.threads, opts.connections[0] ?? 8, 1, false);

    const loads = [...new Set([1, ...opts.connections])];
    for (let round = 0; round < opts.rounds; round++) {
      for (const c of loads) {
        // Every other round in the opposite order: this machine's speed drifts within a round, and
        // a row always measured first would always meet the drift the same way (a 5-round A/B of
        // records on and off measured the second row up to 8 % faster for that alone).
        const order = round % 2 === 0 ? live() : live().reverse();
        for (const t of order) {
          console.error(`round ${round + 1}/${opts.rounds}, ${c} connection(s): ${t.name}`);
          await run(t, script, opts.threads, c, opts.seconds, true);
        }
      }
    }
    return targets.map((t) => summarise(t, loads));
  } finally {
    await cleanup();
  }
}

/** One wrk run on `t`, kept when `keep`; a failed run (the server died, say) is the row's error. */
async function run(
  t: Target,
  script: string,
  threads: number,
  connections: number,
  seconds: number,
  keep: boolean,
): Promise<void> {
  try {
    const pids = t.pids();
    const cpu0 = cpuSeconds(pids);
    const gateway0 = t.gateway ? mainThreadCpuSeconds(t.gateway) : 0;
    const result = await wrk(t.url!, script, {
      threads: Math.min(threads, connections),
      connections,
      seconds,
    });
    const serverCpuS = cpuSeconds(pids) - cpu0;
    const gatewayCpuS = t.gateway ? mainThreadCpuSeconds(t.gateway) - gateway0 : 0;
    if (result.requests === 0) throw new Error(`no request answered in ${seconds} s`);
    if (result.errors > 0) console.error(`  ${result.errors} errors`);
    if (keep)
      t.runs.set(connections, [...(t.runs.get(connections) ?? []), { result, serverCpuS, gatewayCpuS }]);
  } catch (err) {
    t.error = `wrk at ${connections} connection(s) failed: ${message(err)}`;
  }
}

function summarise(t: Target, loads: readonly number[]): WarmRow {
  const figures: LoadFigures[] = [];
  for (const c of loads) {
    const runs = t.runs.get(c) ?? [];
    if (runs.length === 0) continue;
    const requests = runs.reduce((s, r) => s + r.result.requests, 0);
    const seconds = runs.reduce((s, r) => s + r.result.seconds, 0);
    const serverCpuS = runs.reduce((s, r) => s + r.serverCpuS, 0);
    const quantiles = Object.keys(runs[0]!.result.latencyUs);
    figures.push({
      connections: c,
      rps: median(runs.map((r) => r.result.rps)),
      latencyUs: Object.fromEntries(
        quantiles.map((q) => [q, median(runs.map((r) => r.result.latencyUs[q]!))]),
      ),
      errors: runs.reduce((s, r) => s + r.result.errors, 0),
      serverCores: serverCpuS / seconds,
      serverCpuUsPerRequest: (serverCpuS / requests) * 1e6,
      ...(t.gateway
        ? { gatewayThreadCpuUsPerRequest: (runs.reduce((s, r) => s + r.gatewayCpuS, 0) / requests) * 1e6 }
        : {}),
      clientCores: runs.reduce((s, r) => s + r.result.clientCpuS, 0) / seconds,
      rounds: runs.map((r) => ({
        rps: r.result.rps,
        p50: r.result.latencyUs["50"]!,
        p99: r.result.latencyUs["99"]!,
      })),
    });
  }
  return { key: t.key, name: t.name, ...(t.error ? { error: t.error } : {}), loads: figures };
}

/** Each round's req/s of `a` over `b`'s in the same round (none when either row lacks a round). */
function pairedRatios(a: LoadFigures | undefined, b: LoadFigures | undefined): number[] {
  if (!a || !b || a.rounds.length !== b.rounds.length) return [];
  return a.rounds.map((r, i) => r.rps / b.rounds[i]!.rps);
}

/** A row's figures at `connections`, if measured. */
export function at(row: WarmRow | undefined, connections: number): LoadFigures | undefined {
  return row?.loads.find((l) => l.connections === connections);
}

/**
 * Issue 11's ratios and the client check: Fennec `[wasm]` against workerd and bare node:http
 * (throughput at each load, p50 at 1 connection), and how far above the fastest Fennec row wrk
 * drove bare node:http, with the CPU wrk used there.
 */
export function ratios(rows: readonly WarmRow[], connections: readonly number[]): Record<string, number> {
  const row = (k: RowKey) => rows.find((r) => r.key === k);
  const out: Record<string, number> = {};
  const put = (name: string, a: number | undefined, b: number | undefined) => {
    if (a !== undefined && b !== undefined && b > 0) out[name] = a / b;
  };
  for (const c of connections) {
    put(`wasmOverWorkerdRps_c${c}`, at(row("wasm"), c)?.rps, at(row("workerd"), c)?.rps);
    put(`wasmOverBareRps_c${c}`, at(row("wasm"), c)?.rps, at(row("bare"), c)?.rps);
    put(`processOverWorkerdRps_c${c}`, at(row("process"), c)?.rps, at(row("workerd"), c)?.rps);
    put(`workerdOverBareRps_c${c}`, at(row("workerd"), c)?.rps, at(row("bare"), c)?.rps);
    const fennec = rows.filter((r) => r.key !== "bare" && r.key !== "workerd").map((r) => at(r, c)?.rps ?? 0);
    put(`bareOverFastestFennecRps_c${c}`, at(row("bare"), c)?.rps, Math.max(0, ...fennec) || undefined);
    put(`wasmCompareOverWasmRps_c${c}`, at(row("wasm-compare"), c)?.rps, at(row("wasm"), c)?.rps);
    // Paired by round: two rows' runs of one round met the same machine, the medians of each row
    // over rounds may not have (this machine's speed differs 2× between rounds at -c1).
    const paired = pairedRatios(at(row("wasm"), c), at(row("wasm-no-records"), c));
    if (paired.length > 0) {
      out[`recordsOnOverOffRps_c${c}`] = median(paired);
      out[`recordsOnOverOffRpsMin_c${c}`] = Math.min(...paired);
      out[`recordsOnOverOffRpsMax_c${c}`] = Math.max(...paired);
    }
  }
  const p50 = (k: RowKey) => at(row(k), 1)?.latencyUs["50"];
  put("wasmOverWorkerdP50_c1", p50("wasm"), p50("workerd"));
  put("wasmOverBareP50_c1", p50("wasm"), p50("bare"));
  put("wasmCompareOverWasmP50_c1", p50("wasm-compare"), p50("wasm"));
  return out;
}
