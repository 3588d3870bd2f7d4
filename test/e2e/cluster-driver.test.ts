import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { SANDBOX_KINDS } from "../../src/sandbox/drivers/index.js";
import { SandboxKinds } from "../../src/sandbox/kinds.js";
import { request } from "../helpers/http.js";
import { startNats, type TestNats } from "../helpers/nats.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { waitFor } from "../helpers/wait.js";

/** Every kind known (functions load), but the wasm kind's driver left off: as a node without it. */
const withoutWasm = new SandboxKinds(
  SANDBOX_KINDS.map((k) => (k.kind === "wasm" ? { ...k, create: () => Promise.resolve(undefined) } : k)),
);

describe("an async call on a cluster node without the function's driver", () => {
  let nats: TestNats;
  const servers: TestServer[] = [];
  before(async () => {
    nats = await startNats();
  });
  after(async () => {
    for (const s of servers) await s.close();
    await nats.stop();
  });

  it("is given back unrun, its attempt not spent, and runs on a node that has the driver", async () => {
    const a = await startTestServer({ cluster: nats.url, node: "a", kinds: withoutWasm });
    servers.push(a);
    const submitted = await request(`${a.url}/fa/default/hello`, { method: "POST" });
    assert.equal(submitted.status, 202, submitted.text);
    const { callId } = submitted.json<{ callId: string }>();
    // A takes it (alone, it is the only node), finds no driver, and puts it back for another.
    const back = await waitFor("A to give the call back", async () => {
      const r = (await request(`${a.url}/system/calls/${callId}`)).json<{
        state: string;
        attempt: number;
        errorCode?: string;
      }>();
      return r.errorCode === "DRIVER_UNAVAILABLE" ? r : undefined;
    });
    assert.equal(back.state, "queued", "not failed: another node may run it");
    assert.equal(back.attempt, 0, "no attempt spent");

    // B's registry has the function before it starts (sharing functions is another part's job).
    const b = await startTestServer({ cluster: nats.url, node: "b" });
    servers.push(b);
    const done = await waitFor("the call to run on B", async () => {
      const r = await request(`${a.url}/fa/calls/${callId}`);
      return r.status === 202 ? undefined : r;
    });
    assert.equal(done.status, 200, done.text);
    assert.equal(done.headers.get("x-fennec-call-attempt"), "1");
  });
});
