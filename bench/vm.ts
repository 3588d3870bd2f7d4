/**
 * VM sandboxes side by side, in one run: boot to ready for Fennec's unikernel, the Linux microVM
 * (ext4 root) and the Linux pc VM (9p root); restore to ready from a snapshot (SnapFaaS) and the
 * boot/restore ratio; idle memory per VM (QEMU's RSS and PSS: restored clones share the snapshot's
 * pages); warm invoke latency next to the same handler as a plain process, so the VM's own cost
 * (channel, virtio or UART, guest kernel) shows as a difference.
 *
 *   npm run bench:vm [-- SAMPLES]      (needs qemu-system-x86 and `fennec build --guest-kernel`;
 *                                        FENNEC_VM_ACCEL=kvm|tcg forces the accelerator)
 *
 * Results: bench/results/vm.json and a boot/restore chart, docs/img/vm-start.svg.
 */
import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { FunctionConfig } from "../src/config/function-config.js";
import type { SandboxDriver, SandboxHandle } from "../src/sandbox/contract.js";
import { sandboxKinds } from "../src/sandbox/drivers/index.js";
import { ProcessDriver } from "../src/sandbox/drivers/process/driver.js";
import { VmDriver } from "../src/sandbox/drivers/vm/driver.js";
import { runRoot } from "../src/sandbox/run-dir.js";
import { drain, request } from "./empty-call.js";
import { cdfChart } from "./plot.js";
import { fmt, summarize } from "./stats.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const EXAMPLES = join(ROOT, "examples", "registry");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function example(name: string, edit: (toml: string) => string = (t) => t): FunctionConfig {
  const dir = join(EXAMPLES, name);
  const file = join(dir, "function.toml");
  return sandboxKinds.loader.load({ user: "default", name }, dir, file, edit(readFileSync(file, "utf8")));
}

