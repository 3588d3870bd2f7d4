import type { z } from "zod";
import { FennecError } from "../core/errors.js";
import type { FunctionConfig, SandboxConfigs } from "./function-config.js";

/** A function whose sandbox is of kind `K`, its config narrowed to that kind's. */
export type KindConfig<K extends keyof SandboxConfigs> = FunctionConfig & {
  readonly sandbox: SandboxConfigs[K];
};

/** The `[kind]` table of a function a driver of that kind was handed; INTERNAL for another kind's. */
export function sandboxOf<K extends keyof SandboxConfigs>(
  config: FunctionConfig,
  kind: K,
): SandboxConfigs[K] {
  if (config.sandbox.kind !== kind) {
    const article = /^[aeiou]/.test(kind) ? "an" : "a";
    throw new FennecError("INTERNAL", `${config.key} is not ${article} ${kind} function`);
  }
  return config.sandbox as SandboxConfigs[K];
}

/**
 * Paths from a sandbox table, resolved inside the function directory (never outside it, and with
 * the same error whether or not something exists there). `key` is the key within the table; the
 * error names it with the table (`vm.kernel`).
 */
export interface FunctionFiles {
  file(rel: string, key: string): string;
  directory(rel: string, key: string): string;
}

/**
 * A sandbox kind's part of function.toml: the `[kind]` table's schema, and how a validated table
 * becomes the typed config its driver reads. Each kind declares its own (`drivers/<kind>/kind.ts`).
 */
export interface SandboxTable<
  K extends keyof SandboxConfigs = keyof SandboxConfigs,
  T extends z.ZodType = z.ZodType,
> {
  /** The table's name in function.toml, the config's `kind`, the driver's key. */
  readonly kind: K;
  readonly schema: T;
  /** The typed config of a table the schema accepted; paths resolved through `files`. */
  toConfig(table: z.output<T>, files: FunctionFiles): SandboxConfigs[K];
  /** Files the function's code lives in: a change to one is a new revision (instances recycle). */
  code(config: SandboxConfigs[K]): ReadonlyArray<string | undefined>;
  /**
   * What the admin API shows as the function's `image`: its module, image reference or kernel (a
   * path relative to the function directory), or undefined when it has none of its own.
   */
  image(config: KindConfig<K>): string | undefined;
}
