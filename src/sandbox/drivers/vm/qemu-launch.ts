import { spawn } from "node:child_process";
import { once } from "node:events";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { FennecError } from "../../../core/errors.js";
import type { StartContext } from "../../contract.js";
import { GuestChannel } from "../../guest-channel.js";
import { findExecutable } from "../../host-view.js";
import { HttpTransport } from "../../http-transport.js";
import { createRunDir, recordOwner, removeRunDir } from "../../run-dir.js";
import type { Artefacts } from "./artefacts.js";
import { vmOf } from "./hypervisor.js";
import { qemuArgs, substituteCmdline, USER_NET, type Accel, type QemuPlan } from "./qemu-args.js";
import { QemuInstance } from "./qemu-instance.js";
import { loadDeviceState, type Snapshot } from "./snapshots.js";
import type { TapNetwork, TapNetworks } from "./tap-network.js";

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

/**
 * Starts one QEMU and resolves once its guest serves: its run directory, the guest channel's
 * socket (listened on before QEMU starts) or its network (user-mode or a tap), its command line,
 * then readiness raced against QEMU exiting and the start being aborted.
 */
export async function launchQemu(
  ctx: StartContext,
  art: Artefacts,
  mode: LaunchMode,
  env: QemuEnv,
): Promise<QemuInstance> {
  const vm = vmOf(ctx.config);
  const dir = await createRunDir("vm", ctx.instanceId);
  const what = `${ctx.config.key}: instance ${ctx.instanceId} (${vm.hypervisor.type}, ${env.accel})`;
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
    net = await env.taps.open(ctx, dir, what).catch(async (err: unknown) => {
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
    accel: env.accel,
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
    ? [findExecutable("ip", "iproute2"), "netns", "exec", net.lease.netns, env.qemu, ...qemuArgs(plan)]
    : [env.qemu, ...qemuArgs(plan)];
  const child = spawn(argv[0]!, argv.slice(1), {
    cwd: dir,
    detached: true, // its own process group, so a crashed Fennec's QEMU can be found and ended
    stdio: ["ignore", "pipe", "pipe"],
  });
  const instance = new QemuInstance({
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
        reject(new FennecError("SANDBOX_START_FAILED", `${what}: cannot run ${env.qemu}: ${err.message}`)),
      );
      instance.onExit((err) => reject(err));
    });
    const aborted = rejectOnAbort(ctx.signal);
    const ready = (async () => {
      if (connection) {
        const channel = new GuestChannel(await connection, what);
        instance.attachChannel(channel);
        if (mode.restoreFrom) {
          await loadDeviceState(plan.qmpSocket, mode.restoreFrom.state, ctx.signal);
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
