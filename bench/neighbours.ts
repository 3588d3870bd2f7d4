/**
 * Issue 11's "keep what makes it a sandbox" and "fairness" goals, measured: one function's latency
 * while other functions run away or run long, in one `fennec serve`.
 *
 * The scratch registry holds the `[wasm]` echo (`concurrent-requests = 64`), `runaway` (an infinite
 * loop, `timeout = 2`) and `slow` (fib, called with `?n=38`: hundreds of ms per call). wrk measures
 * echo at 1 connection (p50, p99, p99.9) in three situations, rounds interleaved so drift on this
 * shared machine hits each alike:
 * - alone;
 * - while a background client keeps `inFlight` runaway calls in flight, each a new one as soon as
 *   the last timed out (all must end 504 `FN_TIMEOUT`, charged to `runaway` in `/stats`);
 * - while it keeps `inFlight` fib(38) calls in flight.
 * The background client is this process (fetch), not the measured one. `/stats` → `backends.wasm`
 * before and after shows how many calls ran on the gateway's main thread and how many moved off it.
 *
 * Alone: `node dist/bench/run.js --neighbours-only [--rounds 3 --seconds 5 --in-flight 4]`.
 */
import { copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { startFennec, waitForUrl, type Server } from "./servers.js";
import { wrk, wrkScript, type WrkResult } from "./wrk.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const BODY = "hello fennec neighbours";
/** The runaway's `timeout` (s): each of its calls must end there. */
const RUNAWAY_TIMEOUT_S = 2;
/** fib(38): ≈ 250 ms on a quiet core, past the two 2 ms slices a call may hold the main thread. */
const SLOW_QUERY = "n=38";

export interface NeighboursOptions {
  readonly rounds: number;
  readonly seconds: number;
  /** Runaway (or slow) calls the background client keeps in flight. */
  readonly inFlight: number;
}

export type Situation = "alone" | "runaway" | "slow";
export const SITUATIONS: readonly Situation[] = ["alone", "runaway", "slow"];

/** How the background calls of one situation ended: `status code` (e.g. `504 FN_TIMEOUT`) → count. */
export type Outcomes = Record<string, number>;

export interface SituationFigures {
  readonly situation: Situation;
  /** Echo's latency percentiles (µs) by quantile (%), medians over rounds. */
  readonly latencyUs: Record<string, number>;
  readonly rps: number;
  readonly errors: number;
  readonly rounds: ReadonlyArray<{ rps: number; p50: number; p99: number; p999: number }>;
  /** The background calls' outcomes, over every round. */
  readonly background: Outcomes;
  /** Slowest background call (ms), to see a runaway held to its timeout. */
  readonly backgroundMaxMs?: number;
}

export interface NeighboursResult {
  readonly options: NeighboursOptions;
  readonly situations: SituationFigures[];
  /** `/stats` → `backends.wasm` after warm-up and at the end. */
  readonly wasmBefore: unknown;
  readonly wasmAfter: unknown;
  /** `/stats` → `functions.<name>.errors` at the end, for echo, runaway and slow. */
  readonly errors: Record<string, Record<string, number>>;
  /** `/stats` → `functions.<name>.invocations` at the end. */
  readonly invocations: Record<string, number>;
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function writeRegistry(dir: string, inFlight: number): Promise<void> {
  const fn = async (name: string, from: string, module: string, toml: string) => {
    await mkdir(join(dir, name), { recursive: true });
    await copyFile(join(ROOT, from), join(dir, name, module));
    await writeFile(join(dir, name, "function.toml"), `${toml}\n[wasm]\nmodule = "${module}"\nmemory = 16\n`);
  };
  await fn(
    "echo",
    "examples/registry/echo/echo.wasm",
    "echo.wasm",
    "keepalive = 3600\nconcurrent-requests = 64\n",
  );
  // One call per instance, room for every call the background client keeps in flight.
  await fn(
    "runaway",
    "test/fixtures/wasm/loop.wasm",
    "loop.wasm",
    `keepalive = 3600\nconcurrent-requests = 1\nmax-instances = ${inFlight}\ntimeout = ${RUNAWAY_TIMEOUT_S}\n`,
  );
  await fn(
    "slow",
    "examples/registry/fib/fib.wasm",
    "fib.wasm",
    `keepalive = 3600\nconcurrent-requests = 1\nmax-instances = ${inFlight}\ntimeout = 60\n`,
  );
}

/**
 * Keeps `n` calls to `url` in flight until `stop()`, each started when the last one ended; `stop`
 * resolves once every call has ended, with their outcomes.
 */
function background(url: string, n: number): { stop: () => Promise<{ outcomes: Outcomes; maxMs: number }> } {
  const outcomes: Outcomes = {};
  let maxMs = 0;
  let stopping = false;
  const loop = async () => {
    while (!stopping) {
      const t0 = performance.now();
      const key = await fetch(url, { method: "POST", body: "" }).then(
        async (r) => (await r.arrayBuffer(), `${r.status} ${r.headers.get("x-fennec-error") ?? ""}`.trim()),
        (err: unknown) => `client error ${err instanceof Error ? err.message : String(err)}`,
      );
      maxMs = Math.max(maxMs, performance.now() - t0);
      outcomes[key] = (outcomes[key] ?? 0) + 1;
    }
  };
  const loops = Array.from({ length: n }, loop);
  return {
    stop: async () => {
      stopping = true;
      await Promise.all(loops);
      return { outcomes, maxMs };
    },
  };
}

const add = (into: Outcomes, from: Outcomes) => {
  for (const [k, v] of Object.entries(from)) into[k] = (into[k] ?? 0) + v;
};

interface Stats {
  functions: Record<string, { invocations: number; errors: Record<string, number> }>;
  backends: { wasm?: unknown };
}
const stats = async (base: string): Promise<Stats> => (await (await fetch(`${base}/stats`)).json()) as Stats;

/**
 * Starts `fennec serve` on a scratch registry, measures, and stops it and removes the directory,
 * whatever happened (`onStarted` hands the cleanup to a caller that must run it on a signal).
 */
export async function measureNeighbours(
  opts: NeighboursOptions,
  onStarted: (cleanup: () => Promise<void>) => void = () => undefined,
): Promise<NeighboursResult> {
  const work = await mkdtemp(join(tmpdir(), "fennec-bench-neighbours-"));
  let server: Server | undefined;
  let cleaned: Promise<void> | undefined;
  const cleanup = () =>
    (cleaned ??= (async () => {
      await server?.stop().catch(() => undefined);
      await rm(work, { recursive: true, force: true });
    })());
  onStarted(cleanup);
  try {
    const script = await wrkScript(work, BODY);
    await writeRegistry(join(work, "registry"), opts.inFlight);
    console.error("starting fennec serve (echo, runaway, slow)");
    server = await startFennec(join(work, "registry"));
    const base = server.url;
    const echo = `${base}/invoke/echo/`;
    await waitForUrl(echo);
    await waitForUrl(`${base}/invoke/slow/?n=5`);
    console.error("warming up echo (1 s)");
    await wrk(echo, script, { threads: 1, connections: 1, seconds: 1 });
    const before = await stats(base);

    const runs = new Map<Situation, WrkResult[]>(SITUATIONS.map((s) => [s, []]));
    const outcomes = new Map<Situation, Outcomes>(SITUATIONS.map((s) => [s, {}]));
    const maxMs = new Map<Situation, number>();
    const urls: Record<Exclude<Situation, "alone">, string> = {
      runaway: `${base}/invoke/runaway/`,
      slow: `${base}/invoke/slow/?${SLOW_QUERY}`,
    };
    for (let round = 0; round < opts.rounds; round++) {
      for (const s of SITUATIONS) {
        console.error(
          `round ${round + 1}/${opts.rounds}: echo ${s === "alone" ? "alone" : `beside ${opts.inFlight} ${s} calls`}`,
        );
        const load = s === "alone" ? undefined : background(urls[s], opts.inFlight);
        try {
          // Let the background calls start and (for those that run long) move off the main thread.
          if (load) await new Promise((r) => setTimeout(r, 500));
          runs.get(s)!.push(await wrk(echo, script, { threads: 1, connections: 1, seconds: opts.seconds }));
        } finally {
          const ended = await load?.stop();
          if (ended) {
            add(outcomes.get(s)!, ended.outcomes);
            maxMs.set(s, Math.max(maxMs.get(s) ?? 0, ended.maxMs));
          }
        }
      }
    }
    const after = await stats(base);
    const pick = <T>(f: (fn: Stats["functions"][string]) => T) =>
      Object.fromEntries(
        ["echo", "runaway", "slow"].map((n) => [
          n,
          f(after.functions[`default/${n}`] ?? { invocations: 0, errors: {} }),
        ]),
      );
    return {
      options: opts,
      situations: SITUATIONS.map((s) => summarise(s, runs.get(s)!, outcomes.get(s)!, maxMs.get(s))),
      wasmBefore: before.backends.wasm,
      wasmAfter: after.backends.wasm,
      errors: pick((f) => f.errors),
      invocations: pick((f) => f.invocations),
    };
  } finally {
    await cleanup();
  }
}

function summarise(
  s: Situation,
  runs: readonly WrkResult[],
  background: Outcomes,
  maxMs?: number,
): SituationFigures {
  const quantiles = Object.keys(runs[0]?.latencyUs ?? {});
  const seconds = runs.reduce((t, r) => t + r.seconds, 0);
  return {
    situation: s,
    latencyUs: Object.fromEntries(quantiles.map((q) => [q, median(runs.map((r) => r.latencyUs[q]!))])),
    rps: runs.reduce((t, r) => t + r.requests, 0) / seconds,
    errors: runs.reduce((t, r) => t + r.errors, 0),
    rounds: runs.map((r) => ({
      rps: r.rps,
      p50: r.latencyUs["50"]!,
      p99: r.latencyUs["99"]!,
      p999: r.latencyUs["99.9"]!,
    })),
    background,
    ...(maxMs !== undefined ? { backgroundMaxMs: maxMs } : {}),
  };
}

const ms = (us: number | undefined) => (us === undefined ? "—" : (us / 1000).toFixed(3));

/** The table (markdown): echo's percentiles per situation, ratios and differences to alone, outcomes. */
export function neighboursTable(r: NeighboursResult): string {
  const alone = r.situations.find((s) => s.situation === "alone")!;
  const name: Record<Situation, string> = {
    alone: "echo alone",
    runaway: `echo beside ${r.options.inFlight} runaway calls (infinite loop, timeout ${RUNAWAY_TIMEOUT_S} s)`,
    slow: `echo beside ${r.options.inFlight} fib(38) calls`,
  };
  const cell = (s: SituationFigures, q: string) => {
    const v = s.latencyUs[q];
    const a = alone.latencyUs[q];
    if (s === alone || v === undefined || a === undefined) return ms(v);
    const d = (v - a) / 1000;
    return `${ms(v)} (${(v / a).toFixed(2)}×, ${d >= 0 ? "+" : ""}${d.toFixed(3)})`;
  };
  const outcomes = (o: Outcomes) =>
    Object.entries(o)
      .map(([k, v]) => `${v} × ${k}`)
      .join(", ") || "—";
  const rows = r.situations.map(
    (s) =>
      `| ${name[s.situation]} | ${cell(s, "50")} | ${cell(s, "99")} | ${cell(s, "99.9")} | ${s.rps.toFixed(0)} | ${s.errors} | ${outcomes(s.background)}${s.backgroundMaxMs ? ` (slowest ${(s.backgroundMaxMs / 1000).toFixed(2)} s)` : ""} |`,
  );
  return `
wrk -t1 -c1 -d${r.options.seconds}s on echo, ${r.options.rounds} round(s) interleaved, medians; background: ${r.options.inFlight} calls kept in flight

| situation | echo p50 (ms; ÷ alone, Δ ms) | p99 | p99.9 | echo req/s | echo errors | background calls' outcomes |
|---|---|---|---|---|---|---|
${rows.join("\n")}

/stats functions.*.errors at the end: ${JSON.stringify(r.errors)}; invocations: ${JSON.stringify(r.invocations)}
/stats backends.wasm after warm-up: ${JSON.stringify(r.wasmBefore)}
/stats backends.wasm at the end:    ${JSON.stringify(r.wasmAfter)}
`;
}
