import { z } from "zod";
import { programConfig, programKeys, type ProgramConfig } from "../../../config/function-schema.js";
import { built, nothingToBuild, type SandboxKind } from "../../kind.js";
import type { ProcessDriver } from "./driver.js";

/** Fennec's `[process]` table: a plain child process serving HTTP (development and baselines). */
const processTable = z
  .strictObject({
    /** argv of a program that serves HTTP and calls back (the UniFaaS guest contract). */
    command: z.array(z.string().min(1)).min(1).optional(),
    /** A `handler` is a fetch-style JS/TS file, run by Fennec's handler runtime; `pids` applies when isolated. */
    ...programKeys({ memory: 256, pids: 512 }),
    transport: z.enum(["unix", "tcp"]).default("unix"),
    /** Run inside bubblewrap namespaces (no network, read-only filesystem) with cgroup limits. */
    isolate: z.boolean().default(false),
  })
  .refine((p) => (p.command === undefined) !== (p.handler === undefined), {
    message: "expected exactly one of command or handler",
  })
  .refine((p) => !p.isolate || p.transport === "unix", {
    message: 'an isolated process has no network: use transport = "unix"',
  });

export interface ProcessSandboxConfig extends ProgramConfig {
  readonly kind: "process";
  /** argv; the readiness callback URL is appended as the last argument (UniFaaS contract). */
  readonly command: readonly string[] | undefined;
  /** `unix`: serve HTTP on the socket in FENNEC_SOCKET; `tcp`: on 127.0.0.1:$PORT. */
  readonly transport: "unix" | "tcp";
  /** Inside bubblewrap namespaces with cgroup memory and pids limits. */
  readonly isolate: boolean;
}

// Inside the block below, `ProcessSandboxConfig` would name the config layer's alias of this very entry.
type ThisKindConfig = ProcessSandboxConfig;
declare module "../../../config/function-config.js" {
  interface SandboxConfigs {
    process: ThisKindConfig;
  }
}

export const processKind: SandboxKind<"process", typeof processTable, ProcessDriver> = {
  kind: "process",
  schema: processTable,
  toConfig: (p, files) => ({
    kind: "process",
    command: p.command,
    ...programConfig(p, files),
    transport: p.transport,
    isolate: p.isolate,
  }),
  code: (s) => [s.handler],
  image: () => undefined,
  async build(c) {
    if (!c.sandbox.handler) return nothingToBuild("a command runs as it is");
    const { buildHandler } = await import("../../handler-build.js");
    return built(`handler bundled into ${await buildHandler(c, c.sandbox.handler)}`);
  },
  flags: [
    {
      name: "process",
      type: "boolean",
      help: `enable the [process] sandbox: functions run as plain host
processes, without isolation (development and baselines)`,
    },
  ],
  // Off unless asked for: anyone who can deploy could run commands on this host.
  async create(node) {
    if (node.settings["process"] !== true) return undefined;
    const { ProcessDriver } = await import("./driver.js");
    return new ProcessDriver();
  },
  enableHint: "start Fennec with --process to enable it",
};
