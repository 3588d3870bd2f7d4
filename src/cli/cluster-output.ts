/** How the CLI shows a cluster: `fennec nodes` and `fennec stats --cluster`. */

/** The fields of a `GET /system/nodes` entry the CLI reads (NodeInfo, src/cluster/contract.ts). */
export interface NodeRow {
  readonly name: string;
  readonly url: string;
  readonly sandboxes: readonly string[];
  readonly missing: Readonly<Record<string, string>>;
  readonly memory: { readonly budgetMiB: number; readonly reservedMiB: number };
  readonly inFlight: number;
  readonly functions: Readonly<Record<string, { readonly warm: number; readonly freeSlots: number }>>;
}

/**
 * One block per node: a line of name, address, memory and calls, then what it can run, what it
 * cannot (with why: the line a reader of a heterogeneous cluster needs), and its warm instances.
 */
export function nodeTable(rows: readonly NodeRow[]): string {
  const head = ["NODE", "ADDRESS", "MEMORY (MiB)", "IN FLIGHT", "WARM"];
  const lines = rows.map((r) => [
    r.name,
    r.url || "-",
    `${r.memory.reservedMiB}/${r.memory.budgetMiB}`,
    String(r.inFlight),
    Object.entries(r.functions)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([fn, load]) => `${fn}=${load.warm}`)
      .join(" ") || "-",
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const format = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  const out = [format(head)];
  rows.forEach((r, i) => {
    out.push(format(lines[i]!));
    out.push(`  sandboxes: ${r.sandboxes.join(" ") || "none"}`);
    for (const [name, why] of Object.entries(r.missing).sort(([a], [b]) => a.localeCompare(b)))
      out.push(`  missing ${name}: ${why}`);
  });
  return out.join("\n") + "\n";
}

type Doc = Record<string, unknown>;

const num = (v: unknown): number => (typeof v === "number" && Number.isFinite(v) ? v : 0);
const obj = (v: unknown): Doc => (typeof v === "object" && v !== null ? (v as Doc) : {});

/** A sample summary of several nodes: counts add, means are pooled, the largest maximum wins. */
interface Summary {
  count: number;
  avg: number;
  std?: number;
  max: number;
}

/**
 * Pools summaries (count, mean, population standard deviation, maximum) exactly: the pooled
 * variance is Σ nᵢ(σᵢ² + (μᵢ − μ)²) / N. Percentiles cannot be pooled from summaries, and are not.
 */
function pool(parts: readonly Summary[]): Summary | undefined {
  const some = parts.filter((p) => p.count > 0 && p.avg >= 0);
  const n = some.reduce((s, p) => s + p.count, 0);
  if (n === 0) return undefined;
  const avg = some.reduce((s, p) => s + p.count * p.avg, 0) / n;
  const withStd = some.every((p) => p.std !== undefined);
  const variance = withStd
    ? some.reduce((s, p) => s + p.count * (p.std! ** 2 + (p.avg - avg) ** 2), 0) / n
    : undefined;
  return {
    count: n,
    avg,
    ...(variance === undefined ? {} : { std: Math.sqrt(variance) }),
    max: Math.max(...some.map((p) => p.max)),
  };
}

const round3 = (x: number) => Math.round(x * 1000) / 1000;

/** Adds two maps of counters key by key (`errors`, `starts`). */
function addCounts(into: Record<string, number>, from: unknown): void {
  for (const [k, v] of Object.entries(obj(from))) into[k] = (into[k] ?? 0) + num(v);
}

/**
 * The `/stats` documents of every node added up: counters summed, the thesis' means and standard
 * deviations pooled by their counts, maxima the largest; percentiles (the thesis' 95th, the
 * per-function p50/p95/p99) cannot be added up and are left out (each node's `/stats` has them).
 * The async queue's figures of the store (`queued`, `running`, `dead`, the oldest's age) are the
 * store's, which the nodes of a cluster share: the largest any node reports, not a sum.
 */
export function addUpStats(byNode: ReadonlyMap<string, Doc>): Doc {
  const docs = [...byNode.values()];
  // The thesis' exec samples are the per-function ones (`execMs.count`) of every function.
  const execCount = (d: Doc) =>
    Object.values(obj(d["functions"])).reduce<number>((s, f) => s + num(obj(obj(f)["execMs"])["count"]), 0);
  const thesis = (prefix: string, count: (d: Doc) => number) => {
    const pooled = pool(
      docs.map((d) => ({
        count: count(d),
        avg: num(d[`${prefix}Avg`]),
        std: num(d[`${prefix}Std`]),
        max: num(d[`${prefix}Max`]),
      })),
    );
    return {
      [`${prefix}Avg`]: pooled ? Math.trunc(pooled.avg) : -1,
      [`${prefix}Std`]: pooled?.std ?? -1,
      [`${prefix}Max`]: pooled ? pooled.max : -1,
    };
  };

  const instances: Record<string, Record<string, number>> = {};
  const functions: Record<string, Doc> = {};
  const asyncCalls: Record<string, Record<string, number>> = {};
  const callbacks: Record<string, number> = {};
  const memory = { reservedMiB: 0, budgetMiB: 0 };
  for (const d of docs) {
    memory.reservedMiB += num(obj(d["memory"])["reservedMiB"]);
    memory.budgetMiB += num(obj(d["memory"])["budgetMiB"]);
    for (const [fn, counts] of Object.entries(obj(d["instances"]))) addCounts((instances[fn] ??= {}), counts);
    for (const [fn, q] of Object.entries(obj(d["asyncCalls"]))) {
      const into = (asyncCalls[fn] ??= {});
      for (const [k, v] of Object.entries(obj(q))) {
        const shared = k === "queued" || k === "running" || k === "dead" || k === "oldestQueuedAgeMs";
        into[k] = shared ? Math.max(into[k] ?? 0, num(v)) : (into[k] ?? 0) + num(v);
      }
    }
    addCounts(callbacks, d["callbacks"]);
  }
  for (const fn of new Set(docs.flatMap((d) => Object.keys(obj(d["functions"]))))) {
    const parts = docs.map((d) => obj(obj(d["functions"])[fn]));
    const errors: Record<string, number> = {};
    const starts: Record<string, number> = {};
    for (const p of parts) {
      addCounts(errors, p["errors"]);
      addCounts(starts, p["starts"]);
    }
    const timing = (key: string) => {
      const pooled = pool(
        parts.map((p) => {
          const s = obj(p[key]);
          return { count: num(s["count"]), avg: num(s["avg"]), max: num(s["max"]) };
        }),
      );
      return pooled ? { count: pooled.count, avg: round3(pooled.avg), max: pooled.max } : null;
    };
    functions[fn] = {
      invocations: parts.reduce((s, p) => s + num(p["invocations"]), 0),
      errors,
      starts,
      instancesStarted: parts.reduce((s, p) => s + num(p["instancesStarted"]), 0),
      queueWaitMs: timing("queueWaitMs"),
      initMs: timing("initMs"),
      ttfbMs: timing("ttfbMs"),
      execMs: timing("execMs"),
    };
  }
  return {
    nodes: [...byNode.keys()],
    NumbInitVms: docs.reduce((s, d) => s + num(d["NumbInitVms"]), 0),
    ...thesis("VmInitTimeNano", (d) => num(d["NumbInitVms"])),
    ...thesis("FuncExecTimeNano", execCount),
    memory,
    instances,
    functions,
    asyncCalls,
    callbacks,
  };
}
