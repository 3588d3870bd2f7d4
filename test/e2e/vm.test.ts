import assert from "node:assert/strict";
import { execFile, execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, rm, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import { chooseAccel } from "../../src/sandbox/drivers/vm/accel.js";
import { channels, type LogLineEvent } from "../../src/core/events.js";
import { TRUNCATED_MARKER } from "../../src/sandbox/call-log.js";
import { VmDriver } from "../../src/sandbox/drivers/vm/driver.js";
import { ensureRunRoot } from "../../src/sandbox/run-dir.js";
import { recordGoneOwner } from "../helpers/owner-record.js";
import { request } from "../helpers/http.js";
import { CLI, copyExamples, ROOT, tempDir } from "../helpers/paths.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { waitFor } from "../helpers/wait.js";

const run = promisify(execFile);

// Needs qemu-system-x86 and the guest kernel of guest/linux/build.sh (.ci/run installs and builds
// both). Guests run under TCG on this host kind.
const UNIKERNELS = join(ROOT, "test", "fixtures", "unikernel");

/** Adds a `[vm]` function to a registry. */
async function addVm(
  registry: string,
  name: string,
  toml: string,
  files: Record<string, string> = {},
  keepalive = 30,
) {
  const dir = join(registry, name);
  await mkdir(dir, { recursive: true });
  for (const [file, from] of Object.entries(files)) await writeFile(join(dir, file), await readFile(from));
  await writeFile(join(dir, "function.toml"), `keepalive = ${keepalive}\nconcurrent-requests = 1\n${toml}`);
  return dir;
}

/** QEMU processes whose command line mentions `needle` (to prove none is left behind). */
function qemusWith(needle: string): number[] {
  const out = execFileSync("ps", ["-eo", "pid=,args="], { encoding: "utf8" });
  return out
    .split("\n")
    .filter((l) => l.includes("qemu-system") && l.includes(needle))
    .map((l) => Number.parseInt(l.trim(), 10));
}

const statsOf = async (url: string) =>
  (await request(`${url}/stats`)).json<{
    backends: { vm: { accel: string; reason: string } };
    functions: Record<string, { starts: Record<string, number> }>;
  }>();

describe("VM examples through the gateway", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({ startTimeoutMs: 60_000 });
  });
  after(() => s.close());

  for (const [name, text] of [
    ["hello-unikernel", /hello/i],
    ["hello-microvm", /hello from Fennec \(a QEMU microVM\), vm!/],
    ["hello-qemu", /hello from Fennec \(a QEMU pc virtual machine\), vm!/],
  ] as const) {
    it(`serves ${name} cold, then warm`, async () => {
      const cold = await request(`${s.url}/invoke/${name}/?name=vm`);
      assert.equal(cold.status, 200, cold.text);
      assert.match(cold.text, text);
      assert.equal(cold.headers.get("x-fennec-start"), "cold");
      const warm = await request(`${s.url}/invoke/${name}/?name=vm`);
      assert.equal(warm.headers.get("x-fennec-start"), "warm");
      assert.match(warm.text, text);
      // The warm instance's QEMU runs under its seccomp sandbox (mode 2: a filter).
      const pids = qemusWith(join(s.registry, name));
      assert.ok(pids.length > 0, `a QEMU runs ${name}`);
      for (const pid of pids) {
        const status = await readFile(`/proc/${pid}/status`, "utf8");
        assert.match(status, /^Seccomp:\s*2$/m, `QEMU ${pid} has a seccomp filter`);
      }
    });
  }

  it("computes fib in the unikernel", async () => {
    const res = await request(`${s.url}/invoke/hello-unikernel/fib?n=25`);
    assert.equal(res.status, 200, res.text);
    assert.match(res.text, /fib\(25\) = 75025/);
  });

  it("says in /stats which accelerator runs the guests, and why", async () => {
    const stats = await statsOf(s.url);
    assert.ok(["kvm", "tcg"].includes(stats.backends.vm.accel));
    assert.ok(stats.backends.vm.reason.length > 0);
  });
});

