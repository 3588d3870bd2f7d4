import assert from "node:assert/strict";
import { chmod, mkdir, symlink, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Header } from "tar";
import { packFunction, readFunctionFiles, unpackFunction } from "../../src/cluster/artefact.js";
import { FennecError } from "../../src/core/errors.js";
import { tempDir } from "../helpers/paths.js";

/** A tar entry made by hand: what a hostile or broken node could put in the object store. */
function entry(
  path: string,
  body: string,
  type: "File" | "SymbolicLink" = "File",
  linkpath?: string,
): Buffer {
  const block = Buffer.alloc(512);
  new Header({
    path,
    mode: 0o644,
    size: type === "File" ? body.length : 0,
    type,
    linkpath,
    mtime: new Date(0),
  }).encode(block, 0);
  if (type !== "File") return block;
  const data = Buffer.alloc(Math.ceil(body.length / 512) * 512);
  data.write(body);
  return Buffer.concat([block, data]);
}
const tarOf = (...entries: Buffer[]) => Buffer.concat([...entries, Buffer.alloc(1024)]);

async function refused(tar: Buffer): Promise<string> {
  const err = await unpackFunction(tar).then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(err instanceof FennecError, `expected a refusal, got ${String(err)}`);
  assert.equal(err.code, "ARTEFACT_INVALID");
  return err.message;
}

describe("shared function artefacts", () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  before(async () => {
    ({ dir, cleanup } = await tempDir());
  });
  after(() => cleanup());

  it("pack and unpack keep every file, its executable bit and the revision; per-node outputs stay out", async () => {
    const fn = join(dir, "fn");
    await mkdir(join(fn, "lib", "deep"), { recursive: true });
    await mkdir(join(fn, ".fennec", "build"), { recursive: true });
    await writeFile(join(fn, "function.toml"), '[wasm]\nmodule = "m.wasm"\n');
    await writeFile(join(fn, "m.wasm"), Buffer.from([0, 97, 115, 109, 1, 0, 0, 0]));
    await writeFile(join(fn, "run.sh"), "#!/bin/sh\necho hi\n");
    await chmod(join(fn, "run.sh"), 0o755);
    const long = `${"x".repeat(120)}.txt`;
    await writeFile(join(fn, "lib", "deep", long), "long path");
    await writeFile(join(fn, ".fennec", "build", "handler.mjs"), "per node");
    await writeFile(join(fn, ".hidden"), "not shared");
    await symlink("/etc/passwd", join(fn, "link"));

    const read = await readFunctionFiles(fn);
    assert.deepEqual([...read.files.keys()], ["function.toml", `lib/deep/${long}`, "m.wasm", "run.sh"]);
    assert.deepEqual(read.leftOut, ["link"]);
    assert.equal(read.files.get("run.sh")?.executable, true);
    assert.equal(read.files.get("m.wasm")?.executable, false);
    assert.match(read.revision, /^[0-9a-f]{32}$/);

    const back = await unpackFunction(packFunction(read));
    assert.equal(back.revision, read.revision);
    assert.equal(Buffer.from(back.files.get(`lib/deep/${long}`)!.bytes).toString(), "long path");
    assert.equal(back.files.get("run.sh")?.executable, true);
    // Equal files pack to equal bytes, whatever their mtimes: one revision on every node.
    await utimes(join(fn, "m.wasm"), new Date(1000), new Date(1000));
    const again = await readFunctionFiles(fn);
    assert.equal(again.revision, read.revision);
    assert.ok(packFunction(again).equals(packFunction(read)));
    // A changed byte or executable bit is a new revision.
    await chmod(join(fn, "run.sh"), 0o644);
    assert.notEqual((await readFunctionFiles(fn)).revision, read.revision);
  });

  it("refuses paths that climb out, absolute or hidden paths, links and garbage", async () => {
    assert.match(await refused(tarOf(entry("../escape", "x"))), /escape/);
    assert.match(await refused(tarOf(entry("/etc/cron.d/x", "x"))), /cron/);
    assert.match(await refused(tarOf(entry("a/../../b", "x"))), /a\/\.\.\/\.\.\/b/);
    assert.match(await refused(tarOf(entry(".fennec/build/handler.mjs", "x"))), /\.fennec/);
    assert.match(await refused(tarOf(entry("link", "", "SymbolicLink", "/etc/passwd"))), /SymbolicLink/);
    assert.match(await refused(tarOf(entry("f", "1"), entry("f", "2"))), /"f"/);
    assert.match(await refused(tarOf(entry("a", "1"), entry("a/b", "2"))), /file and a directory/);
    await refused(Buffer.from("this is not a tar archive at all".repeat(40)));
    // A good one passes.
    const ok = await unpackFunction(tarOf(entry("function.toml", "a = 1\n")));
    assert.deepEqual([...ok.files.keys()], ["function.toml"]);
  });
});
