/**
 * The wasm instance figures of `npm run bench` (instance-bench.ts: cold start, instances created per
 * second, idle memory per warm instance), for this build and optionally another checkout's build
 * (`compare`) side by side: rounds alternate between the builds, each a fresh process, so load on
 * this shared machine hits both alike; figures are medians over rounds, with ratios to this build.
 */
import { fork, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { message } from "./load.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));

export interface InstanceFigures {
  anotherInstanceMs: { p50: number; p99: number };
  coldWithSpareMs: { p50: number; p99: number };
  coldBurstMs: { p50: number; p99: number };
  firstInvokeMs: { p50: number; p99: number };
  instancesPerSecond: number;
  idleMiBPerInstance: number;
}

/** The headline figures compared between builds (issue 11's "no worse than today"). */
export const HEADLINE = {
  coldP50Ms: (i: InstanceFigures) => i.coldWithSpareMs.p50,
  coldP99Ms: (i: InstanceFigures) => i.coldWithSpareMs.p99,
  anotherInstanceP50Ms: (i: InstanceFigures) => i.anotherInstanceMs.p50,
  firstInvokeP50Ms: (i: InstanceFigures) => i.firstInvokeMs.p50,
  instancesPerSecond: (i: InstanceFigures) => i.instancesPerSecond,
  idleMiBPerInstance: (i: InstanceFigures) => i.idleMiBPerInstance,
} as const;
export type Headline = keyof typeof HEADLINE;

export interface BuildInstances {
  /** The checkout whose `dist/bench/instance-bench.js` ran. */
  readonly checkout: string;
  readonly rounds: InstanceFigures[];
  /** Each headline figure, the median over rounds. */
  readonly medians: Record<Headline, number>;
}

/** The instance benchmark's process while it runs, stopped too on a signal. */
let child: ChildProcess | undefined;
export const stopInstanceBench = (): void => void child?.kill("SIGKILL");

/** One run of `checkout`'s instance benchmark with `samples` samples per figure. */
async function once(checkout: string, samples: number): Promise<InstanceFigures> {
  child = fork(join(checkout, "dist/bench/instance-bench.js"), [String(samples)], {
    execArgv: ["--expose-gc"],
    // FENNEC_RUN_DIR and the rest as this process has them.
    env: process.env,
  });
  try {
    return await message<InstanceFigures>(child);
  } finally {
    child = undefined;
  }
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

const medians = (rounds: readonly InstanceFigures[]) =>
  Object.fromEntries(Object.entries(HEADLINE).map(([k, f]) => [k, median(rounds.map(f))])) as Record<
    Headline,
    number
  >;

/** This build's figures (first) and `compare`'s, `rounds` rounds each, alternating. */
export async function measureInstances(o: {
  readonly rounds: number;
  readonly samples: number;
  readonly compare?: string;
}): Promise<BuildInstances[]> {
  const checkouts = [ROOT, ...(o.compare ? [o.compare] : [])];
  const runs = checkouts.map(() => [] as InstanceFigures[]);
  for (let round = 0; round < o.rounds; round++) {
    // Alternate which build goes first, so neither always runs right after the other.
    const order = round % 2 ? [...checkouts.keys()].reverse() : [...checkouts.keys()];
    for (const k of order) {
      console.error(`wasm instance measurements, round ${round + 1}/${o.rounds}: ${checkouts[k]}`);
      runs[k]!.push(await once(checkouts[k]!, o.samples));
    }
  }
  return checkouts.map((checkout, k) => ({ checkout, rounds: runs[k]!, medians: medians(runs[k]!) }));
}

const LABEL: Record<Headline, [string, number]> = {
  coldP50Ms: ["cold start p50: load + instantiate in an idle executor (ms)", 3],
  coldP99Ms: ["cold start p99 (ms)", 3],
  anotherInstanceP50Ms: ["another instance of a loaded revision, p50 (ms)", 3],
  firstInvokeP50Ms: ["first invocation on a new instance, p50 (ms)", 3],
  instancesPerSecond: ["instances created per second (burst of 50)", 0],
  idleMiBPerInstance: ["idle memory per warm instance (MiB)", 3],
};

/** This build's medians beside the other build's, with their ratio (this ÷ other), as markdown. */
export function instancesCompareTable(builds: readonly BuildInstances[]): string {
  const [self, other] = builds;
  if (!self || !other) return "";
  const head = `| wasm instance figure (median of ${self.rounds.length} rounds) | this build | ${other.checkout} | this ÷ other | per round, this build | per round, other |`;
  const lines = (Object.keys(LABEL) as Headline[]).map((k) => {
    const [label, d] = LABEL[k];
    const per = (b: BuildInstances) => b.rounds.map((r) => HEADLINE[k](r).toFixed(d)).join(" / ");
    return `| ${label} | ${self.medians[k].toFixed(d)} | ${other.medians[k].toFixed(d)} | ${(self.medians[k] / other.medians[k]).toFixed(2)}× | ${per(self)} | ${per(other)} |`;
  });
  return `\n${head}\n|---|---|---|---|---|---|\n${lines.join("\n")}\n`;
}
