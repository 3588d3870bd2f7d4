import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { readFile, stat } from "node:fs/promises";
import { createServer as createHttpServer } from "node:http";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { FennecError, toFennecError } from "../../../core/errors.js";
import { createLogger, type Logger } from "../../../core/log.js";
import type { InvokeRequest, InvokeResponse } from "../../../core/types.js";
import type { FunctionConfig, VmSandboxConfig } from "../../../config/function-config.js";
import type {
  CleanupReport,
  InvokeContext,
  SandboxDriver,
  SandboxHandle,
  StartContext,
} from "../../contract.js";
import { GuestChannel } from "../../guest-channel.js";
import { HandlerBundles } from "../../handler-build.js";
import { findExecutable } from "../../host-view.js";
import { terminate } from "../../terminate.js";
import { HttpTransport, type Endpoint } from "../../http-transport.js";
import { PerRevision } from "../../per-revision.js";
import { createRunDir, recordOwner, removeRunDir, sweepStale } from "../../run-dir.js";
import { chooseAccel, type AccelChoice, type AccelPreference } from "./accel.js";
import {
  buildGuestRoot,
  cacheDir,
  guestKernel,
  ipNetworkParams,
  stampsOf,
  type GuestRoot,
} from "./linux-guest.js";
import { QmpClient } from "./qmp.js";
import { qemuArgs, substituteCmdline, USER_NET, type GuestKind, type QemuPlan } from "./qemu-args.js";
import { snapshotKey, SnapshotStore, type Snapshot } from "./snapshots.js";
import { findFirecracker, FirecrackerVm } from "./firecracker.js";
import { TapPool, type TapLease } from "./taps.js";

const run = promisify(execFile);
const QEMU = "qemu-system-x86_64";
const QEMU_PACKAGE = "qemu-system-x86";
/** Where a UniFaaS guest serves, and where its callback arrives on the tap's host side (as UniFaaS). */
const GUEST_PORT = 8080;
const TAP_CALLBACK_PORT = 3000;
const NETNS_BRIDGE = fileURLToPath(new URL("./netns-bridge.js", import.meta.url));
/** QEMU's own memory next to the guest's: ≈ 44 MB measured for a TCG guest, plus its code cache. */
const QEMU_OVERHEAD_MIB = 64;
const CLOSE_GRACE_MS = 3000;
const TAIL = 4096;
/** Kernel parameters of Fennec's Linux guest: console on the serial port, any crash ends QEMU. */
const LINUX_BASE_CMDLINE = "console=ttyS0 reboot=t panic=-1 quiet";

function vmOf(config: FunctionConfig): VmSandboxConfig {
  if (config.sandbox.kind !== "vm") throw new FennecError("INTERNAL", `${config.key} is not a vm function`);
  return config.sandbox;
}

export interface VmDriverOptions {
  /** `auto` (default): KVM where it works, TCG otherwise. */
  readonly accel?: AccelPreference;
  /** Where snapshots are kept (default `<cache>/vm-snapshots`). */
  readonly snapshotDir?: string;
  /** Tap mode: the range the /30s come from (default 10.100.0.0/16, as UniFaaS). */
  readonly tapRange?: string;
  /** Tap mode: the network namespace the taps and QEMU live in (default: Fennec's own). */
  readonly netns?: string;
  readonly log?: Logger;
}

/** A guest's tap network: its lease, where Fennec reaches it, its callback, its release. */
interface TapNetwork {
  readonly lease: TapLease;
  readonly endpoint: Endpoint;
  readonly called: Promise<void>;
  readonly release: () => Promise<void>;
  readonly placeholders: { ip: string; gateway: string; netmask: string; callback: string };
}

/** What one function boots: decided once per revision. */
interface Artefacts {
  readonly guest: GuestKind;
  readonly kernel: string;
  readonly initrd: string | undefined;
  readonly root: QemuPlan["root"];
  /** The command line before placeholders are substituted. */
  readonly cmdline: string;
  /** Everything a snapshot of this guest depends on. */
  readonly snapshotKey: string;
}

/**
 * `[vm]`: functions as QEMU virtual machines (`microvm` or `pc`), under KVM where it works and
 * TCG otherwise. Three kinds of guest: Fennec's Linux guest running a handler or command from a
 * root filesystem Fennec packs; a unikernel (a kernel and no image); a UniFaaS kernel and image.
 * Fennec reaches the guest through its channel (virtio-serial or the UART, docs/guest-channel.md),
 * or through QEMU's user-mode network (the guest serves on 8080 and calls `%callback`). With
 * `snapshot = true` instances are restored from a snapshot of a booted, ready guest (SnapFaaS).
 */
