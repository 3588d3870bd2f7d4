import { spawn } from "node:child_process";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import { createServer, type Socket } from "node:net";
import { join } from "node:path";
import { FennecError } from "../../../core/errors.js";
import { awaitReady, type Readiness } from "../../await-ready.js";
import { CleanupStack } from "../../cleanup-stack.js";
import type { StartContext } from "../../contract.js";
import { GuestChannel } from "../../guest-channel.js";
import { HostBinding } from "../../host-binding.js";
import { findExecutable } from "../../host-view.js";
import type { Endpoint } from "../../http-transport.js";
import { createRunDirOn, recordOwner } from "../../run-dir.js";
import { fromChildProcess, SupervisedChild } from "../../supervised-child.js";
import { SupervisedHandle } from "../../supervised-handle.js";
import type { Artefacts } from "./artefacts.js";
import { vmOf } from "./hypervisor.js";
import { qemuArgs, substituteCmdline, USER_NET, type Accel, type QemuPlan } from "./qemu-args.js";
import { loadDeviceState, type Snapshot } from "./snapshots.js";
import type { TapNetworks } from "./tap-network.js";

/** How this QEMU starts: a boot, a restore from a snapshot, or a template to snapshot. */
export interface LaunchMode {
  readonly restoreFrom?: Snapshot;
  readonly snapshotInto?: Snapshot;
}

/** What every launch shares: the binary, the accelerator, the taps. */
export interface QemuEnv {
  readonly qemu: string;
  readonly accel: Accel;
  readonly taps: TapNetworks;
}

/** One QEMU VM: a supervised child (QEMU, in its own process group) serving HTTP. */
export class QemuHandle extends SupervisedHandle {
  constructor(
    child: SupervisedChild,
    endpoint: Endpoint,
    readonly restored: boolean,
    /** Where QEMU's monitor listens (a snapshot template's state is saved through it). */
    readonly qmpSocket: string,
    binding: HostBinding | undefined,
  ) {
    super(child, endpoint, binding);
  }
}

/**
 * Starts one QEMU and resolves once its guest serves. Everything it acquires is deferred onto one
 * cleanup stack, which the supervised child runs once QEMU has exited, however it stopped.
 */