describe("VM snapshots (SnapFaaS)", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({ startTimeoutMs: 60_000 });
    await addVm(
      s.registry,
      "snap-uk",
      `single-use = true\n[vm]\nkernel = "echo.elf"\nmemory = 16\nsnapshot = true\nhypervisor = { type = "microvm" }\n`,
      { "echo.elf": join(UNIKERNELS, "echo.elf") },
    );
    await addVm(
      s.registry,
      "snap-uk-pc",
      `single-use = true\n[vm]\nkernel = "echo.elf"\nmemory = 16\nsnapshot = true\nhypervisor = { type = "qemu", disk-type = "block" }\n`,
      { "echo.elf": join(UNIKERNELS, "echo.elf") },
    );
  });
  after(() => s.close());

  it("restores on a pc machine too", async () => {
    const first = await request(`${s.url}/invoke/snap-uk-pc/`, { method: "POST", body: "pc" });
    assert.equal(first.status, 200, first.text);
    let restored: string | null = null;
    for (let i = 0; i < 600 && restored !== "restored"; i++) {
      await new Promise((r) => setTimeout(r, 100));
      const res = await request(`${s.url}/invoke/snap-uk-pc/`, { method: "POST", body: `pc${i}` });
      assert.equal(res.text, `pc${i}`);
      restored = res.headers.get("x-fennec-start");
    }
    assert.equal(restored, "restored");
  });

  const snapshotDir = () => join(s.root, "cache", "vm-snapshots", "default+snap-uk");
  async function waitForSnapshot(): Promise<string> {
    for (let i = 0; i < 600; i++) {
      const keys = await readdir(snapshotDir()).catch(() => [] as string[]);
      const done = keys.find((k) => existsSync(join(snapshotDir(), k, "meta.json")));
      if (done) return join(snapshotDir(), done);
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error("no snapshot was written");
  }

  it("boots the first instance, writes a snapshot, restores later ones from it", async () => {
    const first = await request(`${s.url}/invoke/snap-uk/`, { method: "POST", body: "one" });
    assert.equal(first.status, 200, first.text);
    assert.equal(first.headers.get("x-fennec-start"), "cold");
    await waitForSnapshot();
    // single-use: every call gets a new instance, now restored instead of booted.
    const second = await request(`${s.url}/invoke/snap-uk/`, { method: "POST", body: "two" });
    assert.equal(second.status, 200, second.text);
    assert.equal(second.text, "two");
    assert.equal(second.headers.get("x-fennec-start"), "restored");
    const stats = await statsOf(s.url);
    assert.ok((stats.functions["default/snap-uk"]?.starts["restored"] ?? 0) >= 1);
  });

  it("falls back to booting when the snapshot is corrupt, and writes a new one", async () => {
    const snap = await waitForSnapshot();
    await truncate(join(snap, "state"), 100);
    const res = await request(`${s.url}/invoke/snap-uk/`, { method: "POST", body: "three" });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.text, "three");
    assert.equal(res.headers.get("x-fennec-start"), "cold");
    await waitForSnapshot();
    const again = await request(`${s.url}/invoke/snap-uk/`, { method: "POST", body: "four" });
    assert.equal(again.headers.get("x-fennec-start"), "restored");
  });

  it("never restores a snapshot of older artefacts", async () => {
    const old = await waitForSnapshot();
    // A new kernel image (same bytes, new stamp) is a new snapshot key.
    const elf = join(s.registry, "snap-uk", "echo.elf");
    await writeFile(elf, await readFile(elf));
    await new Promise((r) => setTimeout(r, 300)); // the scheduler re-reads a config at most every 250 ms
    const res = await request(`${s.url}/invoke/snap-uk/`, { method: "POST", body: "five" });
    assert.equal(res.headers.get("x-fennec-start"), "cold");
    let fresh = old;
    for (let i = 0; i < 600 && fresh === old; i++) {
      await new Promise((r) => setTimeout(r, 100));
      fresh = await waitForSnapshot();
    }
    assert.notEqual(fresh, old);
    assert.equal(existsSync(old), false, "the snapshot of the older artefacts is removed");
  });
});

