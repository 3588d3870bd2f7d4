import { z } from "zod";

/**
 * The function.toml schema: UniFaaS keys unchanged (`keepalive`, `concurrent-requests`,
 * `single-use`, `[vm]`, `[container]`), plus Fennec's own keys and its `[wasm]` and `[process]` tables.
 * Every object is strict so an unknown or misspelt key is an error, not silently ignored.
 */
const positiveInt = z.int().min(1);
const nonNegativeInt = z.int().min(0);
const envTable = z.record(
  z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "an environment variable name"),
  z.string(),
);

export const wasmTable = z.strictObject({
  module: z.string().min(1),
  memory: positiveInt.max(4096).default(64),
  env: envTable.default({}),
  dirs: z
    .record(z.string().regex(/^\/[A-Za-z0-9._/-]*$/, "an absolute guest path"), z.string().min(1))
    .default({}),
});

const firecracker = z.strictObject({
  type: z.literal("firecracker"),
  "copy-rootfs": z.boolean().default(true),
});
const diskType = z.enum(["9p", "block"]);
const qemu = z.strictObject({ type: z.literal("qemu"), "disk-type": diskType });
const microvm = z.strictObject({
  type: z.literal("microvm"),
  "disk-type": diskType,
  pic: z.boolean().default(false),
  pit: z.boolean().default(false),
  rtc: z.boolean().default(false),
  acpi: z.boolean().default(false),
  "auto-kernel-cmdline": z.boolean().default(true),
});

export const vmTable = z.strictObject({
  kernel: z.string().min(1),
  image: z.string().min(1).optional(),
  memory: positiveInt.default(128),
  cpus: positiveInt.default(1),
  cmdline: z.string(),
  hypervisor: z.discriminatedUnion("type", [firecracker, qemu, microvm]),
});

/**
 * The UniFaaS `[container]` table, unchanged (`image`, `memory` as memory and swap limit, `runtime`
 * as named in /etc/docker/daemon.json), plus Fennec's keys: a fetch-style `handler` instead of an
 * image (`fennec build` makes the image), `env`, `pids` and `network`.
 */
export const containerTable = z
  .strictObject({
    image: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$/, "a Docker image reference such as name:tag")
      .optional(),
    handler: z.string().min(1).optional(),
    memory: positiveInt.default(128),
    runtime: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, "a runtime name from /etc/docker/daemon.json")
      .optional(),
    env: envTable.default({}),
    pids: positiveInt.default(1024),
    /** `none`: no IP network (the socket transport only); `host`: the callback reaches the gateway. */
    network: z.enum(["none", "host"]).default("none"),
  })
  .refine((c) => (c.image === undefined) !== (c.handler === undefined), {
    message: "expected exactly one of image or handler",
  });

/** Fennec's `[process]` table: a plain child process serving HTTP (development and baselines). */
const processTable = z
  .strictObject({
    /** argv of a program that serves HTTP and calls back (the UniFaaS guest contract). */
    command: z.array(z.string().min(1)).min(1).optional(),
    /** A fetch-style JS/TS handler, run by Fennec's handler runtime. */
    handler: z.string().min(1).optional(),
    env: envTable.default({}),
    transport: z.enum(["unix", "tcp"]).default("unix"),
    memory: positiveInt.default(256),
    /** Run inside bubblewrap namespaces (no network, read-only filesystem) with cgroup limits. */
    isolate: z.boolean().default(false),
    /** Most processes and threads the function may have when isolated (a fork bomb stops here). */
    pids: positiveInt.default(512),
  })
  .refine((p) => (p.command === undefined) !== (p.handler === undefined), {
    message: "expected exactly one of command or handler",
  })
  .refine((p) => !p.isolate || p.transport === "unix", {
    message: 'an isolated process has no network: use transport = "unix"',
  });

/** Fennec's `[oci]` table: an OCI bundle run directly by runc or gVisor's runsc, no daemon. */
const ociTable = z
  .strictObject({
    command: z.array(z.string().min(1)).min(1).optional(),
    handler: z.string().min(1).optional(),
    runtime: z.enum(["runc", "runsc"]).default("runc"),
    env: envTable.default({}),
    memory: positiveInt.default(256),
    pids: positiveInt.default(1024),
    /** A handler's built root: one read-only copy shared by every instance, or an overlay each. */
    rootfs: z.enum(["shared", "overlay"]).default("shared"),
  })
  .refine((p) => (p.command === undefined) !== (p.handler === undefined), {
    message: "expected exactly one of command or handler",
  })
  .refine((p) => p.rootfs === "shared" || p.handler !== undefined, {
    message:
      'rootfs = "overlay" needs a handler (a command runs on the host\'s directories, bound read-only)',
    path: ["rootfs"],
  });

export const functionSchema = z
  .strictObject({
    keepalive: nonNegativeInt,
    "concurrent-requests": positiveInt,
    "single-use": z.boolean().default(false),
    timeout: z.number().positive().max(3600).default(30),
    "min-instances": nonNegativeInt.default(0),
    "max-instances": positiveInt.default(16),
    "max-queue": nonNegativeInt.default(1000),
    "queue-timeout": z.number().positive().max(3600).default(10),
    wasm: wasmTable.optional(),
    vm: vmTable.optional(),
    container: containerTable.optional(),
    process: processTable.optional(),
    oci: ociTable.optional(),
  })
  .superRefine((cfg, ctx) => {
    const tables = (["wasm", "vm", "container", "process", "oci"] as const).filter(
      (t) => cfg[t] !== undefined,
    );
    if (tables.length !== 1) {
      ctx.addIssue({
        code: "custom",
        path: [],
        message: `expected exactly one sandbox table ([wasm], [vm], [container], [process] or [oci]), found ${tables.length === 0 ? "none" : tables.map((t) => `[${t}]`).join(", ")}`,
      });
    }
    if (cfg["min-instances"] > cfg["max-instances"]) {
      ctx.addIssue({ code: "custom", path: ["min-instances"], message: "must not exceed max-instances" });
    }
  });

export type FunctionToml = z.output<typeof functionSchema>;
