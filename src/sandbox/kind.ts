import type { z } from "zod";
import type { Logger } from "../core/log.js";
import type { SandboxConfigs } from "../config/function-config.js";
import type { KindConfig, SandboxTable } from "../config/sandbox-table.js";
import type { SandboxDriver } from "./contract.js";

/**
 * Per-driver settings of this node, by their command-line name (`process: true`,
 * `"docker-host": "/run/docker.sock"`, `"vm-accel": "tcg"`): each kind declares its own `flags`.
 */
export type DriverSettings = Readonly<Record<string, string | boolean | undefined>>;

/** What a kind's driver is created from. */
export interface NodeContext {
  readonly settings: DriverSettings;
  /** Directory of caches (compiled modules, snapshots); undefined: the driver's default. */
  readonly cacheDir: string | undefined;
  readonly log: Logger;
}

/** A command-line flag of `fennec serve` (and of `fennec build` when `build` is set) for one driver. */
export interface DriverFlag {
  /** `--<name>` on the command line, the key in `DriverSettings`. */
  readonly name: string;
  readonly type: "string" | "boolean";
  /** The placeholder of a string flag's value in the help (`SOCKET`), or its choices (`auto|kvm|tcg`). */
  readonly value?: string;
  /** The help text, already wrapped (lines after the first are indented by the help). */
  readonly help: string;
  /** The values a string flag accepts; anything else is a usage error. */
  readonly choices?: readonly string[];
  /** Also a flag of `fennec build` (the build needs it: the Docker engine to import into). */
  readonly build?: boolean;
}

/** One `fennec build` step's outcome: what was built, or why this function has nothing to build. */
export type BuildResult = { readonly built: string } | { readonly nothing: string };

export interface BuildContext<D extends SandboxDriver> {
  /** A progress line for a long step. */
  readonly progress: (line: string) => void;
  /** This kind's driver, created once per `fennec build` run (the node's settings apply). */
  driver(): Promise<D>;
}

/**
 * Everything Fennec knows about one sandbox kind, declared in the kind's own folder
 * (`src/sandbox/drivers/<kind>/kind.ts`) and registered in one list (`drivers/index.ts`): its
 * function.toml table and the config it yields, what the admin API shows of it, its `fennec build`
 * step, its command-line flags and how its driver is created. A kind module imports its driver
 * (and the driver's heavy dependencies) only inside `create` and `build`, so a node that serves no
 * function of a kind never loads them.
 */
export interface SandboxKind<
  K extends keyof SandboxConfigs = keyof SandboxConfigs,
  T extends z.ZodType = z.ZodType,
  D extends SandboxDriver = SandboxDriver,
> extends SandboxTable<K, T> {
  /** `fennec build`: builds (or checks) ahead of time what the sandbox needs to start. */
  build(config: KindConfig<K>, ctx: BuildContext<D>): Promise<BuildResult>;
  /** The driver's settings on the command line. */
  readonly flags?: readonly DriverFlag[];
  /** Creates the driver; undefined when the settings leave this kind off on this node. */
  create(node: NodeContext): Promise<D | undefined>;
  /** How to turn the kind on when `create` left it off, for DRIVER_UNAVAILABLE (`start Fennec with --process`). */
  readonly enableHint?: string;
  /**
   * Whether start-up must run the driver's `cleanupStale` though the registry has no function of
   * this kind: a cheap look for traces of an earlier run. Absent: always.
   */
  hasLeftovers?(): Promise<boolean>;
  /** Once start-up has prepared every function (of every kind): e.g. drop caches of functions now gone. */
  prepared?(driver: D): Promise<void>;
  /** What `/stats` shows of the driver under `backends.<kind>`. */
  status?(driver: D): Record<string, unknown>;
}

/** `built` when something was built. */
export const built = (what: string): BuildResult => ({ built: what });
/** `nothing`: the function starts from what it has; `why` says so. */
export const nothingToBuild = (why: string): BuildResult => ({ nothing: why });
