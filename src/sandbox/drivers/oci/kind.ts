import { z } from "zod";
import { programConfig, programKeys, servedPort } from "../../../config/function-schema.js";
import type { ProgramConfig, ServedPortConfig } from "../../../config/function-schema.js";
import { built, nothingToBuild, type SandboxKind } from "../../kind.js";
import type { OciDriver } from "./driver.js";

/** Fennec's `[oci]` table: an OCI bundle run directly by runc or gVisor's runsc, no daemon. */
const ociTable = z
  .strictObject({
    command: z.array(z.string().min(1)).min(1).optional(),
    ...programKeys({ memory: 256, pids: 1024 }),
    runtime: z.enum(["runc", "runsc"]).default("runc"),
    /** A handler's built root: one read-only copy shared by every instance, or an overlay each. */
    rootfs: z.enum(["shared", "overlay"]).default("shared"),
    port: servedPort,
  })
  .refine((p) => (p.command === undefined) !== (p.handler === undefined), {
    message: "expected exactly one of command or handler",
  })
  .refine((p) => p.port === undefined || p.command !== undefined, {
    message: "port goes with command: a handler serves on Fennec's socket",
    path: ["port"],
  })
  .refine((p) => p.rootfs === "shared" || p.handler !== undefined, {
    message:
      'rootfs = "overlay" needs a handler (a command runs on the host\'s directories, bound read-only)',
    path: ["rootfs"],
  });

export interface OciSandboxConfig extends ProgramConfig, ServedPortConfig {
  readonly kind: "oci";
  readonly command: readonly string[] | undefined;
  readonly runtime: "runc" | "runsc";
  /** A handler's built root: shared read-only by every instance, or an overlay per instance. */
  readonly rootfs: "shared" | "overlay";
}

// Inside the block below, `OciSandboxConfig` would name the config layer's alias of this very entry.
type ThisKindConfig = OciSandboxConfig;
declare module "../../../config/function-config.js" {
  interface SandboxConfigs {
    oci: ThisKindConfig;
  }
}

export const ociKind: SandboxKind<"oci", typeof ociTable, OciDriver> = {
  kind: "oci",
  schema: ociTable,
  toConfig: (o, files) => ({
    kind: "oci",
    command: o.command,
    ...programConfig(o, files),
    runtime: o.runtime,
    rootfs: o.rootfs,
    port: o.port,
  }),
  code: (s) => [s.handler],
  image: () => undefined,
  async build(c, ctx) {
    if (!c.sandbox.handler)
      return nothingToBuild("a command runs on the host's directories, bound read-only");
    ctx.progress(`bundling ${c.sandbox.handler} and building its root filesystem`);
    const root = await (await ctx.driver()).rootfs(c);
    return built(`oci root filesystem ${root.dir} (${c.sandbox.rootfs}, ${c.sandbox.runtime})`);
  },
  async create() {
    const { OciDriver } = await import("./driver.js");
    return new OciDriver();
  },
};
