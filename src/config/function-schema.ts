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
/** UniFaaS requires `disk-type`; Fennec defaults it (a unikernel has no disk at all). */
const diskType = z.enum(["9p", "block"]).default("9p");
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

/**
 * The UniFaaS `[vm]` table unchanged (`kernel`, `image`, `memory`, `cpus`, `cmdline` with
 * `%ip %gateway %netmask %callback`, `hypervisor`), plus Fennec's keys: a fetch-style `handler` or a
 * `command` that Fennec packs into a root filesystem and boots with its own guest kernel, `env`,
 * `transport` and `snapshot`.
 */
export const vmTable = z
  .strictObject({
    kernel: z.string().min(1).optional(),
    image: z.string().min(1).optional(),
    memory: positiveInt.max(65536).default(128),
    cpus: positiveInt.max(64).default(1),
    cmdline: z.string().default(""),
    hypervisor: z.discriminatedUnion("type", [firecracker, qemu, microvm]),
    handler: z.string().min(1).optional(),
    command: z.array(z.string().min(1)).min(1).optional(),
    env: envTable.default({}),
    /**
     * `channel`: Fennec's guest channel (docs/guest-channel.md), no IP network; `user`: QEMU
     * user-mode networking, the guest serves on port 8080 and calls `%callback`; `tap`: UniFaaS taps.
     */
    transport: z.enum(["channel", "user", "tap"]).optional(),
    /** Boot once, snapshot the ready guest, start later instances by restoring it (SnapFaaS). */
    snapshot: z.boolean().default(false),
  })
  .refine((v) => [v.handler, v.command].filter((x) => x !== undefined).length <= 1, {
    message: "expected at most one of handler or command",
  })
  .refine((v) => v.handler !== undefined || v.command !== undefined || v.kernel !== undefined, {
    message: "expected kernel (an image to boot), or handler or command (Fennec builds the guest)",
  })
  .refine((v) => (v.handler === undefined && v.command === undefined) || v.image === undefined, {
    message: "image goes with kernel: with handler or command, Fennec builds the root filesystem",
  })
  .refine((v) => v.hypervisor.type !== "firecracker" || v.transport === undefined || v.transport === "tap", {
    message: 'Fennec reaches Firecracker guests over taps only: transport = "tap" (the default for it)',
  })
  .refine((v) => v.hypervisor.type !== "firecracker" || !v.snapshot, {
    message: "snapshot = true is supported on QEMU (microvm, qemu) only",
  })
  .refine((v) => v.hypervisor.type !== "firecracker" || v.image !== undefined || v.command !== undefined, {
    message:
      "a Firecracker guest is reached over a tap: it needs a root image or a command that serves on the guest's network (a handler and Fennec's unikernel speak over channels Firecracker does not offer)",
  })
  .refine((v) => v.handler === undefined || v.transport === undefined || v.transport === "channel", {
    message:
      'a handler is reached through the guest channel; transport "user" and "tap" are for programs that serve on the guest\'s network (a command, or a UniFaaS image)',
  })
  // QEMU refuses to migrate a guest with a 9p share mounted, and a snapshot is a migration.
  .refine(
    (v) =>
      !v.snapshot ||
      !("disk-type" in v.hypervisor) ||
      v.hypervisor["disk-type"] !== "9p" ||
      (!v.image && !v.handler && !v.command),
    {
      message:
        'QEMU cannot snapshot a guest whose root is shared over 9p: use disk-type = "block" with snapshot = true',
    },
  )
  // guest.conf, which carries them into the guest, is line-based.
  .refine((v) => ![...Object.values(v.env), ...(v.command ?? [])].some((x) => /[\n\r\0]/.test(x)), {
    message: "env values and command arguments must be single lines",
  });

/**
 * `[oci]` and `[container]`: the program serves HTTP on this TCP port in its own network namespace
 * (a UniFaaS program: 0.0.0.0:8080), not on FENNEC_SOCKET. It gets no network for it: Fennec
 * reaches the port through a relay inside that namespace (port-forwarder.ts), and the port
 * answering is its readiness (it is told `ignore` for a callback it could not reach).
 */
const servedPort = z.number().int().min(1).max(65535).optional();

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
    port: servedPort,
  })
  .refine((c) => (c.image === undefined) !== (c.handler === undefined), {
    message: "expected exactly one of image or handler",
  })
  .refine((c) => c.port === undefined || (c.image !== undefined && c.network === "none"), {
    message:
      'port goes with image and network = "none": Fennec relays to it inside the container\'s own namespace',
    path: ["port"],
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
    "forward-credentials": z.boolean().default(false),
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
