/**
 * A seccomp deny-list compiled to classic BPF, for bubblewrap's `--seccomp FD` (which takes a
 * compiled program, not Docker's JSON profile) without a native dependency such as libseccomp.
 *
 * What it denies is the kernel surface Docker's default profile keeps from a container and that a
 * function never needs: new namespaces and mounts (so no nested user namespace to regain
 * capabilities in), the kernel keyring, eBPF, ptrace and cross-process memory access, module and
 * kexec loading, file handles (`open_by_handle_at`, the "shocker" escape), perf, userfaultfd and
 * io_uring. Everything else is allowed: this is a deny-list, narrower than Docker's allowlist.
 * A syscall of a foreign ABI (i386 `int 0x80` on x86_64, x32) would get around a filter keyed by
 * syscall number, so the program checks the architecture first and kills the process on any other.
 */

/** The denied calls, by name; their numbers per architecture are in SYSCALLS. */
export const DENIED_SYSCALLS = [
  "unshare",
  "setns",
  "mount",
  "umount2",
  "pivot_root",
  "open_tree",
  "move_mount",
  "fsopen",
  "fsconfig",
  "fsmount",
  "fspick",
  "mount_setattr",
  "keyctl",
  "add_key",
  "request_key",
  "bpf",
  "ptrace",
  "process_vm_readv",
  "process_vm_writev",
  "kexec_load",
  "kexec_file_load",
  "init_module",
  "finit_module",
  "delete_module",
  "open_by_handle_at",
  "perf_event_open",
  "userfaultfd",
  "io_uring_setup",
  "io_uring_enter",
  "io_uring_register",
] as const;

type Name = (typeof DENIED_SYSCALLS)[number] | "clone" | "clone3";

/**
 * Syscall numbers (x86_64: asm/unistd_64.h; arm64: asm-generic/unistd.h, checked against the
 * headers by test/unit/seccomp.test.ts) and each architecture's AUDIT_ARCH value.
 */
export const SYSCALLS: Record<"x64" | "arm64", { auditArch: number; nr: Record<Name, number> }> = {
  x64: {
    auditArch: 0xc000003e,
    nr: {
      unshare: 272,
      setns: 308,
      mount: 165,
      umount2: 166,
      pivot_root: 155,
      open_tree: 428,
      move_mount: 429,
      fsopen: 430,
      fsconfig: 431,
      fsmount: 432,
      fspick: 433,
      mount_setattr: 442,
      keyctl: 250,
      add_key: 248,
      request_key: 249,
      bpf: 321,
      ptrace: 101,
      process_vm_readv: 310,
      process_vm_writev: 311,
      kexec_load: 246,
      kexec_file_load: 320,
      init_module: 175,
      finit_module: 313,
      delete_module: 176,
      open_by_handle_at: 304,
      perf_event_open: 298,
      userfaultfd: 323,
      io_uring_setup: 425,
      io_uring_enter: 426,
      io_uring_register: 427,
      clone: 56,
      clone3: 435,
    },
  },
  arm64: {
    auditArch: 0xc00000b7,
    nr: {
      unshare: 97,
      setns: 268,
      mount: 40,
      umount2: 39,
      pivot_root: 41,
      open_tree: 428,
      move_mount: 429,
      fsopen: 430,
      fsconfig: 431,
      fsmount: 432,
      fspick: 433,
      mount_setattr: 442,
      keyctl: 219,
      add_key: 217,
      request_key: 218,
      bpf: 280,
      ptrace: 117,
      process_vm_readv: 270,
      process_vm_writev: 271,
      kexec_load: 104,
      kexec_file_load: 294,
      init_module: 105,
      finit_module: 273,
      delete_module: 106,
      open_by_handle_at: 265,
      perf_event_open: 241,
      userfaultfd: 282,
      io_uring_setup: 425,
      io_uring_enter: 426,
      io_uring_register: 427,
      clone: 220,
      clone3: 435,
    },
  },
};

