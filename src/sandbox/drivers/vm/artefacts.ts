import type { FunctionConfig, VmSandboxConfig } from "../../../config/function-config.js";
import { HandlerBundles } from "../../handler-build.js";
import { PerRevision } from "../../per-revision.js";
import type { Hypervisor } from "./hypervisor.js";
import { vmOf } from "./hypervisor.js";
import { buildGuestRoot, guestKernel, ipNetworkParams, stampsOf, type GuestRoot } from "./linux-guest.js";
import type { Accel, GuestKind, QemuPlan } from "./qemu-args.js";
import { snapshotKey } from "./snapshots.js";

/** Kernel parameters of Fennec's Linux guest: console on the serial port, any crash ends the VMM. */
const LINUX_BASE_CMDLINE = "console=ttyS0 reboot=t panic=-1 quiet";

/** What one function boots: decided once per revision. */
export interface Artefacts {
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
 * The guest artefacts of `[vm]` functions: Fennec's kernel and the root it packs for a handler or
 * command (bundled first), or the user's kernel and image; resolved once per revision.
 */
export class GuestArtefacts {
  readonly #bundles = new HandlerBundles();
  readonly #resolved = new PerRevision<Artefacts>();

  of(config: FunctionConfig, hypervisor: Hypervisor, accel: Accel): Promise<Artefacts> {
    return this.#resolved.get(config, () => this.#resolve(config, hypervisor, accel));
  }

  /** A handler or command function's root (and disk image), its handler bundled first. */
  async packRoot(config: FunctionConfig, vm: VmSandboxConfig): Promise<GuestRoot> {
    const bundle = vm.handler ? await this.#bundles.get(config, vm.handler) : undefined;
    return buildGuestRoot(config, vm, bundle);
  }

  async #resolve(config: FunctionConfig, hypervisor: Hypervisor, accel: Accel): Promise<Artefacts> {
    const vm = vmOf(config);
    const common = [
      vm.cmdline,
      String(vm.memoryMiB),
      String(vm.cpus),
      JSON.stringify(vm.hypervisor),
      accel,
      await hypervisor.version(),
    ];
    if (vm.handler || vm.command) {
      const { kernel, initramfs } = guestKernel();
      const root = await this.packRoot(config, vm);
      const fennecRoot = root.image ? "fennec.root=blk:/dev/vda" : "fennec.root=9p:fnroot";
      // Without the channel the agent only runs the function, which serves on the guest's network.
      const port = vm.transport === "channel" ? "" : "fennec.port=none";
      // On an IP network, the callback the agent hands the program, and eth0's address.
      const network = ipNetworkParams(vm);
      const params = await hypervisor.guestParams();
      return {
        guest: "fennec-linux",
        kernel,
        initrd: initramfs,
        root: root.image ? { image: root.image, writable: false } : { dir: root.rootfs.dir },
        cmdline: `${LINUX_BASE_CMDLINE} ${params} ${fennecRoot} ${port} ${network} ${vm.cmdline}`
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
}