export class VmDriver implements SandboxDriver {
  readonly name = "vm";
  readonly capabilities = { memoryLimit: true, snapshot: true, outOfProcess: true } as const;
  readonly #options: VmDriverOptions;
  readonly #log: Logger;
  readonly #bundles = new HandlerBundles();
  readonly #artefacts = new PerRevision<Artefacts>();
  /** Snapshots being written, by function and key: a start never waits for one. */
  readonly #snapshotting = new Map<string, Promise<void>>();
  readonly #unsnapshottable = new Set<string>();
  readonly #store: SnapshotStore;
  #accel: AccelChoice | undefined;
  #taps: Promise<TapPool> | undefined;

  constructor(options: VmDriverOptions = {}) {
    this.#options = options;
    this.#log = options.log ?? createLogger("silent");
    this.#store = new SnapshotStore(options.snapshotDir ?? join(cacheDir(), "vm-snapshots"));
  }

  /** Which accelerator runs the guests, and why (logged once, shown in /stats). */
  get accel(): AccelChoice {
    if (!this.#accel) {
      this.#accel = chooseAccel(this.#options.accel ?? "auto");
      this.#log.info(`vm: guests run under ${this.#accel.accel.toUpperCase()}`, {
        reason: this.#accel.reason,
      });
    }
    return this.#accel;
  }

  memoryMiB(config: FunctionConfig): number {
    return vmOf(config).memoryMiB + QEMU_OVERHEAD_MIB;
  }

  async prepare(config: FunctionConfig): Promise<void> {
    const vm = vmOf(config);
    if (vm.hypervisor.type === "firecracker") return;
    findExecutable(QEMU, QEMU_PACKAGE);
    // Builds the guest's root (and disk image) ahead of time. The snapshot waits for the first
    // start, as SnapFaaS takes it: a function that is never called never boots a template.
    await this.#artefactsOf(config);
  }

  /**
   * `fennec build`: packs a handler or command function's root (and disk image) without needing
   * QEMU or the guest kernel, which may be built later; returns what is still missing to boot it.
   */
  async packRoot(config: FunctionConfig): Promise<{ missing: string | undefined }> {
    const vm = vmOf(config);
    if (vm.handler || vm.command) await this.#packGuestRoot(config, vm);
    try {
      if (vm.handler || vm.command) guestKernel();
      if (vm.hypervisor.type !== "firecracker") findExecutable(QEMU, QEMU_PACKAGE);
      return { missing: undefined };
    } catch (err) {
      return { missing: toFennecError(err).message };
    }
  }

  /**
   * Kills the process group of a QEMU or Firecracker an earlier, crashed Fennec left (only that very
   * process: the PID and start time its owner record names) and removes its run directory. Taps are
   * swept by their own records when the tap pool opens (taps.ts).
   */
  cleanupStale(): Promise<CleanupReport> {
    return sweepStale("vm");
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.#snapshotting.values());
    const taps = this.#taps;
    this.#taps = undefined;
    await taps?.then((p) => p.close()).catch(() => undefined);
  }

  #artefactsOf(config: FunctionConfig): Promise<Artefacts> {
    return this.#artefacts.get(config, () => this.#resolveArtefacts(config));
  }

  /** A handler or command function's root (and disk image), its handler bundled first. */
  async #packGuestRoot(config: FunctionConfig, vm: VmSandboxConfig): Promise<GuestRoot> {
    const bundle = vm.handler ? await this.#bundles.get(config, vm.handler) : undefined;
    return buildGuestRoot(config, vm, bundle);
  }

  async #resolveArtefacts(config: FunctionConfig): Promise<Artefacts> {
    const vm = vmOf(config);
    const common = [
      vm.cmdline,
      String(vm.memoryMiB),
      String(vm.cpus),
      JSON.stringify(vm.hypervisor),
      this.accel.accel,
      await qemuVersion(),
    ];
    if (vm.handler || vm.command) {
      const { kernel, initramfs } = guestKernel();
      const root = await this.#packGuestRoot(config, vm);
      const fennecRoot = root.image ? "fennec.root=blk:/dev/vda" : "fennec.root=9p:fnroot";
      // Without the channel the agent only runs the function, which serves on the guest's network.
      const port = vm.transport === "channel" ? "" : "fennec.port=none";
      // issue10-unifaas: on an IP network, the callback the agent hands the program, and eth0's address.
      const network = ipNetworkParams(vm);
      const clock =
        this.accel.accel === "tcg" && vm.hypervisor.type !== "firecracker" ? await tcgClockParams() : "";
      return {
        guest: "fennec-linux",
        kernel,
        initrd: initramfs,
        root: root.image ? { image: root.image, writable: false } : { dir: root.rootfs.dir },
        cmdline: `${LINUX_BASE_CMDLINE} ${clock} ${fennecRoot} ${port} ${network} ${vm.cmdline}`
          .replace(/ +/g, " ")
          .trim(),
        snapshotKey: snapshotKey([...common, await stampsOf([kernel, initramfs]), root.rootfs.digest]),
      };
    }
    const kernel = vm.kernel!;
    const guest: GuestKind = vm.image ? "image" : "unikernel";
    const diskType = vm.hypervisor["disk-type"];
    return {
      guest,
      kernel,
      initrd: undefined,
      root: !vm.image
        ? undefined
        : diskType === "9p"
          ? { dir: vm.image }
          : { image: vm.image, writable: false },
      cmdline: vm.cmdline,
      snapshotKey: snapshotKey([...common, await stampsOf([kernel, vm.image])]),
    };
  }

  async start(ctx: StartContext): Promise<SandboxHandle> {
    const vm = vmOf(ctx.config);
    if (vm.hypervisor.type === "firecracker") return this.#startFirecracker(ctx);
    const qemu = findExecutable(QEMU, QEMU_PACKAGE);
    const art = await this.#artefactsOf(ctx.config);
    if (vm.snapshot && vm.transport === "channel") {
      const found = await this.#store.find(ctx.config.key, art.snapshotKey);
      if (found.snapshot) {
        try {
          return await this.#launch(ctx, qemu, art, { restoreFrom: found.snapshot });
        } catch (err) {
          if (ctx.signal.aborted) throw err;
          this.#log.warn(`${ctx.config.key}: snapshot could not be restored; booting instead`, {
            snapshot: found.snapshot.dir,
            error: toFennecError(err).message,
          });
          await this.#store.discard(found.snapshot);
        }
      } else if (found.older) {
        this.#log.info(`${ctx.config.key}: snapshot is of older artefacts; booting and taking a new one`);
      }
      this.#ensureSnapshot(ctx.config, art);
    }
    return this.#launch(ctx, qemu, art, {});
  }

  /** Writes this function's snapshot in the background unless it exists or is being written. */
  #ensureSnapshot(config: FunctionConfig, art: Artefacts): void {
    const id = `${config.key}@${art.snapshotKey}`;
    // One attempt per key: a guest that cannot be snapshotted is not booted again and again.
    if (this.#snapshotting.has(id) || this.#unsnapshottable.has(id)) return;
    const job = (async () => {
      if ((await this.#store.find(config.key, art.snapshotKey)).snapshot) return;
      await this.#takeSnapshot(config, art);
    })()
      .catch((err: unknown) => {
        this.#unsnapshottable.add(id);
        this.#log.warn(`${config.key}: could not take a snapshot; instances will boot`, {
          error: toFennecError(err).message,
        });
      })
      .finally(() => this.#snapshotting.delete(id));
    this.#snapshotting.set(id, job);
  }

  /**
   * Boots a template guest with its RAM in a shared file, waits until it is ready, writes its
   * device state (a migration without RAM: `x-ignore-shared`) and stops it. Clones map the RAM
   * file privately, so they share its pages until they write them.
   */
  async #takeSnapshot(config: FunctionConfig, art: Artefacts): Promise<void> {
    const snap = await this.#store.begin(config.key, art.snapshotKey);
    const controller = new AbortController();
    const timer = setTimeout(
      () => controller.abort(new FennecError("FN_INIT_TIMEOUT", "snapshot template not ready in 60 s")),
      60_000,
    );
    const began = performance.now();
    let handle: VmInstance | undefined;
    try {
      handle = await this.#launch(
        {
          instanceId: `snap-${randomBytes(4).toString("hex")}`,
          config,
          callbackUrl: "ignore",
          waitForCallback: () => Promise.reject(new Error("a snapshot template has no callback")),
          signal: controller.signal,
        },
        findExecutable(QEMU, QEMU_PACKAGE),
        art,
        { snapshotInto: snap },
      );
      const bootMs = performance.now() - began;
      const saved = performance.now();
      await handle.saveSnapshot(snap.state, controller.signal);
      await this.#store.commit(snap, {
        key: art.snapshotKey,
        function: config.key,
        createdAt: new Date().toISOString(),
        bootMs: Math.round(bootMs),
        saveMs: Math.round(performance.now() - saved),
      });
      this.#log.info(`${config.key}: snapshot written`, { dir: snap.dir, bootMs: Math.round(bootMs) });
    } catch (err) {
      await this.#store.discard(snap);
      throw err;
    } finally {
      clearTimeout(timer);
      await handle?.destroy();
    }
  }

  #tapPool(): Promise<TapPool> {
    this.#taps ??= TapPool.open({
      ...(this.#options.tapRange ? { range: this.#options.tapRange } : {}),
      ...(this.#options.netns ? { netns: this.#options.netns } : {}),
    });
    this.#taps.catch(() => (this.#taps = undefined));
    return this.#taps;
  }

  /**
   * The UniFaaS tap mode: a tap and its /30 for the guest, the guest's callback answered on the
   * tap's host address (where the guest can reach it) and invocations sent to the guest's 8080.
   * In a network namespace a bridge process inside it relays both through Unix sockets.
   */
  async #tapNetwork(ctx: StartContext, dir: string, what: string): Promise<TapNetwork> {
    const pool = await this.#tapPool();
    const lease = await pool.lease();
    const toRelease: Array<() => unknown> = [() => pool.release(lease)];
    const release = async () => {
      for (const r of toRelease.splice(0).reverse()) await Promise.resolve(r()).catch(() => undefined);
    };
    try {
      let called!: () => void;
      const calledBack = new Promise<void>((resolve) => (called = resolve));
      // The listener is this tap's alone, so whatever calls it is this instance's guest calling back.
      const callbacks = createHttpServer((_req, res) => {
        res.writeHead(200, { connection: "close" }).end("ok");
        called();
      });
      toRelease.push(() => callbacks.close());
      const guestSock = join(dir, "guest.sock");
      const callbackSock = join(dir, "callback.sock");
      let endpoint: Endpoint;
      if (lease.netns) {
        callbacks.listen(callbackSock);
        await once(callbacks, "listening");
        const bridge = spawn(
          findExecutable("ip", "iproute2"),
          [
            "netns",
            "exec",
            lease.netns,
            process.execPath,
            NETNS_BRIDGE,
            `tcp:${lease.hostAddress}:${TAP_CALLBACK_PORT}=unix:${callbackSock}`,
            `unix:${guestSock}=tcp:${lease.guestAddress}:${GUEST_PORT}`,
          ],
          { stdio: ["pipe", "pipe", "pipe"] },
        );
        toRelease.push(() => bridge.kill("SIGKILL"));
        const [line] = (await Promise.race([
          once(bridge.stdout!, "data"),
          once(bridge, "exit").then(() => {
            throw new FennecError("SANDBOX_START_FAILED", `${what}: the namespace bridge did not start`);
          }),
        ])) as [Buffer];
        if (!line.toString().includes("ready"))
          throw new FennecError(
            "SANDBOX_START_FAILED",
            `${what}: the namespace bridge said ${line.toString()}`,
          );
        endpoint = { socketPath: guestSock };
      } else {
        callbacks.listen(TAP_CALLBACK_PORT, lease.hostAddress);
        await once(callbacks, "listening");
        endpoint = { host: lease.guestAddress, port: GUEST_PORT };
      }
      const path = new URL(ctx.callbackUrl, "http://x").pathname;
      return {
        lease,
        endpoint,
        called: calledBack,
        release,
        placeholders: {
          ip: lease.guestAddress,
          gateway: lease.hostAddress,
          netmask: lease.netmask,
          callback: `http://${lease.hostAddress}:${TAP_CALLBACK_PORT}${path}`,
        },
      };
    } catch (err) {
      await release();
      throw err;
    }
  }

  /**
   * A Firecracker microVM, as UniFaaS runs them: kernel, root drive (copied per instance with
   * `copy-rootfs`), a tap with its /30 and the callback on the tap's host side, configured through
   * Firecracker's API (firecracker.ts). No Firecracker binary exists on Fennec's CI machines, so
   * this path is tested against a fake that checks the documented API, not with a real guest.
   */
  async #startFirecracker(ctx: StartContext): Promise<SandboxHandle> {
    const vm = vmOf(ctx.config);
    findFirecracker();
    const art = await this.#artefactsOf(ctx.config);
    const image = art.root && "image" in art.root ? art.root.image : undefined;
    const dir = await createRunDir("vm", ctx.instanceId);
    const what = `${ctx.config.key}: instance ${ctx.instanceId} (firecracker)`;
    let net: TapNetwork | undefined;
    let fc: FirecrackerVm | undefined;
    const release = async () => {
      await fc?.kill().catch(() => undefined);
      await net?.release();
      await removeRunDir(dir);
    };
    try {
      net = await this.#tapNetwork(ctx, dir, what);
      fc = await FirecrackerVm.start({
        id: ctx.instanceId.replace(/[^A-Za-z0-9-]/g, "-").slice(0, 64),
        runDir: dir,
        vcpus: vm.cpus,
        memoryMiB: vm.memoryMiB,
        kernel: art.kernel,
        bootArgs: substituteCmdline(art.cmdline, net.placeholders),
        ...(art.initrd ? { initrd: art.initrd } : {}),
        ...(image ? { rootfs: { path: image, copy: vm.hypervisor["copy-rootfs"] !== false } } : {}),
        tap: { name: net.lease.tap, mac: net.lease.mac },
        ...(net.lease.netns ? { netns: net.lease.netns } : {}),
        signal: ctx.signal,
      });
      if (fc.pid !== undefined) await recordOwner(dir, fc.pid);
      const vmm = fc;
      const exited = vmm.exited.then((e) => {
        throw new FennecError(
          "FN_CRASHED",
          `${what}: Firecracker exited (${e.code ?? e.signal}) before the guest called back: ${vmm.output.trim().slice(-500)}`,
        );
      });
      const aborted = rejectOnAbort(ctx.signal);
      await Promise.race([net.called, exited, aborted]);
      return new FirecrackerInstance(vmm, new HttpTransport(net.endpoint, what), what, release);
    } catch (err) {
      await release();
      throw err;
    }
  }

  /** Starts one QEMU: a boot, a restore from a snapshot, or a template to snapshot. */
  async #launch(
    ctx: StartContext,
    qemu: string,
    art: Artefacts,
    mode: { restoreFrom?: Snapshot; snapshotInto?: Snapshot },
  ): Promise<VmInstance> {
    const vm = vmOf(ctx.config);
    const dir = await createRunDir("vm", ctx.instanceId);
    const what = `${ctx.config.key}: instance ${ctx.instanceId} (${vm.hypervisor.type}, ${this.accel.accel})`;
    const channelSocket = vm.transport === "channel" ? join(dir, "channel.sock") : undefined;
    let listener: Server | undefined;
    let connection: Promise<Socket> | undefined;
    if (channelSocket) {
      // Listen before QEMU starts: it connects as a client, so nothing the guest writes is lost.
      listener = createServer();
      connection = once(listener, "connection").then(([s]) => s as Socket);
      listener.listen(channelSocket);
      await once(listener, "listening");
    }
    let userNet: QemuPlan["userNet"];
    let net: TapNetwork | undefined;
    /** What the instance releases when it stops, beyond QEMU and its run directory. */
    const cleanup: Array<() => unknown> = [];
    let append = art.cmdline;
    if (vm.transport === "user") {
      const callback = new URL(ctx.callbackUrl);
      userNet = { hostPort: await freePort(), callbackPort: Number(callback.port || 80) };
      append = substituteCmdline(art.cmdline, {
        ip: USER_NET.ip,
        gateway: USER_NET.gateway,
        netmask: USER_NET.netmask,
        callback: `http://${USER_NET.callbackHost}:${USER_NET.callbackPort}${callback.pathname}`,
      });
    } else if (vm.transport === "tap") {
      net = await this.#tapNetwork(ctx, dir, what).catch(async (err: unknown) => {
        await removeRunDir(dir); // no instance owns it yet
        throw err;
      });
      cleanup.push(() => net!.release());
      append = substituteCmdline(art.cmdline, net.placeholders);
    }
    const snapshot = mode.restoreFrom ?? mode.snapshotInto;
    const plan: QemuPlan = {
      vm,
      guest: art.guest,
      accel: this.accel.accel,
      kernel: art.kernel,
      initrd: art.initrd,
      append,
      root: art.root,
      qmpSocket: join(dir, "qmp.sock"),
      channelSocket,
      consoleLog: join(dir, "console.log"),
      userNet,
      tap: net ? { name: net.lease.tap, mac: net.lease.mac } : undefined,
      ramFile: snapshot ? { path: snapshot.ram, share: mode.snapshotInto !== undefined } : undefined,
      incoming: mode.restoreFrom !== undefined,
    };
    // A tap in a network namespace is opened from inside it: QEMU runs there (`ip` execs it).
    const argv = net?.lease.netns
      ? [findExecutable("ip", "iproute2"), "netns", "exec", net.lease.netns, qemu, ...qemuArgs(plan)]
      : [qemu, ...qemuArgs(plan)];
    const child = spawn(argv[0]!, argv.slice(1), {
      cwd: dir,
      detached: true, // its own process group, so a crashed Fennec's QEMU can be found and ended
      stdio: ["ignore", "pipe", "pipe"],
    });
    const instance = new VmInstance({
      child,
      dir,
      what,
      listener,
      consoleLog: plan.consoleLog,
      qmpSocket: plan.qmpSocket,
      restored: mode.restoreFrom !== undefined,
      cleanup,
    });
    try {
      if (child.pid !== undefined) await recordOwner(dir, child.pid);
      const exited = new Promise<never>((_, reject) => {
        child.once("error", (err) =>
          reject(new FennecError("SANDBOX_START_FAILED", `${what}: cannot run ${qemu}: ${err.message}`)),
        );
        instance.onExit((err) => reject(err));
      });
      const aborted = rejectOnAbort(ctx.signal);
      const ready = (async () => {
        if (connection) {
          const channel = new GuestChannel(await connection, what);
          instance.attachChannel(channel);
          if (mode.restoreFrom) {
            await instance.restore(mode.restoreFrom.state, ctx.signal);
            await channel.ping(ctx.signal);
          } else await channel.ready;
        } else if (net) {
          instance.attachTransport(new HttpTransport(net.endpoint, what));
          await net.called;
        } else {
          instance.attachTransport(new HttpTransport({ host: "127.0.0.1", port: userNet!.hostPort }, what));
          await ctx.waitForCallback();
        }
      })();
      await Promise.race([ready, exited, aborted]);
      return instance;
    } catch (err) {
      const error = await instance.startError(err);
      await instance.destroy();
      throw error;
    }
  }
}