/** clone(2) flags that make a new namespace: clone is allowed only without them. */
export const CLONE_NAMESPACE_FLAGS =
  0x00000080 /* NEWTIME */ |
  0x00020000 /* NEWNS */ |
  0x02000000 /* NEWCGROUP */ |
  0x04000000 /* NEWUTS */ |
  0x08000000 /* NEWIPC */ |
  0x10000000 /* NEWUSER */ |
  0x20000000 /* NEWPID */ |
  0x40000000; /* NEWNET */

const EPERM = 1;
const ENOSYS = 38;
/** x86_64's x32 ABI marks its syscall numbers with this bit. */
const X32_SYSCALL_BIT = 0x40000000;

// Classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
const LD_W_ABS = 0x20;
const JEQ_K = 0x15;
const JGE_K = 0x35;
const JSET_K = 0x45;
const RET_K = 0x06;
const RET_KILL_PROCESS = 0x80000000;
const RET_ERRNO = 0x00050000;
const RET_ALLOW = 0x7fff0000;
// Offsets in struct seccomp_data: nr, arch, instruction_pointer, args[6] (the low word of args[0]
// on a little-endian machine, which holds all of clone's namespace flags).
const OFF_NR = 0;
const OFF_ARCH = 4;
const OFF_ARG0_LOW = 16;

type Target = "kill" | "eperm" | "enosys" | "allow" | "cloneFlags";
type Insn = { code: number; k: number; jt?: Target; jf?: Target };

/**
 * The filter for `arch` (a `process.arch` value) as bwrap reads it: struct sock_filter entries
 * (u16 code, u8 jt, u8 jf, u32 k) in the machine's byte order, which both supported ones share.
 */
export function denyListFilter(arch: string = process.arch): Buffer {
  if (arch !== "x64" && arch !== "arm64")
    throw new Error(`no seccomp filter for ${arch}: isolated processes need x86_64 or arm64`);
  const table = SYSCALLS[arch];
  const body: Insn[] = [
    { code: LD_W_ABS, k: OFF_ARCH },
    { code: JEQ_K, k: table.auditArch, jf: "kill" },
    { code: LD_W_ABS, k: OFF_NR },
  ];
  if (arch === "x64") body.push({ code: JGE_K, k: X32_SYSCALL_BIT, jt: "eperm" });
  for (const name of DENIED_SYSCALLS) body.push({ code: JEQ_K, k: table.nr[name], jt: "eperm" });
  // clone3 passes its flags in memory a filter cannot read; ENOSYS makes libc fall back to clone
  // (as Docker's profile does), whose flags it can.
  body.push({ code: JEQ_K, k: table.nr.clone3, jt: "enosys" });
  body.push({ code: JEQ_K, k: table.nr.clone, jt: "cloneFlags" });
  body.push({ code: RET_K, k: RET_ALLOW });
  const blocks: Record<Target, Insn[]> = {
    cloneFlags: [
      { code: LD_W_ABS, k: OFF_ARG0_LOW },
      { code: JSET_K, k: CLONE_NAMESPACE_FLAGS, jt: "eperm" },
      { code: RET_K, k: RET_ALLOW },
    ],
    kill: [{ code: RET_K, k: RET_KILL_PROCESS }],
    eperm: [{ code: RET_K, k: RET_ERRNO | EPERM }],
    enosys: [{ code: RET_K, k: RET_ERRNO | ENOSYS }],
    allow: [{ code: RET_K, k: RET_ALLOW }],
  };
  const program = [...body];
  const at = {} as Record<Target, number>;
  for (const target of ["cloneFlags", "kill", "eperm", "enosys", "allow"] as const) {
    at[target] = program.length;
    program.push(...blocks[target]);
  }
  const out = Buffer.alloc(program.length * 8);
  program.forEach((insn, i) => {
    // Jumps are relative to the next instruction and must go forward within a byte.
    const rel = (t: Target | undefined) => {
      if (t === undefined) return 0;
      const off = at[t] - (i + 1);
      if (off < 0 || off > 255) throw new Error(`seccomp jump out of range: ${off}`);
      return off;
    };
    out.writeUInt16LE(insn.code, i * 8);
    out.writeUInt8(rel(insn.jt), i * 8 + 2);
    out.writeUInt8(rel(insn.jf), i * 8 + 3);
    out.writeUInt32LE(insn.k >>> 0, i * 8 + 4);
  });
  return out;
}
