import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { request } from "../helpers/http.js";
import { startTestServer } from "../helpers/server.js";

// Events travel on process-wide diagnostics channels; each Fennec must count only its own.
describe("two Fennecs in one process", () => {
  it("keep separate /stats and /metrics", async () => {
    const a = await startTestServer();
    const b = await startTestServer();
    try {
      for (let i = 0; i < 3; i++) assert.equal((await request(`${a.url}/invoke/hello/`)).status, 200);
      const statsA = (await request(`${a.url}/stats`)).json<Record<string, number>>();
      const statsB = (await request(`${b.url}/stats`)).json<Record<string, number>>();
      assert.equal(statsA["NumbInitVms"], 1);
      assert.equal(statsB["NumbInitVms"], 0);
      assert.equal(statsB["FuncExecTimeNanoAvg"], -1);
      assert.doesNotMatch(
        (await request(`${b.url}/metrics`)).text,
        /fennec_invocations_total\{function="default\/hello"/,
      );
    } finally {
      await a.close();
      await b.close();
    }
  });
});
