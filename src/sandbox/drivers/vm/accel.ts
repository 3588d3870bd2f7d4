import { accessSync, constants, existsSync } from "node:fs";
import { FennecError } from "../../../core/errors.js";
import type { Accel } from "./qemu-args.js";

export type AccelPreference = "auto" | Accel;

export interface AccelChoice {
  readonly accel: Accel;
  /** Why: logged at start and shown in /stats, so a figure can be read for what it is. */
  readonly reason: string;
}

/**
 * KVM where it works, TCG otherwise. "Works" means a hardware KVM module (kvm_intel, kvm_amd):
 * on a host whose /dev/kvm is the nested PVM kind (`kvm_pvm`) ordinary guests are emulated
 * instruction by instruction, hundreds of times slower than TCG, and Linux guests die on XRSTOR
 * (measured, shared/reference/feasibility.md §1), so auto picks TCG there.
 */
export function chooseAccel(preference: AccelPreference, sysModule = "/sys/module"): AccelChoice {
  const hardware = ["kvm_intel", "kvm_amd"].find((m) => existsSync(`${sysModule}/${m}`));
  let usable = false;
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
    usable = true;
  } catch {
    usable = false;
  }
  if (preference === "tcg") return { accel: "tcg", reason: "TCG was asked for (--vm-accel tcg)" };
  if (preference === "kvm") {
    if (!usable) throw new FennecError("SANDBOX_START_FAILED", "--vm-accel kvm: /dev/kvm cannot be opened");
    return { accel: "kvm", reason: "KVM was asked for (--vm-accel kvm)" };
  }
  if (usable && hardware) return { accel: "kvm", reason: `KVM (${hardware})` };
  if (usable && existsSync(`${sysModule}/kvm_pvm`))
    return {
      accel: "tcg",
      reason: "TCG: /dev/kvm is PVM (kvm_pvm), which runs ordinary guests far slower than TCG",
    };
  return { accel: "tcg", reason: usable ? "TCG: no hardware KVM module loaded" : "TCG: no usable /dev/kvm" };
}
