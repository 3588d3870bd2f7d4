import { cp, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (tests run compiled, from dist/test/...). */
export const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
export const EXAMPLES = join(ROOT, "examples", "registry");
export const WASM_FIXTURES = join(ROOT, "test", "fixtures", "wasm");
export const CLI = join(ROOT, "dist", "src", "cli", "main.js");

/** A temporary directory removed by the returned cleanup (call it in `after`). */
export async function tempDir(
  prefix = "fennec-test-",
): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/**
 * A scratch copy of the process fixture (test/fixtures/process), for tests whose driver caches
 * builds in the function's directory (a `[vm]` guest's packed roots, `.fennec/vm/`, some 100 MB
 * each): nothing is left in the source tree. One copy per test file, so its suites share the roots
 * it builds; the returned cleanup removes it.
 */
export async function processFixtureCopy(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const { dir, cleanup } = await tempDir("fennec-fixture-");
  const copy = join(dir, "process");
  const from = join(ROOT, "test", "fixtures", "process");
  await cp(from, copy, { recursive: true, filter: (src) => !src.slice(from.length).includes(".fennec") });
  return { dir: copy, cleanup };
}

/** A scratch copy of the example registry, so tests can edit it freely. */
export async function copyExamples(into: string): Promise<string> {
  const reg = join(into, "registry");
  await cp(EXAMPLES, reg, { recursive: true, filter: (src) => !src.includes(".fennec") });
  return reg;
}
