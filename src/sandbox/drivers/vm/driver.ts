import { join } from "node:path";
import { toFennecError } from "../../../core/errors.js";
import { createLogger, type Logger } from "../../../core/log.js";
import type { FunctionConfig } from "../../../config/function-config.js";
import type { CleanupReport, SandboxDriver, SandboxHandle, StartContext } from "../../contract.js";
import { sweepStale } from "../../run-dir.js";
import { chooseAccel, type AccelChoice, type AccelPreference } from "./accel.js";
import { GuestArtefacts } from "./artefacts.js";
import { FirecrackerHypervisor } from "./firecracker-driver.js";
import { vmOf, type Hypervisor } from "./hypervisor.js";
import { cacheDir, guestKernel } from "./linux-guest.js";
import { QemuHypervisor } from "./qemu.js";
import { SnapshotStore } from "./snapshots.js";
import { TapNetworks } from "./tap-network.js";

/** The VMM's own memory next to the guest's: ≈ 44 MB measured for a TCG QEMU, plus its code cache. */
const VMM_OVERHEAD_MIB = 64;

export interface VmDriverOptions {
  /** `auto` (default): KVM where it works, TCG otherwise. */
  readonly accel?: AccelPreference;
  /** Where snapshots are kept (default `<cache>/vm-snapshots`). */
  readonly snapshotDir?: string;
  /** Tap mode: the range the /30s come from (default 10.100.0.0/16, as UniFaaS). */
  readonly tapRange?: string;
  /** Tap mode: the network namespace the taps and the VMMs live in (default: Fennec's own). */
  readonly netns?: string;
  readonly log?: Logger;
}

/**
 * `[vm]`: functions as virtual machines, on QEMU (`microvm` or `pc`, under KVM where it works and
 * TCG otherwise; qemu.ts) or Firecracker (firecracker-driver.ts). Three kinds of guest
 * (artefacts.ts): Fennec's Linux guest running a handler or command from a root filesystem Fennec
 * packs; a unikernel (a kernel and no image); a UniFaaS kernel and image. Fennec reaches the guest
 * through its channel (virtio-serial or the UART, docs/guest-channel.md), QEMU's user-mode
 * network, or a tap (tap-network.ts); with `snapshot = true` QEMU instances are restored from a
 * snapshot of a booted, ready guest (SnapFaaS, snapshot-templates.ts).
 */
export class VmDriver implements SandboxDriver {
  readonly name = "vm";
  /** A guest that runs out of memory is the guest kernel's OOM kill inside it: Fennec sees a crash. */
  readonly capabilities = { snapshot: true, oomDetection: false } as const;
  readonly #options: VmDriverOptions;
  readonly #log: Logger;
  readonly #artefacts = new GuestArtefacts();
  readonly #taps: TapNetworks;
  readonly #qemu: QemuHypervisor;
  readonly #firecracker: FirecrackerHypervisor;
  #accel: AccelChoice | undefined;

  constructor(options: VmDriverOptions = {}) {
    this.#options = options;
    this.#log = options.log ?? createLogger("silent");
    this.#taps = new TapNetworks({ range: options.tapRange, netns: options.netns });
    const store = new SnapshotStore(options.snapshotDir ?? join(cacheDir(), "vm-snapshots"));
    this.#qemu = new QemuHypervisor(() => this.accel.accel, this.#taps, store, this.#log);
    this.#firecracker = new FirecrackerHypervisor(this.#taps);
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
    return vmOf(config).memoryMiB + VMM_OVERHEAD_MIB;
  }

  /**
   * Checks the hypervisor is installed and builds the guest's root (and disk image) ahead of time.
   * A snapshot waits for the first start, as SnapFaaS takes it: a function that is never called
   * never boots a template.
   */
  async prepare(config: FunctionConfig): Promise<void> {
    const hypervisor = this.#hypervisorOf(config);
    hypervisor.binary();
    await this.#artefacts.of(config, hypervisor, this.accel.accel);
  }

  /**
   * `fennec build`: packs a handler or command function's root (and disk image) without needing
   * the hypervisor or the guest kernel, which may be installed later; returns what is still
   * missing to boot it.
   */
  async packRoot(config: FunctionConfig): Promise<{ missing: string | undefined }> {
    const vm = vmOf(config);
    if (vm.handler || vm.command) await this.#artefacts.packRoot(config, vm);
    try {
      if (vm.handler || vm.command) guestKernel();
      this.#hypervisorOf(config).binary();
      return { missing: undefined };
    } catch (err) {
      return { missing: toFennecError(err).message };
    }
  }

  async start(ctx: StartContext): Promise<SandboxHandle> {
    const hypervisor = this.#hypervisorOf(ctx.config);
    hypervisor.binary();
    return hypervisor.start(ctx, await this.#artefacts.of(ctx.config, hypervisor, this.accel.accel));
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
    await Promise.allSettled([this.#qemu.close(), this.#firecracker.close()]);
    await this.#taps.close();
  }

  /** The one place a function's `hypervisor.type` chooses what runs it. */
  #hypervisorOf(config: FunctionConfig): Hypervisor {
    return vmOf(config).hypervisor.type === "firecracker" ? this.#firecracker : this.#qemu;
  }
}
