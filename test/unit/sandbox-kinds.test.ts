import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { after, before, describe, it } from "node:test";
import { z } from "zod";
import { FennecError } from "../../src/core/errors.js";
import { buildRegistry } from "../../src/cli/build.js";
import { startFennec } from "../../src/main.js";
import { FakeDriver } from "../../src/sandbox/drivers/fake/driver.js";
import { SANDBOX_KINDS, sandboxKinds } from "../../src/sandbox/drivers/index.js";
import { built, type SandboxKind } from "../../src/sandbox/kind.js";
import { SandboxKinds } from "../../src/sandbox/kinds.js";
import { request } from "../helpers/http.js";
import { tempDir } from "../helpers/paths.js";
import { bodyOf } from "../helpers/body.js";

// A sandbox kind that exists only in this file, added the way a new driver is: its config type
// merged into SandboxConfigs, its kind module, and an entry in the registration list. Nothing
// else in Fennec is told about it, and it must still reach the schema, the loader, the admin
// API, `fennec build`, the drivers and the flags.
interface ToySandboxConfig {
  readonly kind: "toy";
  readonly greeting: string;
  readonly script: string;
}
type ThisKindConfig = ToySandboxConfig;
declare module "../../src/config/function-config.js" {
  interface SandboxConfigs {
    toy: ThisKindConfig;
  }
}

const toyTable = z.strictObject({ script: z.string().min(1), greeting: z.string().default("hi") });

const toyKind: SandboxKind<"toy", typeof toyTable, FakeDriver> = {
  kind: "toy",
  schema: toyTable,
  toConfig: (t, files) => ({ kind: "toy", greeting: t.greeting, script: files.file(t.script, "script") }),
  code: (s) => [s.script],
  image: (c) => relative(c.dir, c.sandbox.script),
  async build(c, ctx) {
    ctx.progress(`winding up ${c.sandbox.greeting}`);
    return built(`toy wound up by a ${(await ctx.driver()).name} driver`);
  },
  flags: [{ name: "toy-voice", type: "string", value: "TEXT", help: "what toys say" }],
  async create(node) {
    const driver = new FakeDriver();
    const voice = String(node.settings["toy-voice"] ?? "");
    driver.behaviour.respond = () => ({ status: 200, headers: [], body: bodyOf(voice) });
    return driver;
  },
  status: (driver) => ({ starts: driver.starts }),
};

const kinds = new SandboxKinds([...SANDBOX_KINDS, toyKind]);
const TOY = `keepalive = 5\nconcurrent-requests = 1\n[toy]\nscript = "wind.toy"\n`;

function configError(fn: () => unknown): { message: string; problems: Array<{ key: string }> } {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof FennecError);
    assert.equal(err.code, "CONFIG_INVALID");
    return { message: err.message, problems: (err.details as { problems: Array<{ key: string }> }).problems };
  }
  assert.fail("expected CONFIG_INVALID");
}

describe("the registration list drives every place that knows the sandbox kinds", () => {
  let dir: string;
  let registry: string;
  let cleanup: () => Promise<void>;
  before(async () => {
    ({ dir, cleanup } = await tempDir());
    registry = join(dir, "registry");
    await mkdir(join(registry, "wind"), { recursive: true });
    await writeFile(join(registry, "wind", "function.toml"), TOY);
    await writeFile(join(registry, "wind", "wind.toy"), "tick");
  });
  after(() => cleanup());

  it("the schema and the loader: the kind's table, its config, its errors", () => {
    const c = kinds.loader.load(
      { user: "default", name: "wind" },
      join(registry, "wind"),
      "wind/function.toml",
      TOY,
    );
    assert.equal(c.sandbox.kind, "toy");
    assert.deepEqual(c.sandbox, { kind: "toy", greeting: "hi", script: join(registry, "wind", "wind.toy") });
    assert.deepEqual(kinds.loader.code(c), [join(registry, "wind", "wind.toy")]);
    // Its keys are checked by its own schema, and named with its table.
    assert.equal(
      configError(() => kinds.loader.parse(TOY + "colour = 1\n", "f.toml")).problems[0]?.key,
      "toy.colour",
    );
    const missing = configError(() =>
      kinds.loader.load(
        { user: "default", name: "w" },
        dir,
        "w/function.toml",
        TOY.replace("wind.toy", "gone.toy"),
      ),
    );
    assert.equal(missing.problems[0]?.key, "toy.script");
    // "Exactly one table" lists every registered kind, the new one too.
    const none = configError(() => kinds.loader.parse("keepalive = 1\nconcurrent-requests = 1\n", "f.toml"));
    assert.match(
      none.message,
      /exactly one sandbox table \(\[wasm\], \[vm\], \[container\], \[process\], \[oci\] or \[toy\]\), found none/,
    );
    assert.deepEqual(kinds.names, [...sandboxKinds.names, "toy"]);
    // A Fennec without the kind registered refuses the table as an unknown key, with a stable code.
    const unknown = configError(() => sandboxKinds.loader.parse(TOY, "f.toml"));
    assert.deepEqual(unknown.problems[0], {
      key: "toy",
      message: "unknown table: the sandbox tables are [wasm], [vm], [container], [process], [oci]",
    });
  });

  it("the drivers, the admin API's listing and /stats, and the flags", async () => {
    assert.ok(kinds.flags("serve").some((f) => f.name === "toy-voice"));
    assert.ok(!kinds.flags("build").some((f) => f.name === "toy-voice"), "not a build flag");
    const fennec = await startFennec({
      registry,
      port: 0,
      logLevel: "silent",
      cacheDir: join(dir, "cache"),
      kinds,
      driverSettings: { "toy-voice": "whirr" },
    });
    try {
      const list = await request(`${fennec.url}/system/functions`);
      const row = list.json<Array<{ key: string; sandbox: string; image: string; state: string }>>()[0];
      assert.deepEqual(
        { key: row?.key, sandbox: row?.sandbox, image: row?.image, state: row?.state },
        { key: "default/wind", sandbox: "toy", image: "wind.toy", state: "ready" },
      );
      const call = await request(`${fennec.url}/invoke/wind/`);
      assert.equal(call.status, 200, call.text);
      assert.equal(call.text, "whirr", "the driver was made by the kind, from its flag");
      const stats = await request(`${fennec.url}/stats`);
      assert.deepEqual(stats.json<{ backends: Record<string, unknown> }>().backends["toy"], { starts: 1 });
    } finally {
      await fennec.close();
    }
  });

  it("fennec build runs the kind's build step, and names the kinds with nothing to build", async () => {
    await mkdir(join(registry, "cmd"));
    await writeFile(
      join(registry, "cmd", "function.toml"),
      'keepalive = 1\nconcurrent-requests = 1\n[process]\ncommand = ["true"]\n',
    );
    let out = "";
    const code = await buildRegistry(registry, [], { kinds, write: (text) => (out += text) });
    assert.equal(code, 0, out);
    assert.match(out, /^ {2}\.\.\. {2}default\/wind: winding up hi$/m);
    assert.match(out, /^ok {5}default\/wind: toy wound up by a fake driver \(\d+ ms\)$/m);
    assert.match(out, /^ok {5}default\/cmd: \[process\] nothing to build: a command runs as it is$/m);
    assert.match(out, /^nothing to build for \[process\] default\/cmd: a command runs as it is$/m);
  });
});
