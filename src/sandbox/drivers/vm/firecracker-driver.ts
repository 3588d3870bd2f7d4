import { FennecError } from "../../../core/errors.js";
import type { InvokeRequest, InvokeResponse } from "../../../core/types.js";
import type { InvokeContext, SandboxHandle, StartContext } from "../../contract.js";
import { HttpTransport } from "../../http-transport.js";
import { createRunDir, recordOwner, removeRunDir } from "../../run-dir.js";
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
      net = await this.#taps.open(ctx, dir, what);
      fc = await FirecrackerVm.start({
        id: ctx.instanceId,
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
      const aborted = new Promise<never>((_, reject) => {
        if (ctx.signal.aborted) reject(ctx.signal.reason);
        ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason), { once: true });
      });
      await Promise.race([net.called, exited, aborted]);
      return new FirecrackerInstance(vmm, new HttpTransport(net.endpoint, what), what, release);
    } catch (err) {
      await release();
      throw err;
    }
  }

  async close(): Promise<void> {}
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
