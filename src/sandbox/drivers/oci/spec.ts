import { SANDBOX_USER } from "../../unprivileged.js";
import { seccompProfile } from "../../seccomp.js";

/** A bind mount of a host path into the container. */
export interface BindMount {
  readonly source: string;
  readonly destination: string;
  readonly writable: boolean;
}

export interface SpecOptions {
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  readonly cwd: string;
  /** The root: a built one (shared or an overlay), or an empty directory the binds fill. */
  readonly rootfs: string;
  /** Default true; false for an instance's own copy-on-write overlay. */
  readonly readonlyRoot?: boolean;
  readonly binds: readonly BindMount[];
  readonly memoryBytes: number;
  readonly pids: number;
  readonly cgroupsPath: string;
}

/**
 * The OCI runtime spec (config.json) of one instance: the unprivileged sandbox user (never the
 * host's root), Fennec's seccomp allowlist (seccomp.ts), no new privileges, every capability
 * dropped, a read-only root (unless it is the instance's own overlay), a writable /tmp, memory and
 * pids limits through cgroups, its own network namespace with nothing in it (no IP network), and
 * host directories bind-mounted read-only (programs and libraries) or read-write (the instance's
 * socket directory, owned by the sandbox user).
 */
export function ociSpec(o: SpecOptions): Record<string, unknown> {
  const none: string[] = [];
  return {
    ociVersion: "1.0.2",
    process: {
      terminal: false,
      user: { uid: SANDBOX_USER.uid, gid: SANDBOX_USER.gid, additionalGids: [] },
      args: o.args,
      env: Object.entries(o.env).map(([k, v]) => `${k}=${v}`),
      cwd: o.cwd,
      capabilities: { bounding: none, effective: none, inheritable: none, permitted: none, ambient: none },
      rlimits: [{ type: "RLIMIT_NOFILE", hard: 4096, soft: 4096 }],
      noNewPrivileges: true,
    },
    root: { path: o.rootfs, readonly: o.readonlyRoot ?? true },
    hostname: "fennec",
    mounts: [
      { destination: "/proc", type: "proc", source: "proc" },
      {
        destination: "/dev",
        type: "tmpfs",
        source: "tmpfs",
        options: ["nosuid", "strictatime", "mode=755", "size=65536k"],
      },
      {
        destination: "/dev/pts",
        type: "devpts",
        source: "devpts",
        options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
      },
      {
        destination: "/dev/shm",
        type: "tmpfs",
        source: "shm",
        options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
      },
      { destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"] },
      {
        destination: "/tmp",
        type: "tmpfs",
        source: "tmpfs",
        options: ["nosuid", "nodev", "mode=1777", "size=65536k"],
      },
      ...o.binds.map((b) => ({
        destination: b.destination,
        type: "bind",
        source: b.source,
        options: ["rbind", b.writable ? "rw" : "ro", "nosuid", "nodev"],
      })),
    ],
    linux: {
      resources: {
        memory: { limit: o.memoryBytes },
        pids: { limit: o.pids },
        devices: [{ allow: false, access: "rwm" }],
      },
      cgroupsPath: o.cgroupsPath,
      seccomp: seccompProfile(),
      namespaces: [{ type: "pid" }, { type: "network" }, { type: "ipc" }, { type: "uts" }, { type: "mount" }],
      maskedPaths: [
        "/proc/acpi",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/sys/firmware",
        "/proc/scsi",
      ],
      readonlyPaths: [
        "/proc/asound",
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
      ],
    },
  };
}
