/**
 * Does a large upload stall other functions? Warm-call latency of `echo` (1 connection, its own
 * client process) with nothing else happening, side by side with the same load while 50 MiB
 * modules are uploaded again and again (each upload is hashed, validated, memory-capped and
 * checked, then compiled and run once). Also Fennec's resident memory before and after.
 * Usage: npm run bench:upload [-- --quick]. Writes bench/results/upload.json and prints a table.
 */
import { spawn } from "node:child_process";
import { cp, mkdtemp, readFile, rm } from "node:fs/promises";
import { writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { wagiModule } from "../test/helpers/wasm-writer.js";
import { load, type LoadResult } from "./load.js";
import { fmt, summarize } from "./stats.js";
import { fennecUrl } from "./fennec-url.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const quick = process.argv.includes("--quick");
const MIB = 2 ** 20;
const POST = { method: "POST", body: "hello fennec bench" };

async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]) / 1024;
}

async function startFennec(registry: string) {
  const child = spawn(
    process.execPath,
    [join(ROOT, "dist/src/cli/main.js"), "serve", "-r", registry, "--port", "0"],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const url = await fennecUrl(child);
  return {
    url,
    pid: child.pid!,
    stop: () => new Promise<void>((r) => (child.once("exit", () => r()), child.kill("SIGTERM"))),
  };
}

/** Uploads a module and runs it once (so it is compiled and instantiated too); returns ms. */
async function uploadAndRun(url: string, name: string, module: Uint8Array): Promise<number> {
  const t0 = performance.now();
  const up = await fetch(`${url}/f/bench/${name}`, {
    method: "PUT",
    headers: { "content-type": "application/wasm" },
    body: module as Uint8Array<ArrayBuffer>,
  });
  if (up.status !== 200) throw new Error(`upload: ${up.status} ${await up.text()}`);
  const run = await fetch(`${url}/f/bench/${name}`, { method: "POST" });
  const text = await run.text();
  // A cold start of such a module can outlast the default queue-timeout on a loaded machine:
  // counted, not fatal, since what is measured is the other function's latency meanwhile.
  if (text !== "big ok") console.error(`run of the uploaded module: ${run.status} ${text.slice(0, 300)}`);
  return performance.now() - t0;
}

async function main(): Promise<void> {
  const rounds = quick ? 1 : 3;
  const n = quick ? 1000 : 3000;
  const module = wagiModule({ output: "Content-Type: text/plain\n\nbig ok", fillerBytes: 50 * MIB });
  const scratch = await mkdtemp(join(tmpdir(), "fennec-bench-upload-"));
  const registry = join(scratch, "registry");
  await cp(join(ROOT, "examples/registry"), registry, {
    recursive: true,
    filter: (src) => !src.includes(".fennec"),
  });
  const fennec = await startFennec(registry);
  const echo = `${fennec.url}/invoke/echo/`;
  try {
    await load(echo, 1, 200, POST); // warm echo up
    const rssBefore = await rssMiB(fennec.pid);
    const idle: LoadResult[] = [];
    const busy: LoadResult[] = [];
    const uploadMs: number[] = [];
    let uploads = 0;
    for (let r = 0; r < rounds; r++) {
      console.error(`round ${r + 1}/${rounds}: echo alone, then echo while 50 MiB modules are uploaded`);
      idle.push(await load(echo, 1, n, POST));
      let loading = true;
      const uploading = (async () => {
        while (loading) uploadMs.push(await uploadAndRun(fennec.url, `big${uploads++ % 2}`, module));
      })();
      busy.push(await load(echo, 1, n, POST));
      loading = false;
      await uploading;
    }
    const rssAfter = await rssMiB(fennec.pid);
    const a = summarize(idle.flatMap((x) => x.latenciesUs));
    const b = summarize(busy.flatMap((x) => x.latenciesUs));
    const up = summarize(uploadMs);
    const result = {
      date: new Date().toISOString(),
      machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version },
      moduleMiB: module.byteLength / MIB,
      echoAlone: a,
      echoDuringUploads: b,
      uploads: { count: uploadMs.length, ms: up },
      rssMiB: { before: rssBefore, after: rssAfter },
    };
    writeFileSync(join(ROOT, "bench", "results", "upload.json"), JSON.stringify(result, null, 2) + "\n");
    console.log(`
| echo warm call, 1 connection | p50 (µs) | p99 (µs) | max (µs) |
|---|---|---|---|
| alone | ${fmt(a.p50)} | ${fmt(a.p99)} | ${fmt(Math.max(...idle.flatMap((x) => x.latenciesUs)))} |
| while ${fmt(module.byteLength / MIB)} MiB modules are uploaded and run (${uploadMs.length} uploads) | ${fmt(b.p50)} | ${fmt(b.p99)} | ${fmt(Math.max(...busy.flatMap((x) => x.latenciesUs)))} |

Upload + first run of a ${fmt(module.byteLength / MIB)} MiB module: p50 ${fmt(up.p50, 0)} ms, max ${fmt(Math.max(...uploadMs), 0)} ms.
Fennec's resident memory: ${fmt(rssBefore, 0)} MiB before, ${fmt(rssAfter, 0)} MiB after ${uploadMs.length} uploads.`);
  } finally {
    await fennec.stop();
    await rm(scratch, { recursive: true, force: true });
  }
}

await main();