/**
 * Under TCG the guest's TSC is the host's, but the kernel's calibration of it against the emulated
 * PIT is a timing measurement that fails on a loaded host; the guest then marks its TSC unstable
 * and hangs early in boot, waiting for a tick (seen in about one boot in three with two guests
 * booting at once on two cores). Telling it the frequency skips the calibration.
 */
async function tcgClockParams(): Promise<string> {
  const cpuinfo = await readFile("/proc/cpuinfo", "utf8").catch(() => "");
  const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(cpuinfo)?.[1]);
  return Number.isFinite(mhz) && mhz > 0 ? `tsc_early_khz=${Math.round(mhz * 1000)} tsc=reliable` : "";
}

/** Rejects with the signal's reason once it aborts (at once if it already has). */
function rejectOnAbort(signal: AbortSignal): Promise<never> {
  return new Promise<never>((_, reject) => {
    if (signal.aborted) reject(signal.reason);
    signal.addEventListener("abort", () => reject(signal.reason), { once: true });
  });
}

async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const port = (server.address() as { port: number }).port;
  await new Promise((r) => server.close(r));
  return port;
}

let versionCache: Promise<string> | undefined;
/** QEMU's version: a snapshot is only restored by the QEMU that wrote it. */
function qemuVersion(): Promise<string> {
  let qemu: string;
  try {
    qemu = findExecutable(QEMU, QEMU_PACKAGE);
  } catch {
    return Promise.resolve("no QEMU"); // a Firecracker function's key does not depend on QEMU
  }
  versionCache ??= run(qemu, ["--version"]).then(
    (r) => r.stdout.split("\n")[0] ?? "",
    () => "unknown",
  );
  return versionCache;
}

