import { z } from "zod";
import { byteSize } from "./byte-size.js";
import { duration } from "./duration.js";
import type { FunctionFiles } from "./sandbox-table.js";

/**
 * The function.toml schema: UniFaaS's top-level keys unchanged (`keepalive`, `concurrent-requests`,
 * `single-use`) plus Fennec's own; the sandbox tables (`[vm]`, `[container]`, `[wasm]`, ...) are
 * each sandbox kind's own part (`src/sandbox/drivers/<kind>/kind.ts`), joined in by
 * `functionSchemaFor`. Every object is strict so an unknown or misspelt key is an error, not
 * silently ignored.
 */
export const positiveInt = z.int().min(1);
const nonNegativeInt = z.int().min(0);

/**
 * `[oci]` and `[container]`: the program serves HTTP on this TCP port in its own network namespace
 * (a UniFaaS program: 0.0.0.0:8080), not on FENNEC_SOCKET. It gets no network for it: Fennec
 * reaches the port through a relay inside that namespace (port-forwarder.ts), and the port
 * answering is its readiness (it is told `ignore` for a callback it could not reach).
 */
export const servedPort = z.number().int().min(1).max(65535).optional();

/** The config of `servedPort`. */
export interface ServedPortConfig {
  /** The program serves HTTP on this port in its own network namespace, reached through a relay. */
  readonly port?: number | undefined;
}

/** An `env` table: environment variable names to values. */
export const envTable = z.record(
  z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "an environment variable name"),
  z.string(),
);

/**
 * The keys every sandbox that runs a program under limits shares (`[process]`, `[oci]`,
 * `[container]`): a fetch-style `handler` (instead of the kind's own command or image), `env`, and
 * the memory (MiB) and process limits, with the kind's defaults.
 */
export const programKeys = (defaults: { readonly memory: number; readonly pids: number }) => ({
  handler: z.string().min(1).optional(),
  env: envTable.default({}),
  memory: positiveInt.default(defaults.memory),
  pids: positiveInt.default(defaults.pids),
});

/** What `programKeys` become in a sandbox config: the handler's path resolved, the memory in MiB. */
export function programConfig(
  table: {
    readonly handler?: string | undefined;
    readonly env: Record<string, string>;
    readonly memory: number;
    readonly pids: number;
  },
  files: FunctionFiles,
): ProgramConfig {
  return {
    handler: table.handler === undefined ? undefined : files.file(table.handler, "handler"),
    env: table.env,
    memoryMiB: table.memory,
    pids: table.pids,
  };
}

/** The config of `programKeys`, part of each such kind's sandbox config. */
export interface ProgramConfig {
  /** Absolute path of a fetch-style handler, instead of the kind's command or image. */
  readonly handler: string | undefined;
  readonly env: Readonly<Record<string, string>>;
  /** Memory limit in MiB. */
  readonly memoryMiB: number;
  /** Most processes and threads the function may have. */
  readonly pids: number;
}

/**
 * `[async]`: how asynchronous calls of the function are retried. Defaults: 3 attempts, backoff
 * from 1 s doubling up to 5 min (full jitter), calls older than 6 h dead-lettered, no status retried
 * (a status is the function's answer unless it declares it retryable).
 */
const asyncTable = z
  .strictObject({
    attempts: positiveInt.max(100).default(3),
    backoff: duration.default(1000),
    "max-backoff": duration.default(300_000),
    "max-age": duration.default(6 * 3_600_000),
    "retry-statuses": z.array(z.int().min(200).max(599)).default([]),
    concurrency: positiveInt.optional(),
  })
  .superRefine((table, ctx) => {
    if (table.backoff > table["max-backoff"])
      ctx.addIssue({ code: "custom", path: ["backoff"], message: "must not exceed max-backoff" });
    if (table["max-age"] <= 0)
      ctx.addIssue({ code: "custom", path: ["max-age"], message: "must be more than 0" });
  });

const topLevel = {
  keepalive: nonNegativeInt,
  "concurrent-requests": positiveInt,
  "single-use": z.boolean().default(false),
  timeout: z.number().positive().max(3600).default(30),
  "min-instances": nonNegativeInt.default(0),
  "max-instances": positiveInt.default(16),
  "max-queue": nonNegativeInt.default(1000),
  "queue-timeout": z.number().positive().max(3600).default(10),
  "forward-credentials": z.boolean().default(false),
  // Per-function limits; unset, the gateway's own apply (`--body-limit`; no response limit).
  "max-request-body": byteSize.optional(),
  "max-response-body": byteSize.optional(),
  async: asyncTable.default({
    attempts: 3,
    backoff: 1000,
    "max-backoff": 300_000,
    "max-age": 6 * 3_600_000,
    "retry-statuses": [],
  }),
};

/** The keys every function.toml has, whatever its sandbox. */
export type FunctionTomlBase = z.output<z.ZodObject<typeof topLevel>>;

/**
 * A parsed function.toml: the top-level keys, and the one sandbox table, by its kind, as that
 * kind's schema made it (`tables[kind]`).
 */
export type FunctionToml = FunctionTomlBase & { readonly [table: string]: unknown };

/**
 * The whole function.toml schema for these sandbox tables (kind -> schema of its table): each is
 * optional, and exactly one must be present.
 */
export function functionSchemaFor(tables: ReadonlyMap<string, z.ZodType>): z.ZodType<FunctionToml> {
  const kinds = [...tables.keys()];
  const shape: Record<string, z.ZodType> = { ...topLevel };
  for (const [kind, table] of tables) shape[kind] = table.optional();
  return z.strictObject(shape).superRefine((cfg, ctx) => {
    const found = kinds.filter((t) => cfg[t] !== undefined);
    if (found.length !== 1) {
      ctx.addIssue({
        code: "custom",
        path: [],
        message: `expected exactly one sandbox table (${orList(kinds.map((k) => `[${k}]`))}), found ${found.length === 0 ? "none" : found.map((t) => `[${t}]`).join(", ")}`,
      });
    }
    if ((cfg["min-instances"] as number) > (cfg["max-instances"] as number)) {
      ctx.addIssue({ code: "custom", path: ["min-instances"], message: "must not exceed max-instances" });
    }
  }) as unknown as z.ZodType<FunctionToml>;
}

/** `a, b or c`. */
function orList(items: readonly string[]): string {
  return items.length <= 1 ? items.join("") : `${items.slice(0, -1).join(", ")} or ${items.at(-1)}`;
}