describe("VM bad input", () => {
  let s: TestServer;
  before(async () => {
    // Long enough for a guest that boots on a busy machine; uk-noready waits it out.
    s = await startTestServer({ startTimeoutMs: 20_000 });
    const fx = (n: string) => ({ [`${n}.elf`]: join(UNIKERNELS, `${n}.elf`) });
    const uk = (kernel: string) =>
      `[vm]\nkernel = "${kernel}"\nmemory = 16\nhypervisor = { type = "microvm" }\n`;
    await addVm(s.registry, "uk-panic", uk("fail.elf"), fx("fail"));
    await addVm(s.registry, "uk-noready", uk("noready.elf"), fx("noready"));
    await addVm(s.registry, "uk-hang", `timeout = 1\n${uk("hang.elf")}`, fx("hang"));
    await addVm(s.registry, "not-bootable", uk("kernel.txt"), { "kernel.txt": join(ROOT, "README.md") });
    await addVm(s.registry, "no-kernel", uk("missing.elf"));
  });
  after(() => s.close());

  it("a guest panic is the function's crash, with what the guest said", async () => {
    const res = await request(`${s.url}/invoke/uk-panic/`);
    assert.equal(res.status, 502, res.text);
    assert.equal(res.headers.get("x-fennec-error"), "FN_CRASHED");
    assert.match(res.text, /panic/);
  });

  it("a guest that never becomes ready times out and its QEMU is killed", async () => {
    const res = await request(`${s.url}/invoke/uk-noready/`);
    assert.equal(res.headers.get("x-fennec-error"), "FN_INIT_TIMEOUT", res.text);
    await waitFor("its QEMU to end", () => qemusWith(join(s.registry, "uk-noready")).length === 0).catch(
      () => undefined,
    );
    assert.deepEqual(qemusWith(join(s.registry, "uk-noready")), []);
  });

  it("a runaway guest is stopped at the function's timeout", async () => {
    const res = await request(`${s.url}/invoke/uk-hang/`);
    assert.equal(res.headers.get("x-fennec-error"), "FN_TIMEOUT", res.text);
    await waitFor("its QEMU to end", () => qemusWith(join(s.registry, "uk-hang")).length === 0).catch(
      () => undefined,
    );
    assert.deepEqual(qemusWith(join(s.registry, "uk-hang")), []);
  });

  it("a kernel QEMU cannot boot is a bad artefact", async () => {
    const res = await request(`${s.url}/invoke/not-bootable/`);
    assert.equal(res.headers.get("x-fennec-error"), "FN_BAD_MODULE", res.text);
  });

  it("a missing kernel is a config error naming the key", async () => {
    const res = await request(`${s.url}/invoke/no-kernel/`);
    assert.equal(res.status, 500, res.text);
    assert.match(res.text, /vm\.kernel/);
  });

  it("keeps serving other functions meanwhile", async () => {
    const res = await request(`${s.url}/invoke/hello/`);
    assert.equal(res.status, 200);
  });
});

describe("VM bad input: a Linux guest", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({ startTimeoutMs: 60_000 });
    await addVm(
      s.registry,
      "linux-dies",
      `queue-timeout = 60\n[vm]\ncommand = ["${process.execPath}", "server.mjs", "fail"]\nmemory = 256\nhypervisor = { type = "microvm" }\n`,
      { "server.mjs": join(ROOT, "test", "fixtures", "process", "server.mjs") },
    );
  });
  after(() => s.close());

  it("whose function dies mid-request is the function's crash, with the guest's console", async () => {
    const res = await request(`${s.url}/invoke/linux-dies/`, { method: "POST", body: "x" });
    assert.equal(res.headers.get("x-fennec-error"), "FN_CRASHED", res.text);
    assert.match(res.text, /exit/);
  });
});

