import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseByteSize } from "../../src/config/byte-size.js";
import { parseDuration } from "../../src/config/duration.js";

describe("command-line durations and sizes (serve's retention flags)", () => {
  it("reads a duration with its unit, and nothing else", () => {
    assert.equal(parseDuration("7d"), 7 * 86_400_000);
    assert.equal(parseDuration("24h"), 86_400_000);
    assert.equal(parseDuration("90m"), 5_400_000);
    assert.equal(parseDuration("30s"), 30_000);
    assert.equal(parseDuration("1.5h"), 5_400_000);
    assert.equal(parseDuration("250ms"), 250);
    for (const bad of ["7", "7x", "", "-1d", "0s", "d", "1e3s", "7 days"])
      assert.equal(parseDuration(bad), undefined, bad);
  });

  it("reads a size as bytes or with a binary unit", () => {
    assert.equal(parseByteSize("512MiB"), 512 * 2 ** 20);
    assert.equal(parseByteSize("1GiB"), 2 ** 30);
    assert.equal(parseByteSize("4096"), 4096);
    assert.equal(parseByteSize("1.5KiB"), 1536);
    for (const bad of ["1GB", "0", "", "-5", "1 gib", "MiB"])
      assert.equal(parseByteSize(bad), undefined, bad);
  });
});
