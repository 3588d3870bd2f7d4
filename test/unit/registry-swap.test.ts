import assert from "node:assert/strict";
import { lstat, mkdir, readdir, readFile, readlink, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import { DirectoryRegistry } from "../../src/registry/registry.js";
import { sandboxKinds } from "../../src/sandbox/drivers/index.js";
import { tempDir } from "../helpers/paths.js";

const { loader } = sandboxKinds;

// The names a deploy gives the directories beside a function's own, as a crash leaves them:
// `.fennec-old-<name>-<12 hex>` (the live version renamed away, the swap not finished),
// `.fennec-trash-<name>-<12 hex>` (a replaced or deleted version), `.fennec-tmp-deploy-<12 hex>`
// (the scratch directory the new version was built in).
const OLD = ".fennec-old-hello-0123456789ab";
const TRASH = ".fennec-trash-hello-ba9876543210";
const SCRATCH = ".fennec-tmp-deploy-aaaaaaaaaaaa";
const TOML = 'keepalive = 10\nconcurrent-requests = 1\n[wasm]\nmodule = "main.wasm"\n';

/** A function directory whose data.txt says which version it is. */
async function version(dir: string, data: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, "function.toml"), TOML);
  await writeFile(join(dir, "main.wasm"), "module");
  await writeFile(join(dir, "data.txt"), data);
}

const exists = (path: string) =>
  lstat(path).then(
    () => true,
    () => false,
  );

describe("start-up after a crash in the middle of a deploy's swap", () => {
  let root: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => {
    ({ dir: root, cleanup } = await tempDir());
  });
  afterEach(() => cleanup());

  // Each state as a crash after that step leaves it, for a default function (in the registry's
  // root) and a user's function (in `@<user>/`), and which version start-up must serve.
  const states: Array<{
    crash: string;
    live?: string;
    old?: string;
    trash?: string;
    scratch?: string;
    serves?: string;
  }> = [
    { crash: "before any rename", live: "v1", scratch: "v2", serves: "v1" },
    { crash: "after the live directory was renamed away", old: "v1", scratch: "v2", serves: "v1" },
    { crash: "after the new directory was renamed in", live: "v2", old: "v1", serves: "v2" },
    { crash: "after the old directory was renamed to trash", live: "v2", trash: "v1", serves: "v2" },
    { crash: "after a delete renamed the directory away", trash: "v1", serves: undefined },
  ];
  for (const state of states) {
    for (const user of ["default", "alice"]) {
      it(`${state.crash} (user ${user}): the function is ${state.serves ?? "deleted"}, and nothing else is left`, async () => {
        const parent = user === "default" ? root : join(root, `@${user}`);
        const fnDir = join(parent, "hello");
        if (state.live) await version(fnDir, state.live);
        if (state.old) await version(join(parent, OLD), state.old);
        if (state.trash) await version(join(parent, TRASH), state.trash);
        if (state.scratch) await version(join(root, SCRATCH), state.scratch);
        const registry = new DirectoryRegistry(root, { loader });
        const result = await registry.cleanupStale();
        if (state.serves) {
          assert.equal(await readFile(join(fnDir, "data.txt"), "utf8"), state.serves);
          const config = await registry.resolve({ user, name: "hello" });
          assert.equal(config.dir, fnDir);
        } else {
          assert.equal(await exists(fnDir), false, "a deleted function came back");
        }
        assert.deepEqual(result.restored, !state.live && state.old ? [fnDir] : []);
        assert.deepEqual(
          // `.fennec/` is Fennec's own state (it records itself as a user of the registry there).
          (await readdir(root)).filter((n) => n.startsWith(".") && n !== ".fennec"),
          [],
          "debris left in the root",
        );
        if (user !== "default")
          assert.deepEqual((await readdir(parent)).sort(), state.serves ? ["hello"] : []);
        // The registry is whole: a second start finds nothing to do.
        assert.deepEqual(await new DirectoryRegistry(root, { loader }).cleanupStale(), {
          removed: [],
          restored: [],
        });
      });
    }
  }

  it("leaves alone what it did not name: other names, symbolic links, a non-function in the function's place", async () => {
    const { dir: outside, cleanup: cleanupOutside } = await tempDir();
    try {
      await version(join(outside, "target"), "outside");
      // Not names Fennec chooses: no random part, a random part that is not 12 hex digits, an
      // invalid function name.
      for (const name of [
        ".fennec-old-hello",
        ".fennec-old-hello-0123456789AB",
        ".fennec-old-.x-0123456789ab",
      ])
        await version(join(root, name), "foreign");
      // A symbolic link with a name Fennec would choose: never followed, never moved into place.
      await symlink(join(outside, "target"), join(root, ".fennec-old-linked-0123456789ab"));
      // The function's place is taken by something that is not a function: the old version, the
      // only copy, stays.
      await mkdir(join(root, "ghost"));
      await version(join(root, ".fennec-old-ghost-0123456789ab"), "ghost v1");
      const result = await new DirectoryRegistry(root, { loader }).cleanupStale();
      assert.deepEqual(result, { removed: [], restored: [] });
      assert.deepEqual((await readdir(root)).filter((n) => n !== ".fennec").sort(), [
        ".fennec-old-.x-0123456789ab",
        ".fennec-old-ghost-0123456789ab",
        ".fennec-old-hello",
        ".fennec-old-hello-0123456789AB",
        ".fennec-old-linked-0123456789ab",
        "ghost",
      ]);
      assert.equal(await readlink(join(root, ".fennec-old-linked-0123456789ab")), join(outside, "target"));
      assert.equal(await readFile(join(outside, "target", "data.txt"), "utf8"), "outside");
    } finally {
      await cleanupOutside();
    }
  });
});

describe("a replaced or deleted function directory", () => {
  let root: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => {
    ({ dir: root, cleanup } = await tempDir());
  });
  afterEach(() => cleanup());

  it("is kept under a trash name until no instance runs a revision read from it", async () => {
    const inUse = new Set<string>();
    const registry = new DirectoryRegistry(root, { loader, revisionsInUse: () => inUse });
    const id = { user: "bob", name: "hello" };
    const files = (data: string) =>
      new Map([
        ["main.wasm", Buffer.from("module")],
        ["data.txt", Buffer.from(data)],
      ]);
    const v1 = await registry.deploy(id, TOML, files("v1"));
    inUse.add(v1.revision);
    const v2 = await registry.deploy(id, TOML, files("v2"));
    assert.notEqual(v2.revision, v1.revision);
    const parent = join(root, "@bob");
    const kept = (await readdir(parent)).filter((n) => n !== "hello");
    assert.equal(kept.length, 1);
    assert.match(kept[0]!, /^\.fennec-trash-hello-[0-9a-f]{12}$/);
    assert.equal(await readFile(join(parent, kept[0]!, "data.txt"), "utf8"), "v1");
    assert.equal(await readFile(join(parent, "hello", "data.txt"), "utf8"), "v2");

    // The delete's directory is kept while v2 runs; v1's still while v1 runs.
    inUse.add(v2.revision);
    await registry.remove(id);
    assert.equal((await readdir(parent)).length, 2);
    inUse.delete(v1.revision);
    await registry.releaseRetired();
    const left = await readdir(parent);
    assert.equal(left.length, 1);
    assert.equal(await readFile(join(parent, left[0]!, "data.txt"), "utf8"), "v2");
    inUse.delete(v2.revision);
    await registry.releaseRetired();
    assert.deepEqual(await readdir(parent), []);
  });
});
