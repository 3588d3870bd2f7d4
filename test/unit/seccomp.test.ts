import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import {
  CLONE_NAMESPACE_FLAGS,
  denyListFilter,
  DENIED_SYSCALLS,
  SYSCALLS,
} from "../../src/sandbox/drivers/process/seccomp.js";

// The kernel runs the program for real in test/unit/process-isolation.test.ts; here a small
// classic-BPF interpreter checks every path of it, on both architectures, and the syscall tables
// are checked against the kernel headers (linux-libc-dev) rather than trusted.
const KILL = 0x80000000;
const ALLOW = 0x7fff0000;
const errno = (n: number) => 0x00050000 | n;

/** Runs `program` on a seccomp_data of (nr, arch, args[0]) as the kernel would. */
function runFilter(program: Buffer, nr: number, arch: number, arg0 = 0): number {
  const data = Buffer.alloc(64);
  data.writeUInt32LE(nr >>> 0, 0);
  data.writeUInt32LE(arch >>> 0, 4);
  data.writeUInt32LE(arg0 >>> 0, 16);
  let acc = 0;
  for (let pc = 0; pc < program.length / 8;) {
    const code = program.readUInt16LE(pc * 8);
    const jt = program.readUInt8(pc * 8 + 2);
    const jf = program.readUInt8(pc * 8 + 3);
    const k = program.readUInt32LE(pc * 8 + 4);
    pc++;
    if (code === 0x20) acc = data.readUInt32LE(k);
    else if (code === 0x06) return k;
    else if (code === 0x15) pc += acc === k ? jt : jf;
    else if (code === 0x35) pc += acc >= k ? jt : jf;
    else if (code === 0x45) pc += (acc & k) !== 0 ? jt : jf;
    else throw new Error(`unexpected opcode ${code}`);
  }
  throw new Error("the program ran off its end");
}

/** `#define __NR_name N` from a kernel header. */
function headerNumbers(path: string): Map<string, number> {
  const nrs = new Map<string, number>();
  const text = readFileSync(path, "utf8");
  for (const m of text.matchAll(/^#define __NR(?:3264)?_(\w+)\s+(\d+)\s*$/gm)) nrs.set(m[1]!, Number(m[2]));
  return nrs;
}

describe("seccomp deny-list for isolated processes", () => {
  const headers = {
    x64: "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
    arm64: "/usr/include/asm-generic/unistd.h",
  } as const;

  for (const arch of ["x64", "arm64"] as const) {
    it(`numbers ${arch}'s syscalls as its kernel headers do`, () => {
      assert.ok(existsSync(headers[arch]), `${headers[arch]} (apt-get install linux-libc-dev)`);
      const nrs = headerNumbers(headers[arch]);
      for (const [name, nr] of Object.entries(SYSCALLS[arch].nr))
        assert.equal(nr, nrs.get(name), `${arch} ${name}`);
    });

    it(`on ${arch}: denies each listed call with EPERM and allows the rest`, () => {
      const { auditArch, nr } = SYSCALLS[arch];
      const program = denyListFilter(arch);
      for (const name of DENIED_SYSCALLS)
        assert.equal(runFilter(program, nr[name], auditArch), errno(1), name);
      for (const allowed of [0, 1, 63, 64, 200, 300]) {
        if (Object.values(nr).includes(allowed)) continue;
        assert.equal(runFilter(program, allowed, auditArch), ALLOW, `syscall ${allowed}`);
      }
      // clone: a thread or a fork is fine, a new namespace is not; clone3 falls back to clone.
      assert.equal(runFilter(program, nr.clone, auditArch, 0x003d0f00), ALLOW, "pthread_create's flags");
      assert.equal(runFilter(program, nr.clone, auditArch, 0x01200011), ALLOW, "fork's flags");
      for (let bit = 0; bit < 32; bit++) {
        const flag = 2 ** bit;
        if ((CLONE_NAMESPACE_FLAGS & flag) === 0) continue;
        assert.equal(runFilter(program, nr.clone, auditArch, 0x11 | flag), errno(1), `clone ${flag}`);
      }
      assert.equal(runFilter(program, nr.clone3, auditArch), errno(38), "clone3 is ENOSYS");
    });
  }

  it("kills a process that makes a syscall of a foreign ABI", () => {
    const program = denyListFilter("x64");
    const i386 = 0x40000003;
    assert.equal(runFilter(program, 0, i386), KILL, "i386 (int 0x80)");
    assert.equal(runFilter(program, 0, SYSCALLS.arm64.auditArch), KILL, "arm64 on x86_64");
    assert.equal(runFilter(denyListFilter("arm64"), 0, SYSCALLS.x64.auditArch), KILL, "x86_64 on arm64");
    // x32 shares x86_64's AUDIT_ARCH and marks its numbers with bit 30.
    assert.equal(runFilter(program, 0x40000000 | 272, SYSCALLS.x64.auditArch), errno(1), "x32 unshare");
    assert.equal(runFilter(program, 0x40000000, SYSCALLS.x64.auditArch), errno(1), "x32 read");
  });

  it("refuses an architecture it has no table for", () => {
    assert.throws(() => denyListFilter("riscv64"), /no seccomp filter for riscv64/);
  });
});
