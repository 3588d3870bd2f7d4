import assert from "node:assert/strict";
import { mkdir, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { FennecError } from "../../src/core/errors.js";
import { sandboxKinds } from "../../src/sandbox/drivers/index.js";
import { tempDir } from "../helpers/paths.js";

const { loader } = sandboxKinds;
const loadFunctionConfig = loader.load.bind(loader);
const parseFunctionToml = loader.parse.bind(loader);

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

  it("[wasm] pre-initialise is on unless set to false, and must be a boolean", () => {
    const load = (toml: string) =>
      loadFunctionConfig({ user: "default", name: "f" }, dir, join(dir, "function.toml"), toml);
    const on = load(WASM);
    assert.equal(on.sandbox.kind === "wasm" && on.sandbox.preInitialise, true);
    const off = load(WASM.replace("[wasm]", "[wasm]\npre-initialise = false"));
    assert.equal(off.sandbox.kind === "wasm" && off.sandbox.preInitialise, false);
    const p = problems(() =>
      parseFunctionToml(WASM.replace("[wasm]", '[wasm]\npre-initialise = "no"'), "f.toml"),
    );
    assert.equal(p[0]!.key, "wasm.pre-initialise");
    assert.match(p[0]!.message, /boolean/);
  });

  it("accepts UniFaaS [vm] and [container] tables unchanged", () => {
    const vm = parseFunctionToml(
      `keepalive = 1\nconcurrent-requests = 1\nsingle-use = true\n[vm]\nkernel = "k"\nimage = "i"\ncmdline = "callback=%callback ip=%ip"\nhypervisor = { type = "microvm", disk-type = "block", rtc = true }\n`,
      "f.toml",
    );
    const table = vm["vm"] as { hypervisor: { type: string }; memory: number };
    assert.equal(table.hypervisor.type, "microvm");
    assert.equal(table.memory, 128);
    const ct = parseFunctionToml(
      `keepalive = 1\nconcurrent-requests = 1\n[container]\nimage = "hello"\nruntime = "runsc"\n`,
      "f.toml",
    );
    assert.equal((ct["container"] as { memory: number }).memory, 128);
  });

  it("reads max-request-body and max-response-body as sizes: a unit string, or whole MiB as memory is", () => {
    const load = (lines: string) =>
      loadFunctionConfig(
        { user: "default", name: "f" },
        dir,
        join(dir, "function.toml"),
        lines + "\n" + WASM,
      );
    const none = load("");
    assert.equal(none.maxRequestBodyBytes, undefined, "unset: the gateway's limit applies");
    assert.equal(none.maxResponseBodyBytes, undefined);
    const c = load('max-request-body = "1GiB"\nmax-response-body = "1.5KiB"');
    assert.equal(c.maxRequestBodyBytes, 2 ** 30);
    assert.equal(c.maxResponseBodyBytes, 1536);
    assert.equal(load("max-request-body = 16").maxRequestBodyBytes, 16 * 2 ** 20);
    assert.equal(load('max-request-body = "512 KiB"').maxRequestBodyBytes, 512 * 1024);
    assert.equal(load('max-response-body = "100B"').maxResponseBodyBytes, 100);
    for (const bad of ['"1GB"', '"10"', '"abc"', '"0KiB"', '"-1MiB"', "0", "1.5", "true"]) {
      const p = problems(() => parseFunctionToml(`max-request-body = ${bad}\n${WASM}`, "f.toml"));
      assert.equal(p.length, 1, bad);
      assert.equal(p[0]!.key, "max-request-body", bad);
      assert.match(p[0]!.message, /expected a size such as "64KiB", "16MiB" or "1GiB"/, bad);
    }
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

  it("names function.toml as given (relative to the registry) and never the host directory", () => {
    const err = (toml: string) => {
      try {
        loadFunctionConfig({ user: "default", name: "f" }, dir, "f/function.toml", toml);
      } catch (e) {
        assert.ok(e instanceof FennecError);
        return e;
      }
      assert.fail("expected CONFIG_INVALID");
    };
    for (const toml of [
      WASM.replace("m.wasm", "nope.wasm"),
      WASM.replace("m.wasm", "../../nope"),
      WASM.replace("m.wasm", "static"),
      "colour = 3\n" + WASM,
    ]) {
      const e = err(toml);
      assert.match(e.message, /^f\/function\.toml: /);
      assert.ok(!e.message.includes(dir), e.message);
      assert.ok(!JSON.stringify(e.details).includes(dir), JSON.stringify(e.details));
    }
  });

  it("says the same for a path outside the function directory whether or not something exists there", async () => {
    const outsideMessage = (target: string) => {
      const p = problems(() =>
        loadFunctionConfig(
          { user: "default", name: "f" },
          dir,
          "f/function.toml",
          WASM.replace("m.wasm", target),
        ),
      );
      return p[0]!.message.replace(JSON.stringify(target), "PATH");
    };
    // Count the levels up to / so `../` chains reach real host files.
    const up = "../".repeat(dir.split("/").length);
    const existing = outsideMessage(`${up}etc/passwd`);
    assert.equal(existing, "PATH leads outside the function directory");
    assert.equal(outsideMessage(`${up}etc/no-such-file-${process.pid}`), existing);
    assert.equal(outsideMessage(`${up}no-such-dir-${process.pid}/x`), existing);
    assert.equal(outsideMessage("static/../../m.wasm"), existing);
    // Through symbolic links, absolute or relative, to something or to nothing.
    await symlink("/etc/passwd", join(dir, "to-passwd"));
    await symlink(`/no-such-dir-${process.pid}/x`, join(dir, "to-nothing"));
    await symlink(`${up}no-such-file-${process.pid}`, join(dir, "rel-to-nothing"));
    await symlink("static", join(dir, "to-static"));
    for (const link of ["to-passwd", "to-nothing", "rel-to-nothing", "to-nothing/deeper"])
      assert.equal(outsideMessage(link), existing, link);
    // A link that stays inside is followed; a missing file inside is "not found".
    assert.equal(outsideMessage("to-static/gone.wasm"), "file not found: PATH");
    assert.equal(outsideMessage("gone/m.wasm"), "file not found: PATH");
  });
});
