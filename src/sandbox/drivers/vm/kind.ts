import { join, relative } from "node:path";
import { z } from "zod";
import { envTable, positiveInt } from "../../../config/function-schema.js";
import { built, type SandboxKind } from "../../kind.js";
import type { VmDriver } from "./driver.js";

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
const vmTable = z
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

export interface VmSandboxConfig {
  readonly kind: "vm";
  /** Absolute path of the kernel or unikernel image; undefined: Fennec's own guest kernel. */
  readonly kernel: string | undefined;
  /** Absolute path of the root disk image (block) or directory (9p), UniFaaS style. */
  readonly image: string | undefined;
  readonly memoryMiB: number;
  readonly cpus: number;
  /** Kernel command line with UniFaaS placeholders (`%ip %gateway %netmask %callback`). */
  readonly cmdline: string;
  readonly hypervisor: Readonly<Record<string, unknown>> & {
    readonly type: "firecracker" | "qemu" | "microvm";
  };
  /** Absolute path of a fetch-style handler that Fennec packs into the guest. */
  readonly handler: string | undefined;
  /** argv of a host program that Fennec packs into the guest (it serves on FENNEC_SOCKET). */
  readonly command: readonly string[] | undefined;
  readonly env: Readonly<Record<string, string>>;
  readonly transport: "channel" | "user" | "tap";
  /** Start instances by restoring a snapshot of a booted, ready guest. */
  readonly snapshot: boolean;
}

// Inside the block below, `VmSandboxConfig` would name the config layer's alias of this very entry.
type ThisKindConfig = VmSandboxConfig;
declare module "../../../config/function-config.js" {
  interface SandboxConfigs {
    vm: ThisKindConfig;
  }
}

const ACCEL = ["auto", "kvm", "tcg"] as const;

export const vmKind: SandboxKind<"vm", typeof vmTable, VmDriver> = {
  kind: "vm",
  schema: vmTable,
  toConfig(v, files) {
    const diskType = "disk-type" in v.hypervisor ? v.hypervisor["disk-type"] : "block";
    const placeholders = /%(ip|gateway|netmask|callback)\b/.test(v.cmdline);
    return {
      kind: "vm",
      kernel: v.kernel === undefined ? undefined : files.file(v.kernel, "kernel"),
      image:
        v.image === undefined
          ? undefined
          : diskType === "9p"
            ? files.directory(v.image, "image")
            : files.file(v.image, "image"),
      memoryMiB: v.memory,
      cpus: v.cpus,
      cmdline: v.cmdline,
      hypervisor: v.hypervisor,
      handler: v.handler === undefined ? undefined : files.file(v.handler, "handler"),
      command: v.command,
      env: v.env,
      // A command line with UniFaaS placeholders asks for an IP network; anything else gets the channel.
      // Firecracker has neither a serial channel Fennec can use nor user-mode networking: taps.
      transport:
        v.transport ?? (v.hypervisor.type === "firecracker" ? "tap" : placeholders ? "user" : "channel"),
      snapshot: v.snapshot,
    };
  },
  // A VM's kernel and image are its code: a new one is a new revision (and snapshot).
  code: (s) => [s.kernel, s.image, s.handler],
  image: (c) => (c.sandbox.kernel === undefined ? undefined : relative(c.dir, c.sandbox.kernel)),
  async build(c, ctx) {
    const s = c.sandbox;
    const packs = s.handler !== undefined || s.command !== undefined;
    if (packs) ctx.progress("building the guest's root filesystem");
    const { missing } = await (await ctx.driver()).packRoot(c);
    const hv = s.hypervisor;
    let what = packs
      ? `vm root filesystem in ${c.dir}/.fennec/vm (${hv.type}, ${hv.type === "firecracker" || hv["disk-type"] === "block" ? "ext4 image" : "9p"})`
      : `vm: kernel ${s.kernel}${s.image ? ` and image ${s.image}` : " (a unikernel)"} found`;
    // Booting needs more than this build makes: say what, without failing the build.
    if (missing) what += `; to boot it: ${missing}`;
    return built(what);
  },
  flags: [
    {
      name: "vm-accel",
      type: "string",
      value: ACCEL.join("|"),
      choices: ACCEL,
      help: `accelerator of [vm] guests (default auto: KVM where it works,
else TCG; the choice and why are logged and shown in /stats)`,
    },
    {
      name: "vm-tap-range",
      type: "string",
      value: "CIDR",
      help: `[vm] transport "tap": where the guests' /30s come from
(default 10.100.0.0/16, as UniFaaS)`,
    },
    {
      name: "vm-netns",
      type: "string",
      value: "NAME",
      help: `[vm] transport "tap": create the taps and run QEMU in this network
namespace (Fennec reaches it through Unix sockets)`,
    },
  ],
  async create(node) {
    const { VmDriver } = await import("./driver.js");
    const accel = node.settings["vm-accel"] ?? "auto";
    if (!ACCEL.includes(accel as (typeof ACCEL)[number]))
      throw new Error(`vm-accel expects ${ACCEL.join(", ")}, got ${String(accel)}`);
    const tapRange = node.settings["vm-tap-range"];
    const netns = node.settings["vm-netns"];
    return new VmDriver({
      accel: accel as (typeof ACCEL)[number],
      ...(node.cacheDir ? { snapshotDir: join(node.cacheDir, "vm-snapshots") } : {}),
      ...(typeof tapRange === "string" && tapRange ? { tapRange } : {}),
      ...(typeof netns === "string" && netns ? { netns } : {}),
      log: node.log,
    });
  },
  status: (driver) => ({ accel: driver.accel.accel, reason: driver.accel.reason }),
};
