import { FennecError } from "../core/errors.js";
import type { FunctionConfig } from "../config/function-config.js";
import { FunctionLoader } from "../config/load-function.js";
import type { SandboxDriver } from "./contract.js";
import type { BuildContext, BuildResult, DriverFlag, NodeContext, SandboxKind } from "./kind.js";

/**
 * The sandbox kinds of this Fennec, in the order they were registered, and everything derived from
 * them: the function.toml loader (schema, configs, the admin API's image), the `fennec build`
 * step, the command-line flags and the drivers. Nothing else lists the kinds.
 */
export class SandboxKinds {
  readonly #kinds: ReadonlyMap<string, SandboxKind>;
  /** function.toml with one table per kind. */
  readonly loader: FunctionLoader;

  constructor(kinds: readonly SandboxKind[]) {
    this.#kinds = new Map(kinds.map((k) => [k.kind, k]));
    this.loader = new FunctionLoader(kinds);
  }

  /** The kinds' names, in registration order. */
  get names(): string[] {
    return [...this.#kinds.keys()];
  }

  /** The kind of a config (the loader only makes configs of registered kinds). */
  #of(config: FunctionConfig): SandboxKind {
    const kind = this.#kinds.get(config.sandbox.kind);
    if (!kind) throw new FennecError("INTERNAL", `${config.key}: no sandbox kind "${config.sandbox.kind}"`);
    return kind;
  }

  /** Runs the `fennec build` step of a function's kind. */
  build(config: FunctionConfig, ctx: BuildContext<SandboxDriver>): Promise<BuildResult> {
    return this.#of(config).build(config, ctx);
  }

  /** Every kind's flags of `fennec serve` (`build`: of `fennec build`), in registration order. */
  flags(command: "serve" | "build"): DriverFlag[] {
    return [...this.#kinds.values()].flatMap((k) =>
      (k.flags ?? []).filter((f) => command === "serve" || f.build),
    );
  }

  /** The drivers the node's settings turn on, by kind; a kind left off has none. */
  async createDrivers(node: NodeContext): Promise<Map<string, SandboxDriver>> {
    const drivers = new Map<string, SandboxDriver>();
    for (const kind of this.#kinds.values()) {
      const driver = await kind.create(node);
      if (driver) drivers.set(kind.kind, driver);
    }
    return drivers;
  }

  /** One kind's driver (for `fennec build`); DRIVER_UNAVAILABLE when the settings leave it off. */
  async createDriver(name: string, node: NodeContext): Promise<SandboxDriver> {
    const driver = await this.#kinds.get(name)?.create(node);
    if (driver) return driver;
    const hint = this.enableHint(name);
    throw new FennecError("DRIVER_UNAVAILABLE", `no "${name}" sandbox driver${hint ? `: ${hint}` : ""}`);
  }

  /** How to turn on a kind whose driver the settings left off (for DRIVER_UNAVAILABLE). */
  enableHint(name: string): string | undefined {
    return this.#kinds.get(name)?.enableHint;
  }

  /** Whether start-up runs a driver's stale-state sweep though no function of its kind is served. */
  async hasLeftovers(name: string): Promise<boolean> {
    return (await this.#kinds.get(name)?.hasLeftovers?.()) ?? true;
  }

  /** Tells each kind's driver that start-up preparation is done. */
  async prepared(drivers: ReadonlyMap<string, SandboxDriver>): Promise<void> {
    for (const [name, driver] of drivers) await this.#kinds.get(name)?.prepared?.(driver);
  }

  /** `/stats` `backends`: what each driver that has something to show shows. */
  status(drivers: ReadonlyMap<string, SandboxDriver>): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const [name, driver] of drivers) {
      const status = this.#kinds.get(name)?.status?.(driver);
      if (status) out[name] = status;
    }
    return out;
  }
}
