/**
 * What forwarding a call to another node costs (issue 13): wrk against node B directly, and
 * against node A whose placement sends every call of the function to B (A has no wasm sandbox in
 * its view), side by side in one run, alternating, on loopback. Both nodes are real Fennecs in
 * this process; A's view is fixed (no NATS: the hop is what is measured, not membership).
 *
 *   npm run build && node dist/bench/forward-overhead.js [--seconds 5] [--rounds 2]
 */
import { cp, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ClusterView, NodeEvent, NodeInfo } from "../src/cluster/contract.js";
import { startFennec } from "../src/main.js";
import { wrk, wrkScript, type WrkResult } from "./wrk.js";

function info(name: string, url: string, sandboxes: string[]): NodeInfo {
  return {
    name,
    incarnation: name,
    url,
    startedAt: Date.now(),
    heartbeatAt: Date.now(),
    sandboxes,
    missing: {},
    memory: { budgetMiB: 4096, reservedMiB: 0 },
    inFlight: 0,
    functions: {},
  };
}

/** A view that never changes: the two nodes. */
class FixedView implements ClusterView {
  constructor(
    readonly self: string,
    readonly list: NodeInfo[],
  ) {}
  nodes(): readonly NodeInfo[] {
    return this.list;
  }
  node(name: string): NodeInfo | undefined {
    return this.list.find((n) => n.name === name);
  }
  onChange(_listener: (event: NodeEvent) => void): () => void {
    return () => undefined;
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const arg = (name: string, fallback: string) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 ? args[i + 1]! : fallback;
  };
  const seconds = Number(arg("seconds", "5"));
  const rounds = Number(arg("rounds", "2"));
  const dir = await mkdtemp(join(tmpdir(), "fennec-forward-bench-"));
  const registry = (name: string) => join(dir, name, "registry");
  for (const n of ["a", "b"])
    await cp("examples/registry", registry(n), { recursive: true, filter: (s) => !s.includes(".fennec") });
  const b = await startFennec({
    registry: registry("b"),
    port: 0,
    logLevel: "silent",
    node: "b",
    records: false,
  });
  const view = new FixedView("a", [info("a", "http://127.0.0.1:1", []), info("b", b.url, ["wasm"])]);
  const a = await startFennec({
    registry: registry("a"),
    port: 0,
    logLevel: "silent",
    node: "a",
    records: false,
    clusterView: view,
  });
  view.list[0] = info("a", a.url, []);
  try {
    const script = await wrkScript(dir, "hello");
    const opts = { threads: 1, connections: 8, seconds };
    // Warm both paths first (B's instance, A's pool to B).
    await wrk(`${b.url}/invoke/echo`, script, { ...opts, seconds: 2 });
    await wrk(`${a.url}/invoke/echo`, script, { ...opts, seconds: 2 });
    const runs: Record<"direct" | "forwarded", WrkResult[]> = { direct: [], forwarded: [] };
    for (let r = 0; r < rounds; r++) {
      runs.direct.push(await wrk(`${b.url}/invoke/echo`, script, opts));
      runs.forwarded.push(await wrk(`${a.url}/invoke/echo`, script, opts));
    }
    const summary = (rs: WrkResult[]) => ({
      rps: rs.reduce((s, x) => s + x.rps, 0) / rs.length,
      p50: rs.reduce((s, x) => s + x.latencyUs["50"]!, 0) / rs.length,
      p99: rs.reduce((s, x) => s + x.latencyUs["99"]!, 0) / rs.length,
      errors: rs.reduce((s, x) => s + x.errors, 0),
    });
    const d = summary(runs.direct);
    const f = summary(runs.forwarded);
    console.log("| path | calls/s | p50 | p99 | errors |");
    console.log("| --- | ---: | ---: | ---: | ---: |");
    for (const [name, s] of [
      ["direct (to B)", d],
      ["forwarded (A → B)", f],
    ] as const)
      console.log(
        `| ${name} | ${Math.round(s.rps)} | ${Math.round(s.p50)} µs | ${Math.round(s.p99)} µs | ${s.errors} |`,
      );
    console.log(
      `forwarded/direct: throughput ${(f.rps / d.rps).toFixed(2)}×, p50 ${(f.p50 / d.p50).toFixed(2)}×, p99 ${(f.p99 / d.p99).toFixed(2)}×`,
    );
  } finally {
    await a.close(1000);
    await b.close(1000);
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
