import type { Logger } from "../core/log.js";
import { toFennecError } from "../core/errors.js";
import type { Scheduler } from "../scheduler/scheduler.js";
import type { FunctionLoad } from "./contract.js";
import type { LocalState } from "./membership.js";
import { probeSandboxes, type HostProbe, type SandboxReport } from "./sandboxes.js";

/** How often the host is asked again what it can run (a Docker engine started after Fennec). */
const PROBE_MS = 30_000;

export interface LocalNodeOptions {
  readonly scheduler: Scheduler;
  /** The drivers this node created, by sandbox kind. */
  readonly drivers: ReadonlyMap<string, unknown>;
  readonly enableHint?: (kind: string) => string | undefined;
  readonly log: Logger;
  readonly host?: HostProbe;
}

/**
 * What this node says of itself in the cluster (`NodeInfo` but its identity): its sandboxes,
 * probed at start and every 30 s, and its load, read from the scheduler at every call.
 */
export class LocalNode {
  readonly #o: LocalNodeOptions;
  #sandboxes: SandboxReport = { sandboxes: [], missing: {} };
  #timer: NodeJS.Timeout | undefined;

  private constructor(options: LocalNodeOptions) {
    this.#o = options;
  }

  static async start(options: LocalNodeOptions): Promise<LocalNode> {
    const node = new LocalNode(options);
    await node.#probe();
    node.#timer = setInterval(() => void node.#probe(), PROBE_MS);
    node.#timer.unref();
    return node;
  }

  close(): void {
    clearInterval(this.#timer);
  }

  async #probe(): Promise<void> {
    try {
      this.#sandboxes = await probeSandboxes(this.#o.drivers, {
        ...(this.#o.enableHint ? { enableHint: this.#o.enableHint } : {}),
        ...(this.#o.host ? { host: this.#o.host } : {}),
      });
    } catch (err) {
      this.#o.log.warn("could not tell which sandboxes run here", { error: toFennecError(err).message });
    }
  }

  state(): LocalState {
    const { scheduler } = this.#o;
    const functions: Record<string, FunctionLoad> = {};
    let inFlight = 0;
    for (const [key, pool] of scheduler.pools()) {
      const load = pool.load();
      inFlight += load.active;
      if (load.warm === 0) continue;
      let memoryMiB = 0;
      try {
        memoryMiB = scheduler.driverFor(pool.config).memoryMiB(pool.config);
      } catch {
        // its driver is gone (cannot be: a pool has instances only through it)
      }
      functions[key] = {
        revision: pool.config.revision,
        warm: load.warm,
        freeSlots: load.freeSlots,
        memoryMiB,
      };
    }
    return {
      sandboxes: this.#sandboxes.sandboxes,
      missing: this.#sandboxes.missing,
      memory: { budgetMiB: scheduler.memoryBudgetMiB, reservedMiB: scheduler.memoryUsedMiB },
      inFlight,
      functions,
    };
  }
}