describe("function logs of a Linux [vm] guest", () => {
  const token = "vm-logs-token";
  let s: TestServer;
  interface Line {
    instance: string;
    stream: string;
    text: string;
    callId?: string;
  }
  const logs = async (query: string): Promise<Line[]> => {
    const reply = await request(`${s.url}/system/logs?${query}`, {
      headers: { authorization: `Bearer ${token}` },
    });
    assert.equal(reply.status, 200, reply.text);
    return reply.text
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => JSON.parse(l) as Line);
  };
  before(async () => {
    s = await startTestServer({ token, startTimeoutMs: 60_000 });
    await addVm(
      s.registry,
      "vmlog",
      `queue-timeout = 60\n[vm]\ncommand = ["${process.execPath}", "server.mjs", "log"]\nmemory = 256\nhypervisor = { type = "microvm" }\n`,
      { "server.mjs": join(ROOT, "test", "fixtures", "process", "server.mjs") },
    );
    // The drop case's own function: a fresh instance, whose output after its one call is its alone,
    // kept while the host stalls and catches up (longer than the usual 30 s idle on a busy host).
    await addVm(
      s.registry,
      "vmdrop",
      `queue-timeout = 60\n[vm]\ncommand = ["${process.execPath}", "server.mjs", "log"]\nmemory = 256\nhypervisor = { type = "microvm" }\n`,
      { "server.mjs": join(ROOT, "test", "fixtures", "process", "server.mjs") },
      300,
    );
  });
  after(() => s.close());

  it("keeps what the guest's function writes to stdout and stderr as lines of its call", async () => {
    for (const body of ["delta", "echo"]) {
      const r = await request(`${s.url}/invoke/vmlog`, { method: "POST", body });
      assert.equal(r.status, 200, r.text);
      assert.equal(r.text, body);
      const id = r.headers.get("x-call-id")!;
      // Waited for by function, not by call: a line attributed to no call (or another) must show.
      const lines = await waitFor(`the log lines of ${body}`, async () => {
        const mine = (await logs("function=vmlog")).filter((m) => m.text.endsWith(`: ${body}`));
        return mine.length >= 2 ? mine : undefined;
      });
      assert.deepEqual(lines.map((m) => [m.stream, m.text, m.callId]).sort(), [
        ["stderr", `stderr: ${body}`, id],
        ["stdout", `stdout: ${body}`, id],
      ]);
    }
    // The serial console keeps the kernel's and the agent's own messages, not the function's.
    const [{ instance }] = (await logs("function=vmlog&limit=1")) as [Line];
    const consoleLog = await readFile(join(await ensureRunRoot("vm"), instance, "console.log"), "utf8");
    assert.match(consoleLog, /fennec-agent\[[\d.]+\]: ready/);
    assert.doesNotMatch(consoleLog, /stdout: delta|stderr: delta/);
  });

  it("bounds a call that floods its output, and the guest keeps serving", async () => {
    // 1000 lines of 101 bytes: 64 KiB of them are kept, then the marker.
    const big = await request(`${s.url}/invoke/vmlog?lines=1000`, { method: "POST", body: "big" });
    assert.equal(big.status, 200, big.text);
    const idBig = big.headers.get("x-call-id")!;
    const kept = await waitFor("the flood's marker", async () => {
      const l = await logs(`call=${idBig}&limit=10000`);
      return l.at(-1)?.text === TRUNCATED_MARKER ? l : undefined;
    });
    assert.ok(kept.length > 600 && kept.length < 700, `${kept.length} lines kept`);
    assert.equal(kept.filter((m) => m.text === TRUNCATED_MARKER).length, 1);
    // 2 MB in one call, more than the agent queues for the host: the call is answered (it does
    // not wait for its log), keeps 64 KiB, and the guest serves the next call.
    const flood = await request(`${s.url}/invoke/vmlog?lines=20000`, { method: "POST", body: "flood" });
    assert.equal(flood.status, 200, flood.text);
    assert.equal(flood.text, "flood");
    const idFlood = flood.headers.get("x-call-id")!;
    const flooded = await waitFor("the flood's marker", async () => {
      const l = await logs(`call=${idFlood}&limit=10000`);
      return l.at(-1)?.text === TRUNCATED_MARKER ? l : undefined;
    });
    assert.ok(flooded.length > 600 && flooded.length < 700, `${flooded.length} lines kept`);
    const next = await request(`${s.url}/invoke/vmlog`, { method: "POST", body: "after-flood" });
    assert.equal(next.status, 200, next.text);
    assert.equal(next.text, "after-flood");
  });

  it("drops what the host cannot take, says how much as soon as it can, and the function never waits", async (t) => {
    const total = 24 * 1024 * 1024;
    let delivered = 0;
    let dropped = 0;
    const markerCalls: Array<string | undefined> = [];
    let stalled = false;
    const onLine = (message: unknown): void => {
      const line = message as LogLineEvent;
      if (line.function !== "default/vmdrop") return;
      const marker =
        /^\[fennec-agent: (\d+) bytes of stderr dropped: the channel to the host was full\]$/.exec(line.text);
      if (marker) {
        dropped += Number(marker[1]);
        markerCalls.push(line.callId);
      } else if (/^y+$/.test(line.text)) delivered += line.text.length + 1;
      else return;
      if (stalled) return;
      // The host stops reading the channel for a while (this test runs Fennec in its process),
      // as a busy host would: the guest's queue fills while the function goes on writing.
      stalled = true;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10_000);
    };
    channels.log.subscribe(onLine);
    try {
      // The output starts 8 s after the answer: after the idle connection has been closed (by
      // Fennec at 4 s, by the function's server at 5 s), so nothing but the agent's own loop is
      // left to send the drop marker once the host has caught up. The old agent left it queued
      // until the next call woke it (then it counted as that call's line), or lost it with the VM.
      const r = await request(`${s.url}/invoke/vmdrop?later=24&after=8000`, {
        method: "POST",
        body: "later",
      });
      assert.equal(r.status, 200, r.text);
      // Everything the function wrote is either delivered or counted as dropped (a marker may
      // cut a line short, ending it with a newline of its own), with no other call to help.
      await waitFor(
        "all of the output, delivered or counted as dropped",
        () => (delivered + dropped >= total - 1024 ? true : undefined),
        { timeoutMs: 120_000 },
      ).catch((err: Error) => {
        throw new Error(`${err.message} (${dropped} bytes dropped, ${delivered} delivered)`);
      });
      t.diagnostic(`${dropped} bytes dropped, ${delivered} delivered`);
      assert.ok(dropped > 0, `${dropped} bytes dropped, ${delivered} delivered`);
      assert.ok(delivered + dropped <= total + 1024, `${dropped} bytes dropped, ${delivered} delivered`);
      // Written after the call ended: the markers belong to no call.
      assert.deepEqual(new Set(markerCalls), new Set([undefined]));
      // The guest serves on, and the next call's log is its own two lines.
      const next = await request(`${s.url}/invoke/vmdrop`, { method: "POST", body: "after-drop" });
      assert.equal(next.text, "after-drop");
      const id = next.headers.get("x-call-id")!;
      const mine = await waitFor("the next call's lines", async () => {
        const l = await logs(`call=${id}`);
        return l.length >= 2 ? l : undefined;
      });
      assert.deepEqual(mine.map((m) => m.text).sort(), ["stderr: after-drop", "stdout: after-drop"]);
      assert.deepEqual(new Set(markerCalls), new Set([undefined]), "no marker is taken for the next call's");
    } finally {
      channels.log.unsubscribe(onLine);
    }
  });
});

