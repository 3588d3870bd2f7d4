/**
 * Streaming through the hop (issue 10, Measures), one run:
 *
 * - **server-sent events**: a handler sends an event every 400 ms (hop-handlers.ts `SSE`); the
 *   time from the call to the first event as the client sees it, and to the end, on the handler
 *   runtime alone, nginx in front of it, Fennec → `[process]`, Fennec → `[oci]` runc and workerd.
 *   A hop that streams shows the first event ≈ 400 ms after the call; one that buffers, ≈ 2 s.
 * - **1 GiB download to a slow reader**: Fennec → `[process]` answers 1 GiB produced as the reader
 *   asks; the client reads at a capped rate; Fennec's resident memory growth (VmRSS sampled and
 *   VmHWM, the peak, from /proc; the peak is reset through clear_refs first).
 * - **1 GiB upload to a hashing handler**: the client streams 1 GiB (chunked) to a handler that
 *   hashes its body as it arrives; the digest is checked, Fennec's memory growth measured alike.
 *
 * Usage: npm run bench:streaming [-- --bytes 1073741824 --rate-mib 128 --no-oci --checkout DIR]
 *        (--checkout: run the Fennec built in DIR, another checkout, e.g. a branch's worktree)
 * Writes bench/results/streaming.json. Needs root (clear_refs, `[oci]`), nginx.
 */
import { createHash, randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { DOWNLOAD, HASH, SSE, SSE_EVENTS, SSE_INTERVAL_MS } from "./hop-handlers.js";
import { startNginx, startRuntime } from "./hop-backends.js";
import { startFennec, startWorkerd, waitForUrl, Servers, writeFunction, type Server } from "./servers.js";
import { machine, writeResults } from "./results.js";
import { fmt } from "./stats.js";
import { processTree } from "./wrk.js";

const { values: opts } = parseArgs({
  options: {
    bytes: { type: "string", default: String(2 ** 30) },
    "rate-mib": { type: "string", default: "128" },
    "sse-calls": { type: "string", default: "3" },
    "no-oci": { type: "boolean", default: false },
    checkout: { type: "string" },
  },
});
const BYTES = Number(opts.bytes);
const RATE = Number(opts["rate-mib"]) * 2 ** 20;
const MiB = 2 ** 20;
/** The Fennec whose build runs (its handler runtime too, as its `[process]` instances use it). */
const CHECKOUT = opts.checkout ? resolve(opts.checkout) : fileURLToPath(new URL("../../", import.meta.url));

// ---------------------------------------------------------------- memory of a process

function status(pid: number, field: "VmRSS" | "VmHWM"): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m?.[1] ?? NaN) * 1024;
}

/** Samples a process's RSS every 100 ms from now on; `stop` returns the figures in bytes. */
function watchMemory(pid: number): () => { before: number; peakSampled: number; hwm: number } {
  writeFileSync(`/proc/${pid}/clear_refs`, "5"); // resets VmHWM to the current RSS
  const before = status(pid, "VmRSS");
  let peak = before;
  const timer = setInterval(() => (peak = Math.max(peak, status(pid, "VmRSS"))), 100);
  return () => {
    clearInterval(timer);
    return { before, peakSampled: Math.max(peak, status(pid, "VmRSS")), hwm: status(pid, "VmHWM") };
  };
}

// ---------------------------------------------------------------- server-sent events

interface SseTiming {
  firstEventMs: number;
  endMs: number;
  events: number;
}

function sseCall(url: string): Promise<SseTiming> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let first = NaN;
    let text = "";
    request(url, { method: "GET", agent: false }, (res) => {
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        text += d;
        if (Number.isNaN(first) && text.includes("\n\n")) first = performance.now() - t0;
      });
      res.on("end", () =>
        res.statusCode === 200
          ? resolve({
              firstEventMs: first,
              endMs: performance.now() - t0,
              events: text.split("\n\n").length - 1,
            })
          : reject(new Error(`${url}: ${res.statusCode} ${text}`)),
      );
      res.on("error", reject);
    })
      .on("error", reject)
      .end();
  });
}

// ---------------------------------------------------------------- 1 GiB down, slowly

