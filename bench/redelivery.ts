/**
 * How long after a node dies its calls run again elsewhere (issue 13): two `fennec serve --cluster`
 * processes on a nats-server of the bench's own. Per round: node `a` alone takes a long async call
 * (`nap`, 3 s), `b` joins, `a` is SIGKILLed mid-call, and the bench polls `b` (every 20 ms) for the
 * call running again (attempt 2) and for its result. A sync call forwarded to the dying node is
 * measured too: from the SIGKILL to its `502 NODE_LOST`.
 *
 *   npm run build && node dist/bench/redelivery.js [--rounds 3] [--call-ms 3000]
 *
 * `--call-ms` is the async call's length: it must outlast `b`'s restart and the warm-up before the
 * kill (a few seconds on a loaded machine), or the call ends on `a` and never runs again.
 */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { NodeInfo } from "../src/cluster/contract.js";
import { startCluster } from "../test/helpers/cluster.js";
import { tempDir } from "../test/helpers/paths.js";
import { addWasmFunction } from "../test/helpers/server.js";

const { values } = parseArgs({
  options: { rounds: { type: "string", default: "3" }, "call-ms": { type: "string", default: "3000" } },
});
const rounds = Number(values.rounds);
const callMs = Number(values["call-ms"]);

interface CallView {
  readonly state: string;
  readonly attempt: number;
}

async function view(url: string, id: string, headers: Record<string, string>): Promise<CallView | undefined> {
  const res = await fetch(`${url}/system/calls/${id}`, { headers }).catch(() => undefined);
  if (!res?.ok) return undefined;
  return (await res.json()) as CallView;
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

const work = await tempDir("fennec-bench-redelivery-");
const registry = join(work.dir, "registry");
await mkdir(registry);
// One instance of a sleeping wasm function, so one long call holds it.
await addWasmFunction(registry, "nap", "sleep.wasm", "max-instances = 1\ntimeout = 60");
// The sync call's function: warmed on a while a is alone, so placement sends b's call there.
await addWasmFunction(registry, "hold", "sleep.wasm", "concurrent-requests = 4\ntimeout = 60");
const cluster = await startCluster({ nodes: ["a", "b"], registry });
const headers = { ...cluster.headers };
const asyncMs: number[] = [];
const asyncDoneMs: number[] = [];
const syncMs: number[] = [];
try {
  for (let round = 1; round <= rounds; round++) {
    // a alone takes the call: b is stopped while it is submitted and leased.
    await cluster.kill("b", "SIGTERM");
    await cluster.waitForMembers(["a"]);
    const submitted = await fetch(`${cluster.url("a")}/fa/default/nap?ms=${callMs}`, { method: "POST" });
    const id = submitted.headers.get("x-call-id");
    if (submitted.status !== 202 || !id) throw new Error(`submit answered ${submitted.status}`);
    await until("the call to run on a", async () =>
      (await view(cluster.url("a"), id, headers))?.state === "running" ? true : undefined,
    );
    const warm = await fetch(`${cluster.url("a")}/invoke/hold?ms=1`, { method: "POST" });
    if (warm.status !== 200) throw new Error(`warming hold on a answered ${warm.status}`);
    await cluster.restart("b");
    await cluster.waitForMembers(["a", "b"]);
    await until("b to see hold warm on a", async () => {
      const res = await fetch(`${cluster.url("b")}/system/nodes`, { headers }).catch(() => undefined);
      const nodes = res?.ok ? ((await res.json()) as NodeInfo[]) : [];
      const load = nodes.find((n) => n.name === "a")?.functions["default/hold"];
      return load && load.freeSlots > 0 ? true : undefined;
    });
    // A sync call entering at b: a holds hold's warm instance with free slots, so it is forwarded
    // there; it counts only if it was (its answer says NODE_LOST).
    const sync = fetch(`${cluster.url("b")}/invoke/hold?ms=20000`, { method: "POST" }).then(
      async (r) => ({
        status: r.status,
        node: r.headers.get("x-fennec-node"),
        text: await r.text(),
        at: Date.now(),
      }),
      () => undefined,
    );
    await new Promise((r) => setTimeout(r, 500));
    const killedAt = Date.now();
    await cluster.kill("a", "SIGKILL");
    const again = await until("the call to run again on b", async () => {
      const v = await view(cluster.url("b"), id, headers);
      return v && v.attempt >= 2 && v.state !== "queued" ? Date.now() : undefined;
    });
    const done = await until("the call's result on b", async () => {
      const v = await view(cluster.url("b"), id, headers);
      return v && v.state === "succeeded" ? Date.now() : undefined;
    });
    const s = await sync;
    asyncMs.push(again - killedAt);
    asyncDoneMs.push(done - killedAt);
    const lost = s && s.status === 502 && s.text.includes("NODE_LOST");
    if (lost) syncMs.push(s.at - killedAt);
    console.log(
      `round ${round}: async call running again on b ${again - killedAt} ms after the SIGKILL, its result ${done - killedAt} ms; ` +
        (lost
          ? `sync call forwarded to a: NODE_LOST after ${s.at - killedAt} ms`
          : `sync call: ${s?.status ?? "no answer"} from ${s?.node ?? "?"} (not forwarded to a)`),
    );
    await cluster.restart("a");
    await cluster.waitForMembers(["a", "b"]);
  }
  console.log(
    `\nmedians over ${rounds} rounds: async redelivered ${median(asyncMs)} ms, result ${median(asyncDoneMs)} ms` +
      (syncMs.length ? `; sync NODE_LOST ${median(syncMs)} ms (${syncMs.length} rounds forwarded)` : ""),
  );
} finally {
  await cluster.stop();
  await work.cleanup();
}