interface VmInstanceOptions {
  readonly child: ChildProcess;
  readonly dir: string;
  readonly what: string;
  readonly listener: Server | undefined;
  readonly consoleLog: string;
  readonly qmpSocket: string;
  readonly restored: boolean;
  readonly cleanup: ReadonlyArray<() => unknown>;
}

/** One VM: its QEMU process, run directory, channel or network transport. */
class VmInstance implements SandboxHandle {
  readonly #o: VmInstanceOptions;
  readonly #exited: Promise<void>;
  readonly #exitListeners: Array<(reason: Error) => void> = [];
  #channel: GuestChannel | undefined;
  #transport: HttpTransport | undefined;
  #exitCode: number | null = null;
  #stderr = "";
  #stopping = false;
  #released: Promise<void> | undefined;
  readonly restored: boolean;

  constructor(o: VmInstanceOptions) {
    this.#o = o;
    this.restored = o.restored;
    const keep = (chunk: Buffer) => (this.#stderr = (this.#stderr + chunk.toString()).slice(-TAIL));
    o.child.stdout?.on("data", keep);
    o.child.stderr?.on("data", keep);
    this.#exited = new Promise((resolve) => {
      o.child.once("exit", (code, signal) => {
        this.#exitCode = code ?? (signal ? 128 : -1);
        if (!this.#stopping) {
          void this.#exitError().then((err) => {
            for (const l of this.#exitListeners) l(err);
          });
        }
        resolve();
      });
      o.child.once("error", () => resolve());
    });
  }

  attachChannel(channel: GuestChannel): void {
    this.#channel = channel;
    this.#transport = new HttpTransport({ connect: () => channel.openStream() }, this.#o.what);
  }

  attachTransport(transport: HttpTransport): void {
    this.#transport = transport;
  }

  /** What the guest last said: the channel's LOG frames (unikernel) or the console (Linux). */
  async #guestOutput(): Promise<string> {
    const console = await readFile(this.#o.consoleLog, "utf8").catch(() => "");
    return `${this.#channel?.log ?? ""}${console}`.trim().slice(-800);
  }

  async #exitError(): Promise<FennecError> {
    const out = await this.#guestOutput();
    const stderr = this.#stderr.trim().slice(-500);
    return new FennecError(
      "FN_CRASHED",
      `${this.#o.what}: the VM stopped (QEMU exit code ${this.#exitCode})` +
        `${out ? `; the guest's last output: ${out}` : ""}${stderr ? `; QEMU: ${stderr}` : ""}`,
    );
  }

  /**
   * The error to report for a start that failed: a kernel QEMU cannot load is the function's
   * artefact; a VM that stopped says what the guest and QEMU last wrote.
   */
  async startError(err: unknown): Promise<FennecError> {
    const e = toFennecError(err, "SANDBOX_START_FAILED");
    await Promise.race([this.#exited, new Promise((r) => setTimeout(r, 200))]);
    if (this.#exitCode === null || this.#stopping) return e;
    if (/kernel|PVH|multiboot|initrd/i.test(this.#stderr) && !this.restored) {
      return new FennecError(
        "FN_BAD_MODULE",
        `${this.#o.what}: QEMU could not boot it: ${this.#stderr.trim()}`,
      );
    }
    return e.code === "FN_INIT_TIMEOUT" ? e : this.#exitError();
  }

  onExit(listener: (reason: Error) => void): void {
    this.#exitListeners.push(listener);
  }

  /** Restores device state into a QEMU started with `-incoming defer` and a private RAM mapping. */
  async restore(state: string, signal: AbortSignal): Promise<void> {
    const qmp = await QmpClient.connect(this.#o.qmpSocket, signal);
    try {
      await qmp.execute("migrate-set-capabilities", {
        capabilities: [{ capability: "x-ignore-shared", state: true }],
      });
      await qmp.execute("migrate-incoming", { uri: `exec:cat ${shellQuote(state)}` });
      // Nothing may reach the guest's devices before their state is loaded: a byte the UART took
      // during the migration would be overwritten by it, and the guest's framing would break.
      for (;;) {
        if (signal.aborted) throw signal.reason;
        const status = await qmp.execute<{ status: string }>("query-status");
        if (status.status === "running") break;
        if (status.status !== "inmigrate" && status.status !== "prelaunch")
          throw new FennecError("SANDBOX_START_FAILED", `restore ended in state ${status.status}`);
        await new Promise((r) => setTimeout(r, 2));
      }
    } finally {
      qmp.close();
    }
  }

  /** Writes the running guest's device state to `path` (its RAM is already in the shared file). */
  async saveSnapshot(path: string, signal: AbortSignal): Promise<void> {
    const qmp = await QmpClient.connect(this.#o.qmpSocket, signal);
    try {
      await qmp.execute("migrate-set-capabilities", {
        capabilities: [{ capability: "x-ignore-shared", state: true }],
      });
      await qmp.execute("migrate", { uri: `exec:cat > ${shellQuote(path)}` });
      for (;;) {
        if (signal.aborted) throw signal.reason;
        const info = await qmp.execute<{ status?: string; "error-desc"?: string }>("query-migrate");
        if (info.status === "completed") break;
        if (info.status === "failed" || info.status === "cancelled")
          throw new FennecError(
            "SANDBOX_START_FAILED",
            `snapshot failed: ${info["error-desc"] ?? info.status}`,
          );
        await new Promise((r) => setTimeout(r, 10));
      }
      if ((await stat(path)).size === 0) throw new FennecError("SANDBOX_START_FAILED", "snapshot is empty");
    } finally {
      qmp.close();
    }
  }

  async invoke(request: InvokeRequest, ctx: InvokeContext): Promise<InvokeResponse> {
    if (!this.#transport) throw new FennecError("INSTANCE_GONE", `${this.#o.what} is not ready`);
    try {
      return await this.#transport.invoke(request, ctx.signal);
    } catch (err) {
      if (err instanceof FennecError && err.code === "FN_CRASHED") {
        // The connection broke: if the VM is going down, report why it did.
        await Promise.race([this.#exited, new Promise((r) => setTimeout(r, 1000))]);
        if (this.#exitCode !== null && !this.#stopping) throw await this.#exitError();
      }
      throw err;
    }
  }

  /** Graceful: QEMU quits cleanly on SIGTERM; SIGKILL after a grace period. */
  async close(): Promise<void> {
    this.#stopping = true;
    await terminate((sig) => this.#signal(sig), this.#exited, CLOSE_GRACE_MS);
    await this.#release();
  }

  async destroy(): Promise<void> {
    this.#stopping = true;
    this.#signal("SIGKILL");
    await this.#exited;
    await this.#release();
  }

  #signal(sig: NodeJS.Signals): void {
    if (this.#exitCode !== null || this.#o.child.pid === undefined) return;
    try {
      // The whole group: QEMU runs helpers (the `exec:` migration's shell and cat) in it.
      process.kill(-this.#o.child.pid, sig);
    } catch {
      // already gone
    }
  }

  #release(): Promise<void> {
    this.#released ??= (async () => {
      this.#channel?.close();
      this.#transport?.close();
      this.#o.listener?.close();
      for (const release of this.#o.cleanup) await Promise.resolve(release()).catch(() => undefined);
      await removeRunDir(this.#o.dir);
    })();
    return this.#released;
  }
}

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`;
}

/** One Firecracker microVM on a tap: invoked over its IP network, ended by killing its VMM. */
class FirecrackerInstance implements SandboxHandle {
  readonly #exitListeners: Array<(reason: Error) => void> = [];
  #stopping = false;
  #released: Promise<void> | undefined;

  constructor(
    readonly vm: FirecrackerVm,
    readonly transport: HttpTransport,
    readonly what: string,
    readonly release: () => Promise<void>,
  ) {
    void vm.exited.then((e) => {
      if (this.#stopping) return;
      const err = new FennecError(
        "FN_CRASHED",
        `${what}: the VM stopped (${e.code ?? e.signal}); its last output: ${vm.output.trim().slice(-500)}`,
      );
      for (const l of this.#exitListeners) l(err);
    });
  }

  onExit(listener: (reason: Error) => void): void {
    this.#exitListeners.push(listener);
  }

  invoke(request: InvokeRequest, ctx: InvokeContext): Promise<InvokeResponse> {
    return this.transport.invoke(request, ctx.signal);
  }

  /** Firecracker has no graceful stop a guest must honour (SendCtrlAltDel is x86 only and advisory). */
  close(): Promise<void> {
    return this.destroy();
  }

  destroy(): Promise<void> {
    this.#stopping = true;
    this.#released ??= (async () => {
      this.transport.close();
      await this.release();
    })();
    return this.#released;
  }
}
