/**
 * Reads a V8 `.cpuprofile` (`node --cpu-prof`) and prints where the time went after its first
 * `--skip` seconds (start-up is not the warm path): self time and inclusive time per function,
 * as a share of the samples kept and as µs per request when `--requests N` is given.
 * Usage: node dist/bench/cpu-profile.js FILE.cpuprofile [--skip 5] [--top 40] [--requests N]
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    skip: { type: "string", default: "0" },
    top: { type: "string", default: "40" },
    requests: { type: "string" },
  },
});
const profile = JSON.parse(readFileSync(positionals[0]!, "utf8")) as Profile;
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const name = (n: ProfileNode) =>
  `${n.callFrame.functionName || "(anonymous)"} ${n.callFrame.url.split("/").slice(-2).join("/")}:${n.callFrame.lineNumber + 1}`;

const skipUs = Number(opts.skip) * 1e6;
const self = new Map<string, number>();
const inclusive = new Map<string, number>();
let elapsed = 0;
let kept = 0;
for (const [i, id] of profile.samples.entries()) {
  const dt = profile.timeDeltas[i] ?? 0;
  elapsed += dt;
  if (elapsed < skipUs) continue;
  kept += dt;
  const leaf = byId.get(id)!;
  self.set(name(leaf), (self.get(name(leaf)) ?? 0) + dt);
  const seen = new Set<string>();
  for (let n: number | undefined = id; n !== undefined; n = parent.get(n)) {
    const k = name(byId.get(n)!);
    if (seen.has(k)) continue; // recursion counts once
    seen.add(k);
    inclusive.set(k, (inclusive.get(k) ?? 0) + dt);
  }
}
const busy = kept - (self.get("(idle) :0") ?? 0);
const requests = opts.requests ? Number(opts.requests) : undefined;
const row = ([k, us]: [string, number]) =>
  `${((us / kept) * 100).toFixed(1).padStart(5)} %${requests ? `${(us / requests).toFixed(1).padStart(8)} µs/req` : ""}  ${k}`;
const top = Number(opts.top);
console.log(`${(kept / 1e6).toFixed(2)} s of samples kept, ${((busy / kept) * 100).toFixed(0)} % not idle`);
console.log("--- self");
for (const e of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(row(e));
console.log("--- inclusive");
for (const e of [...inclusive].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(row(e));
