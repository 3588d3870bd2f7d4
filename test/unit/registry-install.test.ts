import assert from "node:assert/strict";
import { mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import { FennecError } from "../../src/core/errors.js";
import { DirectoryRegistry, type RegistryChange } from "../../src/registry/registry.js";
import { sandboxKinds } from "../../src/sandbox/drivers/index.js";
import { tempDir } from "../helpers/paths.js";

const TOML = 'keepalive = 10\nconcurrent-requests = 1\n[wasm]\nmodule = "main.wasm"\n';
const file = (text: string, executable = false) => ({ bytes: Buffer.from(text), executable });

// What the cluster's function share relies on (src/cluster/function-share.ts): a whole-function
// install, change events that say who made them, and a read of one whole version.
describe("registry: install, change events, inspect", () => {
  let root: string;
  let cleanup: () => Promise<void>;
  let registry: DirectoryRegistry;
  let changes: RegistryChange[];
  beforeEach(async () => {
    ({ dir: root, cleanup } = await tempDir());
    registry = new DirectoryRegistry(root, { loader: sandboxKinds.loader });
    changes = [];
    registry.onChange((change) => {
      changes.push(change);
    });
  });
  afterEach(() => cleanup());

  it("install replaces the function with exactly the files given, keeps its build cache, and says it was the cluster", async () => {
    const id = { user: "alice", name: "fn" };
    await registry.deploy(
      id,
      TOML,
      new Map([
        ["main.wasm", Buffer.from("v1")],
        ["old.txt", Buffer.from("stale")],
      ]),
    );
    const dir = registry.dirOf(id);
    await mkdir(join(dir, ".fennec", "build"), { recursive: true });
    await writeFile(join(dir, ".fennec", "build", "out"), "per node");
    const config = await registry.install(
      id,
      new Map([
        ["function.toml", file(TOML)],
        ["main.wasm", file("v2")],
        ["bin/run.sh", file("#!/bin/sh\n", true)],
      ]),
      undefined,
      "cluster",
    );
    assert.equal(config.key, "alice/fn");
    assert.equal(await readFile(join(dir, "main.wasm"), "utf8"), "v2");
    await assert.rejects(stat(join(dir, "old.txt")), /ENOENT/);
    assert.equal((await stat(join(dir, "bin", "run.sh"))).mode & 0o111, 0o111);
    assert.equal(await readFile(join(dir, ".fennec", "build", "out"), "utf8"), "per node");
    assert.deepEqual(
      changes.map((c) => [c.type, c.key, c.origin]),
      [
        ["deployed", "alice/fn", "api"],
        ["deployed", "alice/fn", "cluster"],
      ],
    );
    await registry.remove(id, "cluster");
    assert.deepEqual(changes.at(-1), { type: "removed", id, key: "alice/fn", dir, origin: "cluster" });
  });

  it("install refuses a path outside the function and a missing function.toml; a refused check changes nothing", async () => {
    const id = { user: "default", name: "fn" };
    await registry.deploy(id, TOML, new Map([["main.wasm", Buffer.from("v1")]]));
    for (const bad of ["../escape", "a/../../b", ".fennec/x", "/abs"]) {
      await assert.rejects(
        registry.install(
          id,
          new Map([
            ["function.toml", file(TOML)],
            [bad, file("x")],
          ]),
          undefined,
          "cluster",
        ),
        (err: unknown) => err instanceof FennecError && err.code === "BAD_NAME",
        bad,
      );
    }
    await assert.rejects(
      registry.install(id, new Map([["main.wasm", file("x")]]), undefined, "cluster"),
      (err: unknown) => err instanceof FennecError && err.code === "CONFIG_INVALID",
    );
    await assert.rejects(
      registry.install(
        id,
        new Map([
          ["function.toml", file(TOML)],
          ["main.wasm", file("v2")],
        ]),
        async () => {
          throw new FennecError("MODULE_INVALID", "no");
        },
        "cluster",
      ),
      /no/,
    );
    assert.equal(await readFile(join(registry.dirOf(id), "main.wasm"), "utf8"), "v1");
    assert.equal(changes.length, 1, "only the first deploy changed the function");
  });

  it("inspect gives the live directory, or undefined when the function has none", async () => {
    const id = { user: "default", name: "fn" };
    await registry.deploy(id, TOML, new Map([["main.wasm", Buffer.from("v1")]]));
    assert.equal(await registry.inspect(id, async (dir) => readFile(join(dir!, "main.wasm"), "utf8")), "v1");
    assert.equal(await registry.inspect({ user: "default", name: "none" }, async (dir) => dir), undefined);
  });
});
