import type { FunctionConfig, VmSandboxConfig } from "../../../config/function-config.js";
import { sandboxOf } from "../../../config/sandbox-table.js";
import type { SandboxHandle, StartContext } from "../../contract.js";
import type { Artefacts } from "./artefacts.js";

/**
 * What the vm driver asks of the program that runs its guests (QEMU or Firecracker). The driver
 * picks one by `hypervisor.type`, in one place (`VmDriver`); everything that differs between the
 * two lives behind this.
 */
export interface Hypervisor {
  /** Its binary; throws a FennecError saying how to install it when it is missing. */
  binary(): string;
  /** Kernel parameters it adds to Fennec's Linux guest. */
  guestParams(): Promise<string>;
  /** Its version: part of a snapshot's key, since only the version that wrote one restores it. */
  version(): Promise<string>;
  /** Starts one instance of the function; resolves once it serves. */
  start(ctx: StartContext, art: Artefacts): Promise<SandboxHandle>;
  /** Waits for background work (a snapshot being written) at shutdown. */
  close(): Promise<void>;
}

/** The `[vm]` table of a function the vm driver was handed. */
export const vmOf = (config: FunctionConfig): VmSandboxConfig => sandboxOf(config, "vm");