function slowDownload(url: string): Promise<{ bytes: number; firstByteMs: number; seconds: number }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let first = NaN;
    let bytes = 0;
    request(url, { method: "GET", agent: false }, (res) => {
      res.on("data", (c: Buffer) => {
        if (Number.isNaN(first)) first = performance.now() - t0;
        bytes += c.byteLength;
        // A reader at RATE bytes/s: stop reading whenever it is ahead of that pace.
        const ahead = bytes / RATE - (performance.now() - t0 - first) / 1000;
        if (ahead > 0.02) {
          res.pause();
          setTimeout(() => res.resume(), ahead * 1000);
        }
      });
      res.on("end", () =>
        res.statusCode === 200
          ? resolve({ bytes, firstByteMs: first, seconds: (performance.now() - t0) / 1000 })
          : reject(new Error(`${url}: ${res.statusCode}`)),
      );
      res.on("error", reject);
    })
      .on("error", reject)
      .end();
  });
}

// ---------------------------------------------------------------- 1 GiB up

async function upload(url: string): Promise<{ ok: boolean; answer: string; seconds: number }> {
  const chunk = randomBytes(64 * 1024);
  const expected = createHash("sha256");
  const t0 = performance.now();
  const answer = await new Promise<string>((resolve, reject) => {
    const req = request(
      url,
      { method: "POST", agent: false, headers: { "content-type": "application/octet-stream" } },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (text += d));
        res.on("end", () => resolve(`${res.statusCode} ${text}`));
      },
    );
    req.on("error", reject);
    let sent = 0;
    const write = () => {
      while (sent < BYTES) {
        const piece = sent + chunk.byteLength <= BYTES ? chunk : chunk.subarray(0, BYTES - sent);
        expected.update(piece);
        sent += piece.byteLength;
        if (!req.write(piece)) return void req.once("drain", write);
      }
      req.end();
    };
    write();
  });
  const digest = expected.digest("hex");
  return {
    ok: answer.startsWith("200 ") && answer.includes(digest) && answer.includes(`"bytes":${BYTES}`),
    answer: answer.slice(0, 200),
    seconds: (performance.now() - t0) / 1000,
  };
}

// ---------------------------------------------------------------- main

/** A function of one warm instance taking 8 calls at once, allowed 10 minutes (a slow 1 GiB read). */
const fn = (registry: string, name: string, source: string, table: string) =>
  writeFunction(registry, name, source, { table, concurrency: 8, top: "timeout = 600\n" });

/**
 * A Fennec of its own (its memory untouched by earlier tests) calls function `name` once to start
 * its instance, then runs `work`; returns what `work` returned and the memory of Fennec and of the
 * instance (its handler runtime) meanwhile.
 */
async function measured<T>(registry: string, name: string, work: (url: string) => Promise<T>) {
  const fennec = await startFennec(registry, [], [], CHECKOUT);
  try {
    await waitForUrl(`${fennec.url}/invoke/${name}/?bytes=1024`);
    return await measuredOn(fennec, name, () => work(`${fennec.url}/invoke/${name}/`));
  } finally {
    await fennec.stop();
  }
}

async function measuredOn<T>(fennec: Server, name: string, work: () => Promise<T>) {
  const instance = processTree(fennec.pid).find((p) => {
    try {
      const cmdline = readFileSync(`/proc/${p}/cmdline`, "utf8");
      return cmdline.includes("handler-server") && cmdline.includes(`/${name}/`);
    } catch {
      return false;
    }
  });
  const own = watchMemory(fennec.pid);
  const inst = instance ? watchMemory(instance) : undefined;
  const result = await work();
  return { result, fennec: own(), instance: inst?.() };
}

