import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ratios, type LoadFigures, type RowKey, type WarmRow } from "../../bench/warm.js";

/** A row measured at `loads` (connections → [req/s, p50 µs]). */
function row(key: RowKey, loads: Record<number, [number, number]>, error?: string): WarmRow {
  const figures: LoadFigures[] = Object.entries(loads).map(([c, [rps, p50]]) => ({
    connections: Number(c),
    rps,
    latencyUs: { "50": p50, "99": p50 * 10 },
    errors: 0,
    serverCores: 1,
    serverCpuUsPerRequest: 1,
    clientCores: 0.1,
    rounds: [],
  }));
  return { key, name: key, loads: figures, ...(error ? { error } : {}) };
}

describe("bench/warm ratios: issue 11's goals read from the right rows", () => {
  it("divides Fennec [wasm] by workerd and by bare node:http, per load, and p50 at 1 connection", () => {
    const r = ratios(
      [
        row("bare", { 1: [20_000, 40], 8: [30_000, 200] }),
        row("workerd", { 1: [4_000, 250], 8: [12_000, 600] }),
        row("wasm", { 1: [1_000, 1_000], 8: [3_000, 2_500] }),
        row("process", { 1: [2_000, 500], 8: [6_000, 1_200] }),
      ],
      [1, 8],
    );
    assert.equal(r["wasmOverWorkerdRps_c8"], 0.25);
    assert.equal(r["wasmOverBareRps_c8"], 0.1);
    assert.equal(r["processOverWorkerdRps_c8"], 0.5);
    assert.equal(r["workerdOverBareRps_c8"], 0.4);
    assert.equal(r["wasmOverWorkerdP50_c1"], 4);
    assert.equal(r["wasmOverBareP50_c1"], 25);
    // The client check: bare node:http against the fastest Fennec row ([process] here), not [wasm].
    assert.equal(r["bareOverFastestFennecRps_c8"], 5);
    assert.equal(r["wasmCompareOverWasmRps_c8"], undefined);
  });

  it("leaves out a ratio whose row failed to start instead of dividing by nothing", () => {
    const r = ratios(
      [
        row("bare", { 1: [20_000, 40], 8: [30_000, 200] }),
        row("workerd", {}, "did not start: workerd exited (1)"),
        row("wasm", { 1: [1_000, 1_000], 8: [3_000, 2_500] }),
        row("process", {}, "did not start"),
        row("wasm-compare", { 1: [2_000, 500], 8: [9_000, 900] }),
      ],
      [1, 8],
    );
    assert.equal(r["wasmOverWorkerdRps_c8"], undefined);
    assert.equal(r["wasmOverWorkerdP50_c1"], undefined);
    assert.equal(r["wasmOverBareRps_c8"], 0.1);
    assert.equal(r["wasmCompareOverWasmRps_c8"], 3);
    assert.equal(r["wasmCompareOverWasmP50_c1"], 0.5);
    assert.equal(r["bareOverFastestFennecRps_c8"], 30_000 / 9_000);
  });
});