/** Readiness callbacks of out-of-process instances (the process baseline calls back over HTTP). */
const waiting = new Map<string, () => void>();
const callbacks = createServer((req, res) => {
  waiting.get((req.url ?? "").replace(/^\/ready\//, ""))?.();
  res.writeHead(200, { connection: "close" }).end("ok");
});

async function start(
  driver: SandboxDriver,
  config: FunctionConfig,
): Promise<{ handle: SandboxHandle; id: string }> {
  const id = randomUUID();
  const called = new Promise<void>((resolve) => waiting.set(id, resolve));
  const port = (callbacks.address() as AddressInfo).port;
  try {
    const handle = await driver.start({
      instanceId: id,
      config,
      callbackUrl: `http://127.0.0.1:${port}/ready/${id}`,
      waitForCallback: () => called,
      signal: AbortSignal.timeout(120_000),
    });
    return { handle, id };
  } finally {
    waiting.delete(id);
  }
}

/** RSS and PSS of an instance's QEMU, in MiB, from its run directory's owner record. */
async function memoryOf(id: string): Promise<{ rss: number; pss: number }> {
  const owner = JSON.parse(await readFile(join(runRoot("vm"), id, "owner.json"), "utf8")) as {
    childPid: number;
  };
  const rollup = await readFile(`/proc/${owner.childPid}/smaps_rollup`, "utf8");
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(rollup)?.[1] ?? NaN);
  return { rss: kb("Rss") / 1024, pss: kb("Pss") / 1024 };
}

interface Variant {
  readonly label: string;
  readonly config: FunctionConfig;
  readonly samples: number;
}

async function main(): Promise<void> {
  const samples = Number(process.argv[2] ?? 8);
  callbacks.listen(0, "127.0.0.1");
  await once(callbacks, "listening");
  const scratch = await mkdtemp(join(tmpdir(), "fennec-bench-vm-"));
  // FENNEC_VM_ACCEL=kvm|tcg forces an accelerator (to compare both where KVM works); default auto.
  const accel = process.env["FENNEC_VM_ACCEL"] ?? "auto";
  if (accel !== "auto" && accel !== "kvm" && accel !== "tcg")
    throw new Error("FENNEC_VM_ACCEL: auto, kvm or tcg");
  const vm = new VmDriver({ snapshotDir: join(scratch, "snapshots"), accel });
  const noSnapshot = (t: string) => t.replace(/snapshot = true\n/, "");
  const withSnapshot = (t: string) =>
    t.includes("snapshot = true") ? t : t.replace(/\[vm\]\n/, "[vm]\nsnapshot = true\n");
  const variants: Variant[] = [
    { label: "unikernel (microvm)", config: example("hello-unikernel"), samples: samples * 4 },
    { label: "Linux microvm, ext4 root", config: example("hello-microvm", noSnapshot), samples },
    { label: "Linux pc, 9p root", config: example("hello-qemu"), samples },
  ];
  const restoring: Variant[] = [
    {
      label: "unikernel (microvm), restored",
      config: example("hello-unikernel", withSnapshot),
      samples: samples * 4,
    },
    { label: "Linux microvm, restored", config: example("hello-microvm", withSnapshot), samples },
  ];
  process.stderr.write(`accelerator: ${vm.accel.accel} (${vm.accel.reason})\n`);
  await vm.cleanupStale(); // QEMUs an interrupted earlier run left

  const results: Record<string, unknown> = { accel: vm.accel, samples };
  const starts: Record<string, number[]> = {};
  const idle: Record<string, { rss: number; pss: number }> = {};
  const warm: Record<string, number[]> = {};

  for (const v of [...variants, ...restoring]) {
    await vm.prepare(v.config);
    if (v.config.sandbox.kind === "vm" && v.config.sandbox.snapshot) {
      // The first start boots and has the snapshot written in the background; wait for it.
      const first = await start(vm, v.config);
      await first.handle.destroy();
      await vm.close();
    }
    const times: number[] = [];
    for (let i = 0; i < v.samples; i++) {
      const t0 = performance.now();
      const { handle, id } = await start(vm, v.config);
      times.push(performance.now() - t0);
      if (i === 0) {
        await sleep(1000);
        idle[v.label] = await memoryOf(id);
        const lat: number[] = [];
        for (let j = 0; j < 200; j++) {
          const t1 = performance.now();
          await handle.invoke(request(), { signal: AbortSignal.timeout(10_000) }).then(drain);
          lat.push(performance.now() - t1);
        }
        warm[v.label] = lat;
      }
      await handle.destroy();
      process.stderr.write(`${v.label}: start ${i + 1}/${v.samples} ${fmt(times.at(-1)!)} ms\n`);
    }
    starts[v.label] = times;
  }

  // Three restored clones at once: how much of their memory they share.
  const clones = await Promise.all([0, 1, 2].map(() => start(vm, restoring[1]!.config)));
  await sleep(1000);
  const cloneMemory = await Promise.all(clones.map((c) => memoryOf(c.id)));
  await Promise.all(clones.map((c) => c.handle.destroy()));

  // The same handler as a plain process: the floor the VM's warm path is compared with.
  const proc = new ProcessDriver();
  const processConfig = example("hello-process");
  await proc.prepare?.(processConfig);
  const p = await start(proc, processConfig);
  const procLat: number[] = [];
  for (let j = 0; j < 200; j++) {
    const t1 = performance.now();
    await p.handle.invoke(request(), { signal: AbortSignal.timeout(10_000) }).then(drain);
    procLat.push(performance.now() - t1);
  }
  await p.handle.destroy();
  warm["process (same handler)"] = procLat;

  const rows: string[] = [
    "| variant | start to ready p50 (ms) | p99 | idle RSS (MiB) | idle PSS (MiB) | warm p50 (µs) | warm p99 (µs) |",
    "|---|---|---|---|---|---|---|",
  ];
  for (const label of Object.keys(starts)) {
    const s = summarize(starts[label]!);
    const w = summarize(warm[label]!);
    rows.push(
      `| ${label} | ${fmt(s.p50)} | ${fmt(s.p99)} | ${fmt(idle[label]!.rss)} | ${fmt(idle[label]!.pss)} | ${fmt(w.p50 * 1000, 0)} | ${fmt(w.p99 * 1000, 0)} |`,
    );
  }
  const pw = summarize(procLat);
  rows.push(
    `| process (same handler) | — | — | — | — | ${fmt(pw.p50 * 1000, 0)} | ${fmt(pw.p99 * 1000, 0)} |`,
  );
  const ratio = (boot: string, restored: string) =>
    summarize(starts[boot]!).p50 / summarize(starts[restored]!).p50;
  const ratios = {
    unikernel: ratio("unikernel (microvm)", "unikernel (microvm), restored"),
    linuxMicrovm: ratio("Linux microvm, ext4 root", "Linux microvm, restored"),
  };
  const lines = [
    `accelerator: ${vm.accel.accel} (${vm.accel.reason})`,
    "",
    ...rows,
    "",
    `boot/restore ratio (p50): unikernel ${fmt(ratios.unikernel)}×, Linux microvm ${fmt(ratios.linuxMicrovm)}× (goal ≥ 5×)`,
    `three restored Linux clones at once: PSS ${cloneMemory.map((m) => fmt(m.pss)).join(", ")} MiB (RSS ${cloneMemory.map((m) => fmt(m.rss)).join(", ")})`,
    `warm overhead over the same handler as a process (p50): Linux microvm +${fmt((summarize(warm["Linux microvm, ext4 root"]!).p50 - pw.p50) * 1000, 0)} µs, pc +${fmt((summarize(warm["Linux pc, 9p root"]!).p50 - pw.p50) * 1000, 0)} µs`,
  ];
  process.stdout.write(`${lines.join("\n")}\n`);
  Object.assign(results, {
    starts,
    idle,
    warm: Object.fromEntries(Object.entries(warm).map(([k, v]) => [k, summarize(v)])),
    ratios,
    cloneMemory,
  });
  const out = join(ROOT, "bench", "results");
  await writeFile(join(out, "vm.json"), JSON.stringify(results, null, 2));
  const palette = ["#1b6ca8", "#e07b00", "#2a9d3f", "#9b59b6", "#c0392b"];
  await writeFile(
    join(ROOT, "docs", "img", "vm-start.svg"),
    cdfChart(
      `VM start to ready (${vm.accel.accel.toUpperCase()})`,
      "milliseconds",
      Object.entries(starts).map(([label, values], i) => ({
        label,
        colour: palette[i % palette.length]!,
        values: [...values].sort((a, b) => a - b),
      })),
      1,
    ),
  );
  await vm.close();
  callbacks.close();
  await rm(scratch, { recursive: true, force: true });
}

await main();
