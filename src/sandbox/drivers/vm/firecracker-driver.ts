import { awaitReady } from "../../await-ready.js";
import { CleanupStack } from "../../cleanup-stack.js";
import type { SandboxHandle, StartContext } from "../../contract.js";
import { createRunDirOn, recordOwner } from "../../run-dir.js";
import { SupervisedHandle } from "../../supervised-handle.js";
import type { Artefacts } from "./artefacts.js";
import { findFirecracker, FirecrackerVm } from "./firecracker.js";
import { vmOf, type Hypervisor } from "./hypervisor.js";
import { substituteCmdline } from "./qemu-args.js";
import type { TapNetwork, TapNetworks } from "./tap-network.js";

/**
 * Firecracker (`type = "firecracker"`), as UniFaaS runs it: kernel, root drive (copied per
 * instance with `copy-rootfs`), a tap with its /30 and the callback on the tap's host side,
 * configured through Firecracker's API (firecracker.ts). No Firecracker binary exists on Fennec's
 * CI machines, so this path is tested against a fake that checks the documented API, not with a
 * real guest.
 */
export class FirecrackerHypervisor implements Hypervisor {
  readonly #taps: TapNetworks;

  constructor(taps: TapNetworks) {
    this.#taps = taps;
  }

  binary(): string {
    return findFirecracker();
  }

  async guestParams(): Promise<string> {
    return "";
  }

  /** Firecracker guests are never snapshotted (the schema refuses it): the key only differs from QEMU's. */
  async version(): Promise<string> {
    return "firecracker";
  }

  async start(ctx: StartContext, art: Artefacts): Promise<SandboxHandle> {
    const vm = vmOf(ctx.config);
    const image = art.root && "image" in art.root ? art.root.image : undefined;
    const what = `${ctx.config.key}: instance ${ctx.instanceId} (firecracker)`;
    // What the instance holds, released newest first once Firecracker has exited.
    const cleanup = new CleanupStack();
    const dir = await createRunDirOn(cleanup, "vm", ctx.instanceId);
    let fc: FirecrackerVm;
    let net: TapNetwork;
    try {
      net = await this.#taps.open(ctx, dir, what);
      const lease = net.lease;
      cleanup.defer(() => net.release());
      fc = await FirecrackerVm.start({
        id: ctx.instanceId,
        runDir: dir,
        vcpus: vm.cpus,
        memoryMiB: vm.memoryMiB,
        kernel: art.kernel,
        bootArgs: substituteCmdline(art.cmdline, net.placeholders),
        ...(art.initrd ? { initrd: art.initrd } : {}),
        ...(image ? { rootfs: { path: image, copy: vm.hypervisor["copy-rootfs"] !== false } } : {}),
        tap: { name: lease.tap, mac: lease.mac },
        ...(lease.netns ? { netns: lease.netns } : {}),
        signal: ctx.signal,
        what,
        cleanup,
      });
    } catch (err) {
      await cleanup.run(); // once: a VMM that started has already run it
      throw err;
    }
    if (fc.pid !== undefined) await recordOwner(dir, fc.pid).catch(() => undefined);
    await awaitReady(fc.child, { kind: "signal", ready: () => net.called }, ctx);
    return new SupervisedHandle(fc.child, net.endpoint);
  }

  async close(): Promise<void> {}
}
