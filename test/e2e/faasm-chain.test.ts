import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { CallRecord } from "../../src/store/contract.js";
import { addWasmFunction, rawRequest, startTestServer, type TestServer } from "../helpers/server.js";

/**
 * Faasm's chaining and state through a whole Fennec: the example that fans out and awaits, the
 * deadlock an awaiting caller would cause at its own function's instance limit, a chain cycle,
 * another user's function, a forged chain depth, the node without room for a child, and state
 * over HTTP (`/s/<user>/<key>`) with its guard and limits.
 */

const TOKEN = "faasm-test-token";
const auth = { authorization: `Bearer ${TOKEN}` };

describe("Faasm chaining and state end to end", () => {
  let t: TestServer;

  const post = (fn: string, body: string, headers: Record<string, string> = {}) =>
    rawRequest(t.url, "POST", `/f/default/${fn}`, body, headers);

  /** Records of the calls `parentId` chained (async calls are recorded when queued). */
  const children = async (parentId: string): Promise<CallRecord[]> => {
    const r = await rawRequest(t.url, "GET", `/system/calls?parent=${parentId}&limit=100`, undefined, auth);
    assert.equal(r.status, 200, r.text);
    return JSON.parse(r.text) as CallRecord[];
  };

  before(async () => {
    t = await startTestServer({ token: TOKEN });
    // The deadlock case: one instance of one slot, and a call that awaits a child of itself.
    await addWasmFunction(t.registry, "ops", "faasm-ops.wasm", "max-instances = 1\n");
    await addWasmFunction(t.registry, "alice/ops", "faasm-ops.wasm");
    await addWasmFunction(t.registry, "env", "env.wasm");
  });

  after(async () => {
    await t.close();
  });

  it("faasm-fanout fans out to its children, awaits them and sums their answers; the records link them", async () => {
    const r = await post("faasm-fanout", "5");
    assert.equal(r.status, 200, r.text);
    assert.equal(r.text, "sum of squares 1..5 = 55 (1+4+9+16+25; run #1)\n");
    const parent = r.headers["x-call-id"] as string;
    const kids = await children(parent);
    assert.equal(kids.length, 5);
    for (const k of kids) {
      assert.equal(k.function, "default/faasm-fanout");
      assert.equal(k.kind, "async");
      assert.equal(k.state, "succeeded");
    }
    // Its state counter moved, and is readable over HTTP.
    assert.equal((await post("faasm-fanout", "2")).text, "sum of squares 1..2 = 5 (1+4; run #2)\n");
    const runs = await rawRequest(t.url, "GET", "/s/default/fanout-runs", undefined, auth);
    assert.equal(Buffer.from(runs.text, "latin1").length, 4);
  });

  it("faasm-chain chains itself: a chain of 3 calls answers with each one's number", async () => {
    const r = await post("faasm-chain", "3");
    assert.equal(r.status, 200, r.text);
    assert.equal(r.text, "3 2 1\n");
  });

  it("a call awaiting a child of its own function at max-instances = 1, concurrent-requests = 1 completes (no deadlock)", async () => {
    const r = await post("ops", "chain:ops:echo:own child");
    assert.equal(r.status, 200, r.text);
    assert.equal(r.text, "child said: in:own child rc=0");
    const kids = await children(r.headers["x-call-id"] as string);
    assert.equal(kids.length, 1);
    assert.equal(kids[0]!.state, "succeeded");
  });

  it("a chain cycle ends at the depth limit (CHAIN_TOO_DEEP), with no runaway", async () => {
    const r = await post("ops", "cycle:ops");
    // Each level exits 1 when its child failed: the top call fails with FN_EXIT.
    assert.equal(r.status, 502, r.text);
    assert.match(r.text, /FN_EXIT/);
    // Depths 1..16 each ran once; the call at 16 was refused its chain.
    let id = r.headers["x-call-id"] as string;
    let depth = 0;
    let last: CallRecord | undefined;
    for (;;) {
      const kids = await children(id);
      if (kids.length === 0) break;
      assert.equal(kids.length, 1);
      last = kids[0]!;
      id = last.id;
      depth++;
    }
    assert.equal(depth, 16);
    assert.equal(last!.errorCode, "CHAIN_TOO_DEEP");
  });

  it("a client cannot forge a chain depth: a sync call starts at 0, and functions never see the header", async () => {
    const r = await post("ops", "chain:ops:echo:deep?", { "x-fennec-chain-depth": "16" });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.text, "child said: in:deep? rc=0");
    // The gateway strips it: a WAGI function shows the headers it was given.
    const shown = await post("env", "", { "x-fennec-chain-depth": "16", "x-other": "kept" });
    assert.match(shown.text, /HTTP_X_OTHER=kept/);
    assert.doesNotMatch(shown.text, /CHAIN_DEPTH/);
  });

  it("an async call (/fa) chains too, and its stored request carries no client-forged depth", async () => {
    const accepted = await rawRequest(t.url, "POST", "/fa/default/ops", "chain:ops:echo:async", {
      "x-fennec-chain-depth": "16",
    });
    assert.equal(accepted.status, 202, accepted.text);
    const id = accepted.headers["x-call-id"] as string;
    let r = await rawRequest(t.url, "GET", `/fa/calls/${id}`);
    while (r.status === 202) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      r = await rawRequest(t.url, "GET", `/fa/calls/${id}`);
    }
    assert.equal(r.status, 200, r.text);
    assert.equal(r.text, "child said: in:async rc=0");
    assert.equal((await children(id)).length, 1);
  });

  it("refuses to chain another user's function (CHAIN_OTHER_USER, 403)", async () => {
    const r = await post("ops", "chain:alice/ops:echo:x");
    assert.equal(r.status, 403, r.text);
    assert.match(r.text, /CHAIN_OTHER_USER/);
    assert.equal((await children(r.headers["x-call-id"] as string)).length, 0);
  });

  it("state over HTTP: PUT, GET, list, DELETE; what a function wrote is there", async () => {
    const put = await rawRequest(t.url, "PUT", "/s/default/greeting", "hi there", {
      ...auth,
      "content-type": "application/octet-stream",
    });
    assert.equal(put.status, 200, put.text);
    assert.equal((await rawRequest(t.url, "GET", "/s/default/greeting", undefined, auth)).text, "hi there");
    assert.equal((await post("ops", "state:counter")).status, 200);
    assert.equal((await rawRequest(t.url, "GET", "/s/default/counter", undefined, auth)).text, "Hello world");
    const list = JSON.parse((await rawRequest(t.url, "GET", "/s/default", undefined, auth)).text) as {
      keys: string[];
    };
    assert.ok(list.keys.includes("greeting") && list.keys.includes("counter"), JSON.stringify(list));
    assert.equal((await rawRequest(t.url, "DELETE", "/s/default/greeting", undefined, auth)).status, 204);
    const gone = await rawRequest(t.url, "GET", "/s/default/greeting", undefined, auth);
    assert.equal(gone.status, 404);
  });

  it("state over HTTP is admin-guarded and bounded", async () => {
    assert.equal((await rawRequest(t.url, "GET", "/s/default/counter")).status, 401);
    const crossSite = await rawRequest(t.url, "PUT", "/s/default/x", "v", {
      ...auth,
      "sec-fetch-site": "cross-site",
    });
    assert.equal(crossSite.status, 403);
    assert.match(crossSite.text, /CROSS_SITE_REFUSED/);
    const form = await rawRequest(t.url, "PUT", "/s/default/x", "v", {
      ...auth,
      "content-type": "text/plain",
    });
    assert.equal(form.status, 415);
    const longKey = await rawRequest(t.url, "PUT", `/s/default/${"k".repeat(300)}`, "v", auth);
    assert.equal(longKey.status, 413);
    assert.match(longKey.text, /STATE_TOO_LARGE/);
    // 16 MiB + 1 announced: refused before the body is read.
    const big = await rawRequest(t.url, "PUT", "/s/default/big", "v", {
      ...auth,
      "content-length": String(16 * 2 ** 20 + 1),
    });
    assert.equal(big.status, 413);
    assert.match(big.text, /STATE_TOO_LARGE/);
  });
});

describe("Faasm chaining when the node has no room for a child", () => {
  let t: TestServer;

  before(async () => {
    // Room for one instance of `ops`, not two: one reserves 32 MiB (its cap) + its initial memory
    // (the cap until the module is compiled, then 1 MiB) + 2 MiB: 66 or 35 MiB.
    t = await startTestServer({ memoryBudgetMiB: 68 });
    await addWasmFunction(t.registry, "ops", "faasm-ops.wasm", "max-instances = 1\n", 32);
  });

  after(async () => {
    await t.close();
  });

  it("an await whose child can never be placed fails with CHAIN_NO_CAPACITY instead of hanging", async () => {
    const r = await rawRequest(t.url, "POST", "/f/default/ops", "chain:ops:echo:x");
    assert.equal(r.status, 503, r.text);
    assert.match(r.text, /CHAIN_NO_CAPACITY/);
  });
});
