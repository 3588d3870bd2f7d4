import assert from "node:assert/strict";
import { mkdir, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { FennecError } from "../../src/core/errors.js";
import { loadFunctionConfig, parseFunctionToml } from "../../src/config/load-function.js";
import { tempDir } from "../helpers/paths.js";

const WASM = `keepalive = 10\nconcurrent-requests = 2\n\n[wasm]\nmodule = "m.wasm"\n`;

function problems(fn: () => unknown): Array<{ key: string; message: string }> {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof FennecError);
    assert.equal(err.code, "CONFIG_INVALID");
    return (err.details as { problems: Array<{ key: string; message: string }> }).problems;
  }
  assert.fail("expected CONFIG_INVALID");
}

describe("function.toml", () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  before(async () => {
    ({ dir, cleanup } = await tempDir());
    await writeFile(join(dir, "m.wasm"), "x");
    await mkdir(join(dir, "static"));
  });
  after(() => cleanup());

  it("accepts the UniFaaS keys with their defaults and Fennec's [wasm] table", () => {
    const c = loadFunctionConfig({ user: "default", name: "f" }, dir, join(dir, "function.toml"), WASM);
    assert.equal(c.keepaliveMs, 10_000);
    assert.equal(c.concurrentRequests, 2);
    assert.equal(c.singleUse, false);
    assert.equal(c.timeoutMs, 30_000);
    assert.equal(c.minInstances, 0);
    assert.equal(c.sandbox.kind, "wasm");
    assert.equal(c.sandbox.kind === "wasm" && c.sandbox.memoryMiB, 64);
  });

  it("accepts UniFaaS [vm] and [container] tables unchanged", () => {
    const vm = parseFunctionToml(
      `keepalive = 1\nconcurrent-requests = 1\nsingle-use = true\n[vm]\nkernel = "k"\nimage = "i"\ncmdline = "callback=%callback ip=%ip"\nhypervisor = { type = "microvm", disk-type = "block", rtc = true }\n`,
      "f.toml",
    );
    assert.equal(vm.vm?.hypervisor.type, "microvm");
    assert.equal(vm.vm?.memory, 128);
    const ct = parseFunctionToml(
      `keepalive = 1\nconcurrent-requests = 1\n[container]\nimage = "hello"\nruntime = "runsc"\n`,
      "f.toml",
    );
    assert.equal(ct.container?.memory, 128);
  });

  it("names the file and position of malformed TOML", () => {
    const p = problems(() => parseFunctionToml("keepalive = = 3", "/reg/f/function.toml"));
    assert.match(p[0]!.message, /malformed TOML at line 1/);
  });

  it("refuses unknown keys, naming them", () => {
    const p = problems(() => parseFunctionToml("colour = 3\n" + WASM, "f.toml"));
    assert.deepEqual(p, [{ key: "colour", message: "unknown key" }]);
    const q = problems(() => parseFunctionToml(WASM.replace("[wasm]", "[wasm]\nmemroy = 3"), "f.toml"));
    assert.equal(q[0]!.key, "wasm.memroy");
  });

  it("refuses wrong types and missing required keys, saying what was expected", () => {
    const p = problems(() => parseFunctionToml(`keepalive = "ten"\n[wasm]\nmodule = "m.wasm"\n`, "f.toml"));
    const keys = p.map((x) => x.key).sort();
    assert.deepEqual(keys, ["concurrent-requests", "keepalive"]);
    assert.ok(
      p.every((x) => /expected/i.test(x.message)),
      JSON.stringify(p),
    );
    const z = problems(() =>
      parseFunctionToml(WASM.replace("concurrent-requests = 2", "concurrent-requests = 0"), "f.toml"),
    );
    assert.equal(z[0]!.key, "concurrent-requests");
  });

  it("requires exactly one sandbox table", () => {
    const p = problems(() => parseFunctionToml(`keepalive = 1\nconcurrent-requests = 1\n`, "f.toml"));
    assert.match(p[0]!.message, /exactly one sandbox table/);
  });

  it("refuses a missing module and paths that leave the function directory", async () => {
    const load = (toml: string) => () =>
      loadFunctionConfig({ user: "default", name: "f" }, dir, join(dir, "function.toml"), toml);
    assert.match(problems(load(WASM.replace("m.wasm", "nope.wasm")))[0]!.message, /file not found/);
    assert.match(problems(load(WASM.replace("m.wasm", "../m.wasm")))[0]!.message, /not found|outside/);
    assert.match(problems(load(WASM.replace("m.wasm", "/etc/passwd")))[0]!.message, /relative/);
    await symlink("/etc/hostname", join(dir, "escape.wasm"));
    assert.match(
      problems(load(WASM.replace("m.wasm", "escape.wasm")))[0]!.message,
      /outside the function directory/,
    );
    assert.match(problems(load(WASM + 'dirs = { "/data" = "../" }\n'))[0]!.message, /outside/);
    const ok = loadFunctionConfig(
      { user: "default", name: "f" },
      dir,
      join(dir, "function.toml"),
      WASM + 'dirs = { "/data" = "static" }\n',
    );
    assert.equal(ok.sandbox.kind === "wasm" && ok.sandbox.dirs["/data"], join(dir, "static"));
  });
});