export async function launchQemu(
  ctx: StartContext,
  art: Artefacts,
  mode: LaunchMode,
  env: QemuEnv,
): Promise<QemuHandle> {
  const vm = vmOf(ctx.config);
  const what = `${ctx.config.key}: instance ${ctx.instanceId} (${vm.hypervisor.type}, ${env.accel})`;
  const cleanup = new CleanupStack();
  const dir = await createRunDirOn(cleanup, "vm", ctx.instanceId);
  const qmpSocket = join(dir, "qmp.sock");
  const consoleLog = join(dir, "console.log");
  // 1. How Fennec will reach the guest: its channel (listened on before QEMU starts: QEMU
  //    connects as a client, so nothing the guest writes is lost), QEMU's user network or a tap.
  let channel: GuestChannel | undefined;
  let connection: Promise<Socket> | undefined;
  /** The handler binding, served over the streams the guest opens on its channel. */
  let binding: HostBinding | undefined;
  let userNet: QemuPlan["userNet"];
  let tap: QemuPlan["tap"];
  let netns: string | undefined;
  let endpoint: Endpoint;
  /** A tap guest's call to its own callback listener. */
  let calledBack: Promise<void> | undefined;
  let append = art.cmdline;
  try {
    if (vm.transport === "channel") {
      const listener = createServer();
      cleanup.defer(() => listener.close());
      connection = once(listener, "connection").then(([s]) => s as Socket);
      listener.listen(join(dir, "channel.sock"));
      await once(listener, "listening");
      endpoint = { connect: () => channel!.openStream() };
      const served = HostBinding.streams();
      cleanup.defer(() => served.close());
      binding = served;
    } else if (vm.transport === "user") {
      const callback = new URL(ctx.callbackUrl);
      userNet = { hostPort: await freePort(), callbackPort: Number(callback.port || 80) };
      append = substituteCmdline(art.cmdline, {
        ip: USER_NET.ip,
        gateway: USER_NET.gateway,
        netmask: USER_NET.netmask,
        callback: `http://${USER_NET.callbackHost}:${USER_NET.callbackPort}${callback.pathname}`,
      });
      endpoint = { host: "127.0.0.1", port: userNet.hostPort };
    } else {
      const net = await env.taps.open(ctx, dir, what);
      cleanup.defer(() => net.release());
      tap = { name: net.lease.tap, mac: net.lease.mac };
      netns = net.lease.netns;
      append = substituteCmdline(art.cmdline, net.placeholders);
      endpoint = net.endpoint;
      calledBack = net.called;
    }
  } catch (err) {
    await cleanup.run();
    throw err;
  }
  // 2. Start QEMU in its own process group, so a crashed Fennec's QEMU can be found and ended and
  //    a stop reaches the helpers it runs (the `exec:` migration's shell and cat).
  const snapshot = mode.restoreFrom ?? mode.snapshotInto;
  const plan: QemuPlan = {
    vm,
    guest: art.guest,
    accel: env.accel,
    kernel: art.kernel,
    initrd: art.initrd,
    append,
    root: art.root,
    qmpSocket,
    channelSocket: connection ? join(dir, "channel.sock") : undefined,
    consoleLog,
    userNet,
    tap,
    ramFile: snapshot ? { path: snapshot.ram, share: mode.snapshotInto !== undefined } : undefined,
    incoming: mode.restoreFrom !== undefined,
  };
  // A tap in a network namespace is opened from inside it: QEMU runs there (`ip` execs it).
  const argv = netns
    ? [findExecutable("ip", "iproute2"), "netns", "exec", netns, env.qemu, ...qemuArgs(plan)]
    : [env.qemu, ...qemuArgs(plan)];
  const spawned = spawn(argv[0]!, argv.slice(1), {
    cwd: dir,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const child = new SupervisedChild({
    child: fromChildProcess(spawned, { group: true }),
    what,
    // What the guest last said: the channel's LOG frames (unikernel) or the console (Linux).
    moreOutput: async () => `${channel?.log ?? ""}${await readFile(consoleLog, "utf8").catch(() => "")}`,
    cleanup,
  });
  if (spawned.pid !== undefined) await recordOwner(dir, spawned.pid).catch(() => undefined);
  // 3. Race readiness against QEMU exiting and the start's deadline: the guest channel's READY
  //    (or, restored, its device state loaded and a PING answered), a tap's callback, or Fennec's.
  const accepted = connection;
  const readiness: Readiness = accepted
    ? {
        kind: "signal",
        ready: async (signal) => {
          try {
            channel = new GuestChannel(await accepted, what, ctx.log);
            const open = channel;
            cleanup.defer(() => open.close());
            if (binding) open.onGuestStream((s) => binding.accept(s));
            if (!mode.restoreFrom) return await open.ready;
            await loadDeviceState(qmpSocket, mode.restoreFrom.state, signal);
            await open.ping(signal);
          } catch (err) {
            // A channel that closes is usually QEMU exiting: report that exit, with what it said.
            throw await child.explain(err);
          }
        },
      }
    : calledBack
      ? { kind: "signal", ready: () => calledBack }
      : { kind: "callback" };
  try {
    await awaitReady(child, readiness, ctx);
  } catch (err) {
    throw notBootable(err, child, mode) ?? err;
  }
  return new QemuHandle(child, endpoint, mode.restoreFrom !== undefined, qmpSocket, binding);
}

/** A kernel QEMU refused to load is the function's artefact, not a crash. */
function notBootable(err: unknown, child: SupervisedChild, mode: LaunchMode): FennecError | undefined {
  if (!(err instanceof FennecError) || err.code !== "FN_CRASHED" || mode.restoreFrom) return undefined;
  if (!/kernel|PVH|multiboot|initrd/i.test(child.output)) return undefined;
  return new FennecError("FN_BAD_MODULE", `${child.what}: QEMU could not boot it: ${child.output.trim()}`, {
    details: err.details,
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
