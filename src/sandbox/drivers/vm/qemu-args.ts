import type { VmSandboxConfig } from "../../../config/function-config.js";

/** What the guest is, which decides its devices and how Fennec reaches it. */
export type GuestKind =
  /** Fennec's Linux guest: its kernel and agent initramfs, the function's root over 9p or a disk. */
  | "fennec-linux"
  /** A `[vm]` with a kernel and no image: the image is the whole guest (a unikernel). */
  | "unikernel"
  /** A `[vm]` with a kernel and a root image of the user's (UniFaaS). */
  | "image";

export type Accel = "kvm" | "tcg";

/** How one QEMU is started: everything the command line depends on. */
export interface QemuPlan {
  readonly vm: VmSandboxConfig;
  readonly guest: GuestKind;
  readonly accel: Accel;
  readonly kernel: string;
  readonly initrd: string | undefined;
  /** The kernel command line, placeholders already substituted. */
  readonly append: string;
  /** The root: a directory shared over 9p, or a disk image (read-only unless `writable`). */
  readonly root:
    { readonly dir: string } | { readonly image: string; readonly writable: boolean } | undefined;
  readonly qmpSocket: string;
  /** Fennec's guest channel (the host listens; QEMU connects), for transport `channel`. */
  readonly channelSocket: string | undefined;
  /** Where the serial console goes (Linux guests); a unikernel's console is its channel. */
  readonly consoleLog: string;
  /** User-mode networking: the loopback port forwarded to the guest's 8080 and the callback forward. */
  readonly userNet: { readonly hostPort: number; readonly callbackPort: number } | undefined;
  /** A tap device for transport `tap`. */
  readonly tap: { readonly name: string; readonly mac: string } | undefined;
  /** The guest's RAM in a file: `share` for the VM a snapshot is taken of, private for clones. */
  readonly ramFile: { readonly path: string; readonly share: boolean } | undefined;
  /** Wait for an incoming migration (a snapshot restore) instead of booting. */
  readonly incoming: boolean;
}

/** Guest-side addresses of QEMU's user-mode network (its documented defaults). */
export const USER_NET = {
  ip: "10.0.2.15",
  gateway: "10.0.2.2",
  netmask: "255.255.255.0",
  /** A guest address QEMU forwards to the host's callback listener (`guestfwd`). */
  callbackHost: "10.0.2.100",
  callbackPort: 3000,
} as const;

function machine(plan: QemuPlan): string {
  const hv = plan.vm.hypervisor;
  const parts = [hv.type === "microvm" ? "microvm" : "pc"];
  if (hv.type === "microvm") {
    // UniFaaS turns on only what the table asks for and leaves the rest at QEMU's defaults.
    for (const key of ["pic", "pit", "rtc", "acpi"] as const) if (hv[key] === true) parts.push(`${key}=on`);
    if (hv["auto-kernel-cmdline"] === false) parts.push("auto-kernel-cmdline=off");
  }
  if (plan.ramFile) parts.push("memory-backend=ram0");
  return parts.join(",");
}

/**
 * QEMU's own seccomp filter (`-sandbox`): no obsolete syscalls, no setuid/setgid or other privilege
 * changes, no scheduler or CPU-affinity control, and no exec/fork — except for a VM that is
 * snapshotted or restored, whose QEMU 7.2 migrates through an `exec:cat` helper (migration to a
 * `file:` URI arrives only in QEMU 8.2). Nothing else QEMU does here spawns a helper: taps are
 * made by Fennec (`script=no`), guestfwd is a plain TCP forward, and `ip netns exec` runs before.
 */
export function sandboxArg(plan: QemuPlan): string {
  const spawn = plan.ramFile ? "allow" : "deny";
  return `on,obsolete=deny,elevateprivileges=deny,spawn=${spawn},resourcecontrol=deny`;
}

/**
 * The QEMU command line of one instance. Devices are virtio-mmio on `microvm` and virtio-pci on
 * `pc` (`qemu`), as UniFaaS chooses them; nothing QEMU would add by default is kept
 * (`-nodefaults`), and a guest reboot ends QEMU (`-no-reboot`), so a guest that dies is seen.
 */
