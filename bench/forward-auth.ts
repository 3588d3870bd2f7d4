/**
 * What signing a forwarded call costs (issue 13, cluster authentication): the forwarding node's
 * `ForwardAuth.sign` and the receiving node's `check` (HMAC-SHA256, constant-time compare, the
 * replay memory), per call, against the same loop without them (the fields a forwarded call
 * carries are built either way), side by side in one process, rounds alternating.
 *
 *   npm run build && node dist/bench/forward-auth.js [--calls 200000] [--rounds 5]
 */
import { createHash, randomBytes } from "node:crypto";
import { loadavg } from "node:os";
import { ForwardAuth, type ForwardFields } from "../src/cluster/forward-auth.js";

const args = process.argv.slice(2);
const arg = (name: string, fallback: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : fallback;
};
const calls = Number(arg("calls", "200000"));
const rounds = Number(arg("rounds", "5"));

const key = randomBytes(32);
/** The fields of call `i`: a call id and a request id of their own, as real calls have. */
function fields(i: number): ForwardFields {
  const n = i.toString(16).padStart(12, "0");
  return {
    from: "node-a",
    to: "node-b",
    callId: `0190f0a0-0000-7000-8000-${n}`,
    requestId: `6c1f8a52-1f0e-4d3b-9a57-${n}`,
    placement: "home",
    method: "POST",
    url: "/invoke/echo/some/path?q=1",
  };
}

let sink = 0;
/** Nanoseconds since `t0`. */
const since = (t0: bigint) => Number(process.hrtime.bigint() - t0);
type Variant = "unsigned" | "sha256 (reference)" | "sign" | "verify" | "sign+verify";
/** Each runs `calls` calls from call number `from` and returns the nanoseconds they took. */
const run: Record<Variant, (from: number) => number> = {
  unsigned(from) {
    const t0 = process.hrtime.bigint();
    for (let i = from; i < from + calls; i++) sink += fields(i).callId.length;
    return since(t0);
  },
  // One SHA-256 of the bytes a signature covers: the yardstick of this machine's load at the time.
  "sha256 (reference)"(from) {
    const t0 = process.hrtime.bigint();
    for (let i = from; i < from + calls; i++) {
      const f = fields(i);
      sink += createHash("sha256")
        .update(`${f.from}\n${f.to}\n${f.callId}\n${f.requestId}\n${f.placement}\n${f.method}\n${f.url}`)
        .digest().length;
    }
    return since(t0);
  },
  sign(from) {
    const signer = new ForwardAuth(key);
    const t0 = process.hrtime.bigint();
    for (let i = from; i < from + calls; i++) sink += signer.sign(fields(i)).length;
    return since(t0);
  },
  verify(from) {
    // Signed beforehand, untimed: the receiving node's side alone.
    const signer = new ForwardAuth(key);
    const signed = Array.from({ length: calls }, (_, k) => signer.sign(fields(from + k)));
    const receiver = new ForwardAuth(key);
    const t0 = process.hrtime.bigint();
    for (let k = 0; k < calls; k++)
      if (receiver.check(fields(from + k), signed[k]) !== undefined) throw new Error("refused");
    return since(t0);
  },
  "sign+verify"(from) {
    const signer = new ForwardAuth(key);
    const receiver = new ForwardAuth(key);
    const t0 = process.hrtime.bigint();
    for (let i = from; i < from + calls; i++) {
      const f = fields(i);
      if (receiver.check(f, signer.sign(f)) !== undefined) throw new Error("refused");
    }
    return since(t0);
  },
};

const variants = Object.keys(run) as Variant[];
const totals: Record<Variant, number> = {
  unsigned: 0,
  "sha256 (reference)": 0,
  sign: 0,
  verify: 0,
  "sign+verify": 0,
};
const load = loadavg()[0]!;
let next = 0;
for (const v of variants) run[v]((next += calls)); // warm-up, not counted
for (let r = 0; r < rounds; r++) for (const v of variants) totals[v] += run[v]((next += calls));
const perCall = (v: Variant) => totals[v] / (rounds * calls);
console.log(
  `${rounds} rounds × ${calls} calls, load average ${load.toFixed(2)} → ${loadavg()[0]!.toFixed(2)}`,
);
console.log("| per forwarded call | ns | calls/s on one core |");
console.log("| --- | ---: | ---: |");
for (const v of variants)
  console.log(`| ${v} | ${Math.round(perCall(v))} | ${Math.round(1e9 / perCall(v)).toLocaleString("en")} |`);
const cost = perCall("sign+verify") - perCall("unsigned");
console.log(
  `signing + checking adds ${(cost / 1000).toFixed(2)} µs per forwarded call (sign+verify − unsigned; checksum ${sink % 10})`,
);
