import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { promisify } from "node:util";
import type { Logger } from "../../../core/log.js";
import type { SandboxHandle, StartContext } from "../../contract.js";
import { findExecutable } from "../../host-view.js";
import type { Artefacts } from "./artefacts.js";
import { vmOf, type Hypervisor } from "./hypervisor.js";
import type { Accel } from "./qemu-args.js";
import { launchQemu } from "./qemu-launch.js";
import { SnapshotTemplates } from "./snapshot-templates.js";
import type { SnapshotStore } from "./snapshots.js";
import type { TapNetworks } from "./tap-network.js";

const run = promisify(execFile);
const QEMU = "qemu-system-x86_64";
const QEMU_PACKAGE = "qemu-system-x86";

/**
 * QEMU (`microvm`, `pc`): boots (or restores, with `snapshot = true`) one guest per instance,
 * reached through the guest channel, user-mode networking or a tap (qemu-launch.ts).
 */
export class QemuHypervisor implements Hypervisor {
  readonly #accel: () => Accel;
  readonly #taps: TapNetworks;
  readonly #templates: SnapshotTemplates;
  #version: Promise<string> | undefined;

  constructor(accel: () => Accel, taps: TapNetworks, store: SnapshotStore, log: Logger) {
    this.#accel = accel;
    this.#taps = taps;
    this.#templates = new SnapshotTemplates(
      store,
      (ctx, art, mode) => launchQemu(ctx, art, mode, { qemu: this.binary(), accel: accel(), taps }),
      log,
    );
  }

  binary(): string {
    return findExecutable(QEMU, QEMU_PACKAGE);
  }

  /**
   * Under TCG the guest's TSC is the host's, but the kernel's calibration of it against the emulated
   * PIT is a timing measurement that fails on a loaded host; the guest then marks its TSC unstable
   * and hangs early in boot, waiting for a tick (seen in about one boot in three with two guests
   * booting at once on two cores). Telling it the frequency skips the calibration.
   */
  async guestParams(): Promise<string> {
    if (this.#accel() !== "tcg") return "";
    const cpuinfo = await readFile("/proc/cpuinfo", "utf8").catch(() => "");
    const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(cpuinfo)?.[1]);
    return Number.isFinite(mhz) && mhz > 0 ? `tsc_early_khz=${Math.round(mhz * 1000)} tsc=reliable` : "";
  }

  /** Its first `--version` line: a snapshot is only restored by the QEMU that wrote it. */
  version(): Promise<string> {
    this.#version ??= Promise.resolve()
      .then(() => run(this.binary(), ["--version"]))
      .then(
        (r) => r.stdout.split("\n")[0] ?? "",
        () => "unknown",
      );
    return this.#version;
  }

  start(ctx: StartContext, art: Artefacts): Promise<SandboxHandle> {
    const vm = vmOf(ctx.config);
    // Snapshots restore device state through the channel's PING; a networked guest's address and
    // callback would be the template's.
    if (vm.snapshot && vm.transport === "channel") return this.#templates.start(ctx, art);
    return launchQemu(ctx, art, {}, { qemu: this.binary(), accel: this.#accel(), taps: this.#taps });
  }

  close(): Promise<void> {
    return this.#templates.close();
  }
}