describe("fennec build for VMs", () => {
  it("packs each [vm] handler's root (and disk image) ahead of time, and checks a unikernel's image", async () => {
    const { dir, cleanup } = await tempDir("fennec-vmbuild-");
    try {
      const registry = await copyExamples(dir);
      const { stdout } = await run(process.execPath, [
        CLI,
        "build",
        "-r",
        registry,
        "hello-microvm",
        "hello-qemu",
        "hello-unikernel",
      ]);
      assert.match(stdout, /ok {5}default\/hello-microvm: vm root filesystem .* \(microvm, ext4 image\)/);
      assert.match(stdout, /ok {5}default\/hello-qemu: vm root filesystem .* \(qemu, 9p\)/);
      assert.match(stdout, /ok {5}default\/hello-unikernel: vm: kernel .*hello\.elf \(a unikernel\) found/);
      const work = join(registry, "hello-microvm", ".fennec", "vm", "default+hello-microvm");
      const roots = await readdir(join(work, "roots"));
      assert.equal(roots.filter((r) => r.endsWith(".ext4")).length, 1, roots.join(" "));
      // A new revision gets a new root beside the old one (a 9p guest may still run on it); the
      // one before the previous is removed.
      for (const n of [1, 2]) {
        await writeFile(
          join(registry, "hello-microvm", "handler.ts"),
          `${await readFile(join(registry, "hello-microvm", "handler.ts"), "utf8")}\n// revision ${n}\n`,
        );
        await run(process.execPath, [CLI, "build", "-r", registry, "hello-microvm"]);
      }
      const after = await readdir(join(work, "roots"), { withFileTypes: true });
      assert.equal(after.filter((e) => e.isDirectory()).length, 2, after.map((e) => e.name).join(" "));
      assert.equal(after.filter((e) => e.name.endsWith(".ext4")).length, 2);
      const conf = await readFile(join(work, "guest.conf"), "utf8");
      assert.match(conf, /^argv=.*node$/m);
      assert.match(conf, /^socket=\/run\/fennec\/http\.sock$/m);
    } finally {
      await cleanup();
    }
  });
});

