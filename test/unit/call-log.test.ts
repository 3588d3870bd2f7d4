import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it } from "node:test";
import { channels, type LogLineEvent } from "../../src/core/events.js";
import { parseSince } from "../../src/gateway/call-routes.js";
import { timeOrderedUuid } from "../../src/invocations/invocations.js";
import {
  CALL_LOG_BYTES,
  InstanceLog,
  publishCallOutput,
  TRUNCATED_MARKER,
} from "../../src/sandbox/call-log.js";

describe("function logs: lines, attribution to calls, bounds", () => {
  let lines: LogLineEvent[] = [];
  const listener = (m: unknown) => void lines.push(m as LogLineEvent);
  beforeEach(() => {
    lines = [];
    channels.log.subscribe(listener);
  });
  afterEach(() => void channels.log.unsubscribe(listener));
  const seen = () => lines.map((l) => [l.callId, l.text]);

  it("attributes a line to the instance's one call in flight, and to none while several run", () => {
    const log = new InstanceLog("default/fn", "i1");
    log.begin("a");
    log.write("stderr", "first\n");
    log.begin("b");
    log.write("stderr", "both running\n");
    log.end("a");
    log.write("stdout", "b alone\n");
    assert.deepEqual(seen(), [
      ["a", "first"],
      [undefined, "both running"],
      ["b", "b alone"],
    ]);
    assert.equal(lines[2]!.stream, "stdout");
    assert.equal(lines[0]!.function, "default/fn");
    assert.equal(lines[0]!.instanceId, "i1");
  });

  it("gives output that comes just after a call's end to that call, until another begins", () => {
    const log = new InstanceLog("default/fn", "i1");
    log.begin("a");
    log.end("a");
    // A pipe read after the answer went out: still the call's.
    log.write("stderr", "late\nunfinished");
    log.begin("b");
    log.write("stderr", "of b\n");
    assert.deepEqual(seen(), [
      ["a", "late"],
      ["a", "unfinished"],
      ["b", "of b"],
    ]);
  });

  it("joins lines split across chunks, multi-byte characters included, and flushes the last one", () => {
    const log = new InstanceLog("default/fn", "i1");
    log.begin("a");
    const bytes = Buffer.from("héllo\nwörld");
    log.write("stderr", bytes.subarray(0, 2));
    log.write("stderr", bytes.subarray(2, 9));
    log.write("stderr", bytes.subarray(9));
    log.flush();
    assert.deepEqual(seen(), [
      ["a", "héllo"],
      ["a", "wörld"],
    ]);
  });

  it("keeps at most CALL_LOG_BYTES of one call's lines, then one marker line", () => {
    const log = new InstanceLog("default/fn", "i1");
    log.begin("big");
    const line = "x".repeat(99) + "\n";
    for (let i = 0; i < 1000; i++) log.write("stderr", line);
    log.end("big");
    log.begin("next");
    log.write("stderr", "fresh\n");
    const big = lines.filter((l) => l.callId === "big");
    assert.equal(big.at(-1)!.text, TRUNCATED_MARKER);
    assert.equal(big.filter((l) => l.text === TRUNCATED_MARKER).length, 1);
    assert.equal(big.length - 1, Math.floor(CALL_LOG_BYTES / 100));
    // The next call has its own budget.
    assert.deepEqual(lines.at(-1), { ...lines.at(-1)!, callId: "next", text: "fresh" });
  });

  it("splits a sandbox's whole output for one call (wasm) the same way", () => {
    publishCallOutput("default/fn", "i1", "c", "stderr", "one\ntwo\n");
    publishCallOutput("default/fn", "i1", "d", "stderr", "x".repeat(CALL_LOG_BYTES + 10));
    publishCallOutput("default/fn", "i1", "e", "stderr", "kept\n", true);
    assert.deepEqual(seen(), [
      ["c", "one"],
      ["c", "two"],
      ["d", TRUNCATED_MARKER],
      ["e", "kept"],
      ["e", TRUNCATED_MARKER],
    ]);
  });

  it("does no work while nobody keeps logs: nothing is held for a later subscriber", () => {
    channels.log.unsubscribe(listener);
    const log = new InstanceLog("default/fn", "i1");
    log.begin("a");
    log.write("stderr", "unheard line\nunheard start of a line");
    publishCallOutput("default/fn", "i1", "a", "stderr", "unheard\n");
    channels.log.subscribe(listener);
    log.write("stderr", "heard\n");
    assert.deepEqual(seen(), [["a", "heard"]]);
  });
});

describe("call ids and queries", () => {
  it("makes version-7 UUIDs that sort by time", () => {
    const a = timeOrderedUuid(1_700_000_000_000);
    const b = timeOrderedUuid(1_700_000_000_001);
    assert.match(a, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.ok(a < b);
    assert.notEqual(timeOrderedUuid(1), timeOrderedUuid(1));
  });

  it("reads since as an ISO time, epoch milliseconds or a duration", () => {
    const now = 1_800_000_000_000;
    assert.equal(parseSince("10m", now), now - 600_000);
    assert.equal(parseSince("1.5h", now), now - 5_400_000);
    assert.equal(parseSince("250ms", now), now - 250);
    assert.equal(parseSince("1700000000000", now), 1_700_000_000_000);
    assert.equal(parseSince("2026-12-02T08:00:00Z", now), Date.parse("2026-12-02T08:00:00Z"));
    for (const bad of ["yesterday", "10", "-5m", ""]) assert.throws(() => parseSince(bad, now), /since=/);
  });
});
