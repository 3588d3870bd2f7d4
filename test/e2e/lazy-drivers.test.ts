import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cp, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { EXAMPLES, ROOT, tempDir } from "../helpers/paths.js";

const run = promisify(execFile);
const DIST = join(ROOT, "dist", "src");

/**
 * Starts a Fennec in a fresh Node process on `registry`, imports the container kind and makes
 * its driver first, closes it once every function was prepared (close waits for that), and
 * answers which modules of the Docker client that process loaded at each point.
 */
async function dockerModulesLoaded(
  registry: string,
  runDir: string,
): Promise<{ afterKind: string[]; afterServe: string[] }> {
  const script = `
    import { createRequire } from "node:module";
    import { pathToFileURL } from "node:url";
    const docker = () =>
      Object.keys(createRequire(import.meta.url).cache).filter((p) => /[\\\\/]node_modules[\\\\/](dockerode|docker-modem)[\\\\/]/.test(p));
    const { containerKind } = await import(pathToFileURL(${JSON.stringify(join(DIST, "sandbox/drivers/container/kind.js"))}));
    await containerKind.create({ settings: {}, cacheDir: undefined, log: undefined });
    const afterKind = docker();
    const { startFennec } = await import(pathToFileURL(${JSON.stringify(join(DIST, "main.js"))}));
    const fennec = await startFennec({
      registry: ${JSON.stringify(registry)},
      port: 0,
      logLevel: "silent",
      cacheDir: ${JSON.stringify(join(runDir, "cache"))},
      driverSettings: { "docker-host": ${JSON.stringify(join(runDir, "no-docker.sock"))} },
    });
    await fennec.close();
    console.log(JSON.stringify({ afterKind, afterServe: docker() }));
  `;
  const { stdout } = await run(process.execPath, ["--input-type=module", "-e", script], {
    // Its own run directory: another test's container run directories are not leftovers of this one.
    env: { ...process.env, FENNEC_RUN_DIR: join(runDir, "run") },
  });
  return JSON.parse(stdout.trim().split("\n").at(-1)!) as { afterKind: string[]; afterServe: string[] };
}

describe("heavy driver dependencies load only when a function needs them", () => {
  it("a Fennec with no [container] function never loads the Docker client; one with such a function does", async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const registry = join(dir, "registry");
      await mkdir(registry);
      for (const name of ["hello", "echo"])
        await cp(join(EXAMPLES, name), join(registry, name), { recursive: true });
      const without = await dockerModulesLoaded(registry, join(dir, "a"));
      assert.deepEqual(without, { afterKind: [], afterServe: [] });

      // The control: the same check sees the client once a [container] function is prepared.
      await mkdir(join(registry, "boxed"));
      await writeFile(
        join(registry, "boxed", "function.toml"),
        'keepalive = 1\nconcurrent-requests = 1\n[container]\nimage = "not-on-any-engine:1"\n',
      );
      const withFn = await dockerModulesLoaded(registry, join(dir, "b"));
      assert.deepEqual(withFn.afterKind, []);
      assert.ok(
        withFn.afterServe.some((p) => p.includes("/dockerode/")),
        JSON.stringify(withFn.afterServe),
      );
    } finally {
      await cleanup();
    }
  });
});