describe("VM driver housekeeping", () => {
  it("names the package when QEMU is not installed", async () => {
    const saved = process.env["PATH"];
    process.env["PATH"] = "/nonexistent";
    try {
      const driver = new VmDriver();
      const { testConfig } = await import("../helpers/config.js");
      await assert.rejects(
        driver.prepare(
          testConfig({
            sandbox: {
              kind: "vm",
              kernel: join(UNIKERNELS, "echo.elf"),
              image: undefined,
              memoryMiB: 16,
              cpus: 1,
              cmdline: "",
              hypervisor: { type: "microvm" },
              handler: undefined,
              command: undefined,
              env: {},
              transport: "channel",
              snapshot: false,
            },
          }),
        ),
        /qemu-system-x86_64 is not installed: apt-get install qemu-system-x86/,
      );
    } finally {
      process.env["PATH"] = saved;
    }
  });

  it("at start, ends the QEMU a crashed Fennec left and removes its run directory", async () => {
    const dir = join(await ensureRunRoot("vm"), `stale-${process.pid}`);
    await mkdir(dir);
    const qemu = spawn(
      "qemu-system-x86_64",
      ["-M", "microvm", "-accel", "tcg", "-nodefaults", "-display", "none", "-S", "-m", "16"],
      { detached: true, stdio: "ignore" },
    );
    // A Fennec that is gone (a process that has exited) left this QEMU running.
    await recordGoneOwner(dir, qemu.pid);
    const exited = new Promise((r) => qemu.once("exit", r));
    await new VmDriver().cleanupStale();
    await exited;
    assert.equal(existsSync(dir), false);
  });

  it("chooses TCG on a PVM host and KVM with a hardware module", async () => {
    const { dir, cleanup } = await tempDir();
    try {
      await mkdir(join(dir, "pvm", "kvm_pvm"), { recursive: true });
      await mkdir(join(dir, "hw", "kvm_intel"), { recursive: true });
      assert.equal(chooseAccel("auto", join(dir, "pvm")).accel, "tcg");
      assert.equal(chooseAccel("tcg", join(dir, "hw")).accel, "tcg");
      let kvmUsable = true;
      try {
        execFileSync("test", ["-r", "/dev/kvm", "-a", "-w", "/dev/kvm"]);
      } catch {
        kvmUsable = false;
      }
      assert.equal(chooseAccel("auto", join(dir, "hw")).accel, kvmUsable ? "kvm" : "tcg");
    } finally {
      await cleanup();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
