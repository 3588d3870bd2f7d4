/**
 * Fennec's seccomp profile for OCI containers, as the `linux.seccomp` section of config.json.
 *
 * Anchor: Docker's default seccomp profile (moby `profiles/seccomp/default.json`, described at
 * https://docs.docker.com/engine/security/seccomp/). It is an allowlist: every syscall not named
 * fails with EPERM. Written here as data, for a container that holds no capabilities at all, so
 * Docker's groups that are allowed only with a capability (CAP_SYS_ADMIN: mount, unshare, setns,
 * bpf, perf_event_open, …; CAP_SYS_PTRACE, CAP_SYS_MODULE, CAP_SYS_TIME, CAP_SYS_BOOT, …) are left
 * out, and so are the syscalls Docker never allows (keyctl, add_key, request_key, kexec_*,
 * *_module, acct, swapon, reboot, userfaultfd, …).
 *
 * Deliberately stricter than Docker's default:
 * - ptrace, process_vm_readv/writev, kcmp: Docker allows them on kernels ≥ 4.8; a function needs
 *   none of them, and each one is a way to read or steer another process of the same uid.
 * - io_uring_*: Docker ≥ 25 blocks them too (a large, often-exploited kernel surface); libuv falls
 *   back to its thread pool.
 * Shaped like Docker's: `clone` only without namespace flags, `clone3` fails with ENOSYS (so libc
 * falls back to `clone`, whose flags a filter can see), `personality` only for the harmless
 * personas, `socket` for every family but AF_VSOCK.
 */

// prettier-ignore
const ALLOWED = [
  // files and directories
  "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range", "creat",
  "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
  "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64",
  "fdatasync", "fgetxattr", "flistxattr", "flock", "fremovexattr", "fsetxattr", "fstat", "fstat64",
  "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futimesat", "getcwd",
  "getdents", "getdents64", "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1",
  "inotify_rm_watch", "ioctl", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listxattr",
  "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "mkdir",
  "mkdirat", "mknod", "mknodat", "newfstatat", "open", "openat", "openat2", "pread64", "preadv",
  "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat",
  "readv", "removexattr", "rename", "renameat", "renameat2", "rmdir", "sendfile", "sendfile64",
  "setxattr", "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat",
  "sync", "sync_file_range", "syncfs", "tee", "truncate", "truncate64", "umask", "unlink",
  "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vmsplice", "write", "writev",
  "fanotify_mark", "memfd_create", "memfd_secret",
  // asynchronous I/O (the classic kind; not io_uring)
  "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "io_setup",
  "io_submit", "ioprio_get", "ioprio_set",
  // polling, events, pipes, timers
  "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2",
  "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "pipe", "pipe2", "poll", "ppoll",
  "ppoll_time64", "pselect6", "pselect6_time64", "select", "_newselect", "signalfd", "signalfd4",
  "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64",
  "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64",
  "timer_settime", "timer_settime64", "alarm", "getitimer", "setitimer", "pause",
  // time
  "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
  "clock_nanosleep_time64", "gettimeofday", "nanosleep", "time", "times",
  // memory
  "brk", "madvise", "membarrier", "mincore", "mlock", "mlock2", "mlockall", "mmap", "mmap2",
  "mprotect", "mremap", "msync", "munlock", "munlockall", "munmap", "pkey_alloc", "pkey_free",
  "pkey_mprotect", "remap_file_pages", "map_shadow_stack",
  // processes, threads, signals
  "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "vfork", "futex",
  "futex_requeue", "futex_time64", "futex_wait", "futex_waitv", "futex_wake", "get_robust_list",
  "set_robust_list", "getcpu", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom",
  "getrlimit", "ugetrlimit", "getrusage", "getsid", "gettid", "kill", "tgkill", "tkill",
  "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64", "process_mrelease", "restart_syscall",
  "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
  "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo",
  "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_get_priority_max",
  "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval",
  "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr", "sched_setparam",
  "sched_setscheduler", "sched_yield", "seccomp", "setpgid", "setpriority", "setrlimit", "setsid",
  "set_tid_address", "sigaltstack", "sigprocmask", "sigreturn", "wait4", "waitid", "waitpid",
  "get_thread_area", "set_thread_area", "sysinfo", "uname", "landlock_add_rule",
  "landlock_create_ruleset", "landlock_restrict_self",
  // credentials (without capabilities these can only drop or shuffle the ids the process has)
  "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32",
  "getresgid", "getresgid32", "getresuid", "getresuid32", "getuid", "getuid32", "setfsgid",
  "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32",
  "setregid", "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid",
  "setreuid32", "setuid", "setuid32",
  // sockets (the container has no network interface but loopback; Unix sockets are its transport)
  "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt", "listen",
  "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg", "sendmsg",
  "sendto", "setsockopt", "shutdown", "socketcall", "socketpair",
  // System V and POSIX IPC (in the container's own IPC namespace)
  "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64",
  "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl", "msgget", "msgrcv", "msgsnd",
  "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "shmat", "shmctl", "shmdt",
  "shmget",
];

/** Per-architecture extras, as Docker's profile has them. */
const ARCH_ALLOWED: Record<string, readonly string[]> = {
  x64: ["arch_prctl", "modify_ldt"],
  arm64: [
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
  ],
};

/** libseccomp's names of the architectures a process on this host may use. */
const ARCHITECTURES: Record<string, readonly string[]> = {
  x64: ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
  arm64: ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
};

const EPERM = 1;
const AF_VSOCK = 40;
/** CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET. */
const CLONE_NAMESPACE_FLAGS = 0x7e020000;
/** PER_LINUX, UNAME26, PER_LINUX32, PER_LINUX32|UNAME26, and the query 0xffffffff. */
const HARMLESS_PERSONAS = [0x0, 0x0008, 0x20000, 0x20008, 0xffffffff];

/** Syscall names this profile allows unconditionally on an architecture. */
function allowedSyscalls(arch: string = process.arch): readonly string[] {
  return [...ALLOWED, ...(ARCH_ALLOWED[arch] ?? [])];
}

/** The `linux.seccomp` section of an OCI config.json for this host's architecture. */
export function seccompProfile(arch: string = process.arch): Record<string, unknown> {
  return {
    defaultAction: "SCMP_ACT_ERRNO",
    defaultErrnoRet: EPERM,
    architectures: ARCHITECTURES[arch] ?? [],
    syscalls: [
      { names: allowedSyscalls(arch), action: "SCMP_ACT_ALLOW" },
      {
        names: ["clone"],
        action: "SCMP_ACT_ALLOW",
        args: [{ index: 0, value: CLONE_NAMESPACE_FLAGS, valueTwo: 0, op: "SCMP_CMP_MASKED_EQ" }],
      },
      // Docker answers clone3 with errnoRet ENOSYS; this runsc ignores errnoRet (EPERM, which libc
      // does not fall back from: no thread could start). SCMP_ACT_TRACE with no tracer attached
      // fails the call with ENOSYS on Linux (seccomp(2)) and in gVisor alike.
      { names: ["clone3"], action: "SCMP_ACT_TRACE" },
      {
        names: ["socket"],
        action: "SCMP_ACT_ALLOW",
        args: [{ index: 0, value: AF_VSOCK, op: "SCMP_CMP_NE" }],
      },
      ...HARMLESS_PERSONAS.map((persona) => ({
        names: ["personality"],
        action: "SCMP_ACT_ALLOW",
        args: [{ index: 0, value: persona, op: "SCMP_CMP_EQ" }],
      })),
    ],
  };
}
