// Builds every C function (examples/registry/*/src/*.c and test/fixtures/wasm/src/*.c) to a
// WASI module with Debian's clang-14. The .wasm files are committed so `npm start` needs no
// compiler; `--check` rebuilds into a temporary directory and proves the committed files are
// exactly what their sources produce (CI runs it).
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CLANG = process.env.CLANG ?? "clang-14";
// Extra link flags per artefact, where a fixture needs an unusual module shape.
const EXTRA = {
  "forbidden-import.wasm": ["-Wl,--allow-undefined"],
  "bigmem.wasm": ["-Wl,--initial-memory=67108864"],
};

function sources() {
  const out = [];
  const examples = join(ROOT, "examples", "registry");
  for (const fn of readdirSync(examples)) {
    const src = join(examples, fn, "src");
    if (!existsSync(src)) continue;
    for (const f of readdirSync(src).filter((n) => n.endsWith(".c")))
      out.push({ src: join(src, f), out: join(examples, fn, f.replace(/\.c$/, ".wasm")) });
  }
  const fixtures = join(ROOT, "test", "fixtures", "wasm", "src");
  for (const f of readdirSync(fixtures).filter((n) => n.endsWith(".c")))
    out.push({ src: join(fixtures, f), out: join(dirname(fixtures), f.replace(/\.c$/, ".wasm")) });
  return out.sort((a, b) => a.out.localeCompare(b.out));
}

function compile(src, out, name) {
  // Relative paths and a fixed prefix map keep absolute build paths out of the output.
  const args = [
    "--target=wasm32-wasi",
    "--sysroot=/usr",
    "-O2",
    "-s",
    `-ffile-prefix-map=${ROOT}=.`,
    ...(EXTRA[name] ?? []),
    "-o",
    out,
    relative(ROOT, src),
  ];
  const r = spawnSync(CLANG, args, { cwd: ROOT, encoding: "utf8" });
  if (r.error?.code === "ENOENT") {
    console.error(`${CLANG} not found: install Debian's clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32`);
    process.exit(2);
  }
  if (r.status !== 0) {
    console.error(`${CLANG} ${args.join(" ")}\n${r.stderr}`);
    process.exit(1);
  }
}

const check = process.argv.includes("--check");
const scratch = mkdtempSync(join(tmpdir(), "fennec-build-"));
let differ = 0;
try {
  for (const { src, out } of sources()) {
    const t0 = performance.now();
    const tmp = join(scratch, `${basename(dirname(dirname(src)))}-${basename(out)}`);
    compile(src, tmp, basename(out));
    const built = readFileSync(tmp);
    const rel = relative(ROOT, out);
    const ms = (performance.now() - t0).toFixed(0);
    if (check) {
      const same = existsSync(out) && readFileSync(out).equals(built);
      if (!same) differ++;
      console.log(`${same ? "same   " : "DIFFERS"} ${rel} (${built.length} bytes, ${ms} ms)`);
    } else {
      renameSync(tmp, out);
      console.log(`built ${rel} (${built.length} bytes, ${ms} ms)`);
    }
  }
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
if (check) {
  if (differ > 0) {
    console.error(
      `${differ} committed artefact(s) differ from their sources: run npm run examples and commit the result`,
    );
    process.exit(1);
  }
  console.log("every committed .wasm is reproducible from its source");
}
