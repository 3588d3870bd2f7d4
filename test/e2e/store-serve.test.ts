import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { startFennec } from "../../src/main.js";
import { copyExamples, tempDir } from "../helpers/paths.js";

describe("fennec serve and its invocation store", () => {
  let cleanup: (() => Promise<void>) | undefined;
  after(async () => cleanup?.());

  it("keeps the store in --state-dir across a restart, and queues again what was running when it stopped", async () => {
    const t = await tempDir("fennec-store-serve-");
    cleanup = t.cleanup;
    const registry = await copyExamples(t.dir);
    const options = { registry, port: 0, logLevel: "silent", cacheDir: join(t.dir, "cache") } as const;
    // The default: beside the registry, where .gitignore's `.fennec/` covers it.
    let fennec = await startFennec(options);
    assert.equal(fennec.store.describe, `sqlite:${join(registry, ".fennec", "state", "fennec.db")}`);
    await fennec.close();

    const stateDir = join(t.dir, "state");
    fennec = await startFennec({ ...options, stateDir, retention: { maxAgeMs: 3_600_000 } });
    assert.ok(existsSync(join(stateDir, "fennec.db")));
    const id = randomUUID();
    const body = new TextEncoder().encode("kept");
    await fennec.store.enqueue({
      id,
      function: "default/echo",
      request: { method: "POST", path: "/", query: "", headers: {}, body },
      submittedAt: Date.now(),
    });
    const [leased] = await fennec.store.take({ node: "gone", max: 1, leaseMs: 3_600_000, now: Date.now() });
    assert.equal(leased?.record.id, id);
    await fennec.close();

    fennec = await startFennec({ ...options, stateDir });
    const again = await fennec.store.get(id);
    assert.equal(again?.state, "queued", "the call running when Fennec stopped is queued again");
    assert.equal(again?.attempt, 1);
    await fennec.close();
  });
});
