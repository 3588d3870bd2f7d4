// Builds Fennec's unikernel images (guest/unikernel/): each function source is compiled and
// linked with the kernel into one bootable x86-64 ELF (PVH entry) with Debian's clang-14 and
// lld-14. Which sources:
// - examples/registry/<fn>/src/<name>.c -> examples/registry/<fn>/<name>.elf, for every function
//   whose function.toml names a `kernel = "<something>.elf"` (functions without one are left to
//   scripts/build-examples.mjs);
// - test/fixtures/unikernel/src/<name>.c -> test/fixtures/unikernel/<name>.elf.
// The .elf files are committed so running them needs no compiler; `--check` rebuilds into a
// temporary directory and proves the committed files are exactly what their sources produce.
// The flags are fixed and no path, time or build id reaches the output, so builds are
// byte-for-byte reproducible.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { buildArtefacts, Failure } from "./committed-artefacts.mjs";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CLANG = process.env.CLANG ?? "clang-14";
const LD = process.env.LD_LLD ?? "ld.lld-14";
const PACKAGES = "install Debian's clang-14 lld-14";
const KERNEL = join("guest", "unikernel");
// The kernel's own sources, linked in this order into every image (boot.S first: the entry).
const KERNEL_SOURCES = ["boot.S", "kernel.c", "chan.c", "http.c", "mem.c", "lib.c"];

const COMMON = [
  "--target=x86_64-unknown-none-elf",
  "-std=c11",
  "-O2",
  "-ffreestanding",
  "-nostdlib",
  "-fno-pic",
  "-fno-pie",
  "-mcmodel=small", // linked at 1 MiB, identity-mapped: every address fits in 32 bits
  "-mno-red-zone", // interrupts arrive on the running stack
  "-fno-stack-protector",
  "-fno-asynchronous-unwind-tables",
  "-fno-unwind-tables",
  "-fno-ident",
  `-ffile-prefix-map=${ROOT}=.`,
  "-Wall",
  "-Wextra",
  "-I",
  join(KERNEL, "include"),
];
// Kernel code never touches SSE/x87 registers, so interrupt handlers need not save them; the
// function's code may use floating point (boot.S enables SSE).
const KERNEL_FLAGS = ["-mgeneral-regs-only", "-Werror"];

function kernelOf(toml) {
  return /^\s*kernel\s*=\s*"([^"]+\.elf)"\s*$/m.exec(toml)?.[1];
}

function sources() {
  const out = [];
  const examples = join(ROOT, "examples", "registry");
  for (const fn of readdirSync(examples)) {
    const src = join(examples, fn, "src");
    const toml = join(examples, fn, "function.toml");
    if (!existsSync(src) || !existsSync(toml) || !kernelOf(readFileSync(toml, "utf8"))) continue;
    for (const f of readdirSync(src).filter((n) => n.endsWith(".c")))
      out.push({ src: join(src, f), out: join(examples, fn, f.replace(/\.c$/, ".elf")) });
  }
  const fixtures = join(ROOT, "test", "fixtures", "unikernel", "src");
  for (const f of readdirSync(fixtures).filter((n) => n.endsWith(".c")))
    out.push({ src: join(fixtures, f), out: join(dirname(fixtures), f.replace(/\.c$/, ".elf")) });
  return out.sort((a, b) => a.out.localeCompare(b.out));
}

function run(tool, args) {
  const r = spawnSync(tool, args, { cwd: ROOT, encoding: "utf8" });
  // A missing toolchain piece is a setup problem, not a source error.
  if (r.error?.code === "ENOENT" || (r.status !== 0 && /unable to execute|unknown target/.test(r.stderr)))
    throw new Failure(2, `${r.stderr ?? ""}${tool} not found or incomplete: ${PACKAGES}`);
  if (r.status !== 0) throw new Failure(1, `${tool} ${args.join(" ")}\n${r.stderr}`);
}

// Relative source paths (cwd is the repository) keep absolute build paths out of the output.
function compile(src, obj, extra) {
  run(CLANG, [...COMMON, ...extra, "-c", "-o", obj, relative(ROOT, src)]);
}

function link(objs, out) {
  run(LD, [
    "-T",
    join(KERNEL, "linker.ld"),
    "-nostdlib",
    "-static",
    "--build-id=none",
    "-z",
    "max-page-size=4096",
    "-z",
    "noexecstack",
    "-o",
    out,
    ...objs,
  ]);
}

buildArtefacts(
  {
    root: ROOT,
    check: process.argv.includes("--check"),
    prefix: "fennec-uk-build-",
    what: "unikernel .elf",
    hint: "run node scripts/build-unikernels.mjs and commit the result",
  },
  (scratch, place) => {
    const kernelObjs = KERNEL_SOURCES.map((f) => {
      const obj = join(scratch, `kernel-${f}.o`);
      compile(join(ROOT, KERNEL, f), obj, KERNEL_FLAGS);
      return obj;
    });
    for (const { src, out } of sources()) {
      const t0 = performance.now();
      const name = `${basename(dirname(dirname(src)))}-${basename(out)}`;
      const obj = join(scratch, `${name}.o`);
      const tmp = join(scratch, name);
      compile(src, obj, []);
      link([...kernelObjs, obj], tmp);
      const built = readFileSync(tmp);
      place(built, out, t0);
    }
  },
);
