/**
 * Pre-initialised snapshots (issue 11), side by side in one run: the `primes` example (its
 * `wizer.initialize` builds a table of 100,000 primes) called as
 *
 * - `primes`: every call restored from the snapshot taken when the function was prepared;
 * - `primes-initialising`: the very same .wasm with `[wasm] pre-initialise = false`, so every call
 *   builds the table itself (what a call costs without snapshots);
 * - `echo`: the echo example, a call that does no work, the floor a restored call can reach.
 *
 * One `fennec serve` child, one client connection, calls interleaved (the order alternating each
 * round) so drift on this shared machine hits both rows alike. Each reply's `X-Table` header is
 * checked, so a row cannot silently measure the other path. Also reported: each function's first
 * call (a cold start; for `primes` that includes initialising and capturing the snapshot).
 *
 * Then the guest's work alone, in this process (no thread hop, no HTTP): a fresh instance restored
 * from the snapshot and run, against a fresh instance run that builds the table itself.
 *
 * Usage: npm run bench:snapshot [-- --rounds 200]
 * Writes bench/results/snapshot.json.
 */
import { spawn } from "node:child_process";
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { ConsoleStdout, File, OpenFile, WASI } from "@bjorn3/browser_wasi_shim";
import { Agent, request } from "undici";
import { baseline, capture, restore, type Snapshot } from "../src/sandbox/drivers/wasm/snapshot.js";
import { fennecUrl } from "./fennec-url.js";
import { machine, writeResults } from "./results.js";
import { fmt, summarize } from "./stats.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const { values: opts } = parseArgs({ options: { rounds: { type: "string", default: "200" } } });
const ROUNDS = Number(opts.rounds);
const WARMUP = 5;

const ROWS = [
  { fn: "primes", table: "snapshot", answer: "1299709", what: "restored from the snapshot" },
  { fn: "primes-initialising", table: "built-in-call", answer: "1299709", what: "initialising in the call" },
  // The floor: a call that does no work at all, the same body through the same path.
  { fn: "echo", table: undefined, answer: "100000", what: "the echo example (no work: the floor)" },
] as const;

const agent = new Agent({ connections: 1 });

/** One run of `primes` in this thread on a fresh instance, restored from `snapshot` if given: ms. */
function runInProcess(module: WebAssembly.Module, snapshot: Snapshot | undefined): number {
  const t0 = performance.now();
  let out = "";
  const fds = [
    new OpenFile(new File(Buffer.from("100000"), { readonly: true })),
    new ConsoleStdout((chunk) => (out += Buffer.from(chunk).toString())),
    new ConsoleStdout(() => {}),
  ];
  const wasi = new WASI([], ["REQUEST_METHOD=POST"], fds, { debug: false });
  const instance = new WebAssembly.Instance(module, { wasi_snapshot_preview1: wasi.wasiImport });
  if (snapshot) restore(instance, snapshot);
  wasi.start(instance as unknown as Parameters<WASI["start"]>[0]);
  const ms = performance.now() - t0;
  if (!out.includes("1299709")) throw new Error(`in-process run: ${out}`);
  return ms;
}

/** The guest's work alone: restored and initialising runs, interleaved, in this thread. */
async function inProcess(rounds: number) {
  const module = new WebAssembly.Module(
    await readFile(join(ROOT, "examples", "registry", "primes", "primes.wasm")),
  );
  const wasi = new WASI([], [], [], { debug: false });
  const first = new WebAssembly.Instance(module, { wasi_snapshot_preview1: wasi.wasiImport });
  wasi.inst = first as unknown as WASI["inst"];
  const initial = baseline(first);
  (first.exports["wizer.initialize"] as () => void)();
  const snapshot = capture(first, initial);
  const restored: number[] = [];
  const initialising: number[] = [];
  for (let i = 0; i < rounds + WARMUP; i++) {
    const r = runInProcess(module, snapshot);
    const n = runInProcess(module, undefined);
    if (i < WARMUP) continue;
    restored.push(r);
    initialising.push(n);
  }
  return { restored: summarize(restored), initialising: summarize(initialising) };
}

/** One call's latency in ms, after checking the answer and which path produced it. */
async function call(url: string, { fn, table, answer }: (typeof ROWS)[number]): Promise<number> {
  const t0 = performance.now();
  const res = await request(`${url}/invoke/${fn}/`, { method: "POST", body: "100000", dispatcher: agent });
  const body = await res.body.text();
  const ms = performance.now() - t0;
  if (res.statusCode !== 200 || body.trim() !== answer) throw new Error(`${fn}: ${res.statusCode} ${body}`);
  if (res.headers["x-table"] !== table) throw new Error(`${fn}: X-Table ${String(res.headers["x-table"])}`);
  return ms;
}