export function qemuArgs(plan: QemuPlan): string[] {
  const bus = plan.vm.hypervisor.type === "microvm" ? "device" : "pci";
  const args = [
    "-M",
    machine(plan),
    "-accel",
    plan.accel,
    // Under TCG, `+arat` (an always-running APIC timer) lets an idle Linux guest stop its tick:
    // 0.4-0.8 % of a core idle instead of 2.7-3.6 % (measured, guest/linux/README.md).
    ...(plan.accel === "kvm" ? ["-cpu", "host"] : ["-cpu", "qemu64,+arat"]),
    "-nodefaults",
    "-no-user-config",
    "-sandbox",
    sandboxArg(plan),
    "-display",
    "none",
    "-no-reboot",
    "-m",
    String(plan.vm.memoryMiB),
    "-smp",
    String(plan.vm.cpus),
    "-kernel",
    plan.kernel,
    ...(plan.initrd ? ["-initrd", plan.initrd] : []),
    "-append",
    plan.append,
    "-qmp",
    `unix:${plan.qmpSocket},server=on,wait=off`,
  ];
  if (plan.ramFile) {
    args.push(
      "-object",
      `memory-backend-file,id=ram0,size=${plan.vm.memoryMiB}M,mem-path=${plan.ramFile.path},share=${plan.ramFile.share ? "on" : "off"}`,
    );
  }
  if (plan.guest === "unikernel") {
    // The unikernel's only device: COM1 is its channel; isa-debug-exit lets it end QEMU on a panic.
    if (plan.channelSocket) args.push("-chardev", `socket,id=fennec0,path=${plan.channelSocket}`);
    args.push("-serial", plan.channelSocket ? "chardev:fennec0" : `file:${plan.consoleLog}`);
    args.push("-device", "isa-debug-exit,iobase=0xf4,iosize=0x04");
  } else {
    args.push("-chardev", `file,id=con,path=${plan.consoleLog}`, "-serial", "chardev:con");
    if (plan.channelSocket) {
      args.push(
        "-chardev",
        `socket,id=fennec0,path=${plan.channelSocket}`,
        "-device",
        `virtio-serial-${bus}`,
        "-device",
        "virtserialport,chardev=fennec0,name=fennec.0",
      );
    }
  }
  if (plan.root && "dir" in plan.root) {
    args.push(
      "-fsdev",
      `local,id=fs0,path=${plan.root.dir},security_model=none,readonly=on`,
      "-device",
      `virtio-9p-${bus},fsdev=fs0,mount_tag=fnroot`,
    );
  } else if (plan.root) {
    args.push(
      "-drive",
      `file=${plan.root.image},if=none,id=d0,format=raw${plan.root.writable ? "" : ",readonly=on"}`,
      "-device",
      `virtio-blk-${bus},drive=d0`,
    );
  }
  if (plan.userNet) {
    const fwd = `hostfwd=tcp:127.0.0.1:${plan.userNet.hostPort}-:8080`;
    const cb = `guestfwd=tcp:${USER_NET.callbackHost}:${USER_NET.callbackPort}-tcp:127.0.0.1:${plan.userNet.callbackPort}`;
    // restrict=on: the guest reaches nothing but the forwarded callback.
    args.push("-netdev", `user,id=n0,restrict=on,${fwd},${cb}`, "-device", `virtio-net-${bus},netdev=n0`);
  }
  if (plan.tap) {
    args.push(
      "-netdev",
      `tap,id=n0,ifname=${plan.tap.name},script=no,downscript=no`,
      "-device",
      `virtio-net-${bus},netdev=n0,mac=${plan.tap.mac}`,
    );
  }
  if (plan.incoming) args.push("-incoming", "defer");
  return args;
}

/** Substitutes the UniFaaS placeholders in a command line (plain string replacement, as UniFaaS). */
export function substituteCmdline(
  cmdline: string,
  values: { ip: string; gateway: string; netmask: string; callback: string },
): string {
  return cmdline
    .replaceAll("%ip", values.ip)
    .replaceAll("%gateway", values.gateway)
    .replaceAll("%netmask", values.netmask)
    .replaceAll("%callback", values.callback);
}