async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), "fennec-bench-streaming-"));
  const servers = new Servers();
  const start = <T extends Server>(s: Promise<T>) => servers.start(s);
  const withOci = !opts["no-oci"];
  try {
    const sse = join(work, "sse.mjs");
    await writeFile(sse, SSE);
    const registry = join(work, "registry");
    await fn(registry, "sse-process", SSE, `[process]\nhandler = "handler.mjs"`);
    if (withOci) await fn(registry, "sse-oci", SSE, `[oci]\nhandler = "handler.mjs"\nruntime = "runc"`);
    // Not isolated: the instance's own memory is not capped, so buffering shows instead of an OOM.
    await fn(registry, "download", DOWNLOAD, `[process]\nhandler = "handler.mjs"`);
    // The upload is larger than the gateway's 8 MiB default: this one function's own limit lets it in.
    await fn(
      registry,
      "hash",
      HASH,
      `max-request-body = "${BYTES + MiB}B"\n[process]\nhandler = "handler.mjs"`,
    );

    console.error("starting: the runtime alone, nginx, fennec serve, workerd");
    const runtime = await start(startRuntime(sse, join(CHECKOUT, "dist/src/runtime/handler-server.js")));
    const nginx = await start(startNginx(join(work, "nginx"), runtime.port, 1));
    const fennec = await start(startFennec(registry, [], [], CHECKOUT));
    const workerd = await start(startWorkerd(sse));

    const sseTargets: Array<[string, string]> = [
      ["handler runtime alone", runtime.url],
      ["nginx → runtime", nginx.url],
      ["Fennec → [process]", `${fennec.url}/invoke/sse-process/`],
      ...(withOci ? [["Fennec → [oci] runc", `${fennec.url}/invoke/sse-oci/`] as [string, string]] : []),
      ["workerd alone", workerd.url],
    ];
    for (const [, url] of sseTargets) await waitForUrl(url);
    const calls = Number(opts["sse-calls"]);
    const sseResults: Record<string, SseTiming[]> = {};
    for (let i = 0; i < calls; i++) {
      for (const [name, url] of sseTargets) {
        console.error(`SSE call ${i + 1}/${calls}: ${name}`);
        (sseResults[name] ??= []).push(await sseCall(url));
      }
    }

    await servers.stopAll();

    console.error(`download of ${fmt(BYTES / MiB, 0)} MiB at ${fmt(RATE / MiB, 0)} MiB/s through Fennec`);
    const down = await measured(registry, "download", (url) => slowDownload(`${url}?bytes=${BYTES}`));
    console.error(`upload of ${fmt(BYTES / MiB, 0)} MiB to a hashing handler through Fennec`);
    const up = await measured(registry, "hash", upload);

    report(sseResults, down, up);
  } finally {
    await servers.stopAll();
    await rm(work, { recursive: true, force: true });
  }
}

type Memory = { before: number; peakSampled: number; hwm: number };

function report(
  sse: Record<string, SseTiming[]>,
  down: { result: Awaited<ReturnType<typeof slowDownload>>; fennec: Memory; instance: Memory | undefined },
  up: { result: Awaited<ReturnType<typeof upload>>; fennec: Memory; instance: Memory | undefined },
): void {
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;
  const sseRows = Object.entries(sse).map(
    ([name, t]) =>
      `| ${name} | ${fmt(median(t.map((x) => x.firstEventMs)), 0)} | ${fmt(Math.max(...t.map((x) => x.firstEventMs)), 0)} | ${fmt(median(t.map((x) => x.endMs)), 0)} | ${Math.min(...t.map((x) => x.events))} |`,
  );
  const growth = (m: Memory | undefined) =>
    m
      ? `${fmt((Math.max(m.peakSampled, m.hwm) - m.before) / MiB, 0)} MiB (from ${fmt(m.before / MiB, 0)} MiB)`
      : "n/a";
  const text = `
Server-sent events: ${SSE_EVENTS} events ${SSE_INTERVAL_MS} ms apart, the first ${SSE_INTERVAL_MS} ms after the call; ${Object.values(sse)[0]?.length ?? 0} calls each, interleaved

| server (same SSE handler) | first event, median (ms) | first event, worst (ms) | last event, median (ms) | events |
|---|---|---|---|---|
${sseRows.join("\n")}

| through Fennec → [process] | result | time | Fennec RSS growth | instance RSS growth |
|---|---|---|---|---|
| ${fmt(BYTES / MiB, 0)} MiB download, client reads at ${fmt(RATE / MiB, 0)} MiB/s | ${fmt(down.result.bytes / MiB, 0)} MiB, first byte after ${fmt(down.result.firstByteMs, 0)} ms | ${fmt(down.result.seconds, 1)} s | ${growth(down.fennec)} | ${growth(down.instance)} |
| ${fmt(BYTES / MiB, 0)} MiB upload to a SHA-256 handler | ${up.result.ok ? "digest correct" : `WRONG: ${up.result.answer}`} | ${fmt(up.result.seconds, 1)} s | ${growth(up.fennec)} | ${growth(up.instance)} |

load average at the end: ${loadavg()
    .map((x) => x.toFixed(1))
    .join(" ")}
`;
  console.log(text);
  writeResults("streaming.json", {
    machine: machine(true),
    bytes: BYTES,
    readRate: RATE,
    sse,
    download: down,
    upload: up,
  });
}

void main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