const dir = await mkdtemp(join(tmpdir(), "fennec-bench-snapshot-"));
const registry = join(dir, "registry");
const example = join(ROOT, "examples", "registry", "primes");
await cp(example, join(registry, "primes"), { recursive: true });
await cp(join(ROOT, "examples", "registry", "echo"), join(registry, "echo"), { recursive: true });
await mkdir(join(registry, "primes-initialising"), { recursive: true });
await cp(join(example, "primes.wasm"), join(registry, "primes-initialising", "primes.wasm"));
const toml = await readFile(join(example, "function.toml"), "utf8");
await writeFile(join(registry, "primes-initialising", "function.toml"), `${toml}pre-initialise = false\n`);

const child = spawn(
  process.execPath,
  [join(ROOT, "dist", "src", "cli", "main.js"), "serve", "-r", registry, "-p", "0", "--log-level", "info"],
  { stdio: ["ignore", "ignore", "pipe"] },
);
try {
  const url = await fennecUrl(child);
  const first: Record<string, number> = {};
  for (const row of ROWS) first[row.fn] = await call(url, row);
  for (let i = 0; i < WARMUP; i++) for (const row of ROWS) await call(url, row);
  const times: Record<string, number[]> = Object.fromEntries(ROWS.map((r) => [r.fn, []]));
  for (let i = 0; i < ROUNDS; i++) {
    const order = i % 2 === 0 ? ROWS : [...ROWS].reverse();
    for (const row of order) times[row.fn]!.push(await call(url, row));
  }
  const stats = Object.fromEntries(ROWS.map((r) => [r.fn, summarize(times[r.fn]!)]));
  const restored = stats["primes"]!;
  const initialising = stats["primes-initialising"]!;
  // Fennec's own execution time (dispatch to response, /stats), without the client and HTTP hop.
  const server = (await (await fetch(`${url}/stats`)).json()) as {
    functions: Record<string, { execMs: { p50: number } | null }>;
  };
  const exec = Object.fromEntries(
    ROWS.map((r) => [r.fn, server.functions[`default/${r.fn}`]?.execMs?.p50 ?? NaN]),
  );
  console.log(`POST k = 100000, ${ROUNDS} interleaved calls each, one connection\n`);
  console.log("| call | p50 ms | p99 ms | mean ms | Fennec's exec p50 ms (/stats) | first call (cold) ms |");
  console.log("|---|---|---|---|---|---|");
  for (const row of ROWS) {
    const s = stats[row.fn]!;
    console.log(
      `| \`${row.fn}\`: ${row.what} | ${fmt(s.p50, 2)} | ${fmt(s.p99, 2)} | ${fmt(s.mean, 2)} | ${fmt(exec[row.fn]!, 2)} | ${fmt(first[row.fn]!, 1)} |`,
    );
  }
  const ratio = {
    p50: initialising.p50 / restored.p50,
    mean: initialising.mean / restored.mean,
    exec: exec["primes-initialising"]! / exec["primes"]!,
  };
  console.log(
    `\nrestored is ${fmt(ratio.p50)}× faster at p50, ${fmt(ratio.mean)}× in the mean, ` +
      `${fmt(ratio.exec)}× in Fennec's execution time (goal ≥ 20×)`,
  );
  const guest = await inProcess(ROUNDS);
  console.log("\nThe guest's work alone (this thread: a fresh instance, then `_start`):\n");
  console.log("| run | p50 ms | p99 ms | mean ms |");
  console.log("|---|---|---|---|");
  for (const [what, g] of [
    ["restored from the snapshot (instantiate, restore, run)", guest.restored],
    ["initialising (instantiate, run building the table)", guest.initialising],
  ] as const)
    console.log(`| ${what} | ${fmt(g.p50, 2)} | ${fmt(g.p99, 2)} | ${fmt(g.mean, 2)} |`);
  const guestRatio = guest.initialising.p50 / guest.restored.p50;
  console.log(`\nrestored is ${fmt(guestRatio)}× faster at p50`);
  console.log(
    `load average ${loadavg()
      .map((l) => l.toFixed(1))
      .join(" ")}`,
  );
  writeResults("snapshot.json", {
    machine: machine(true),
    rounds: ROUNDS,
    first,
    stats,
    ratio,
    exec,
    guest,
    guestRatio,
  });
} finally {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await exited;
  }
  await agent.close();
  await rm(dir, { recursive: true, force: true });
}
