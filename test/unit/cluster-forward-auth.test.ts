import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { FennecError } from "../../src/core/errors.js";
import { ForwardAuth, WINDOW_MS, type ForwardFields } from "../../src/cluster/forward-auth.js";

const FIELDS: ForwardFields = {
  from: "n1",
  to: "n2",
  callId: "0190f0a0-0000-7000-8000-000000000001",
  requestId: "req-1",
  placement: "home",
  method: "POST",
  url: "/invoke/echo/x?y=1",
};
const T0 = 1_800_000_000_000;

describe("signing forwarded calls (forward-auth.ts)", () => {
  const key = randomBytes(32);

  it("accepts a signature of the same fields by the same key, once", () => {
    const signer = new ForwardAuth(key);
    const receiver = new ForwardAuth(Buffer.from(key));
    const sig = signer.sign(FIELDS, T0);
    assert.match(sig, /^v1\.\d+\.[A-Za-z0-9_-]{43}$/);
    assert.equal(receiver.check(FIELDS, sig, T0 + 5), undefined);
    // The same request again (a replay) is refused within the window.
    assert.equal(receiver.check(FIELDS, sig, T0 + 10), "replayed");
    // Two calls that differ in any field have different signatures, both accepted.
    assert.equal(
      receiver.check(
        { ...FIELDS, requestId: "req-2" },
        signer.sign({ ...FIELDS, requestId: "req-2" }, T0),
        T0,
      ),
      undefined,
    );
  });

  it("refuses a signature when any signed field was changed", () => {
    const signer = new ForwardAuth(key);
    const sig = signer.sign(FIELDS, T0);
    for (const [field, value] of [
      ["from", "n3"],
      ["to", "n3"],
      ["callId", "0190f0a0-0000-7000-8000-000000000002"],
      ["requestId", "req-x"],
      ["placement", "warm"],
      ["method", "GET"],
      ["url", "/invoke/echo/x?y=2"],
    ] as const) {
      const receiver = new ForwardAuth(key);
      assert.equal(receiver.check({ ...FIELDS, [field]: value }, sig, T0), "bad signature", field);
    }
    // ... or the time it names (the MAC covers it).
    const [, at, mac] = sig.split(".");
    assert.equal(new ForwardAuth(key).check(FIELDS, `v1.${Number(at) + 1}.${mac}`, T0), "bad signature");
  });

  it("refuses another cluster's key, an expired or future signature, and malformed ones", () => {
    const sig = new ForwardAuth(key).sign(FIELDS, T0);
    assert.equal(new ForwardAuth(randomBytes(32)).check(FIELDS, sig, T0), "bad signature");
    assert.equal(new ForwardAuth(key).check(FIELDS, sig, T0 + WINDOW_MS + 1), "expired");
    assert.equal(new ForwardAuth(key).check(FIELDS, sig, T0 - WINDOW_MS - 1), "expired");
    assert.equal(new ForwardAuth(key).check(FIELDS, sig, T0 + WINDOW_MS), undefined);
    for (const bad of [undefined, ""]) assert.equal(new ForwardAuth(key).check(FIELDS, bad, T0), "missing");
    for (const bad of ["x", "v2" + sig.slice(2), sig + "A", `v1.${T0}.`, `v1.abc.${sig.split(".")[2]}`])
      assert.equal(new ForwardAuth(key).check(FIELDS, bad, T0), "malformed", bad);
  });

  it("forgets seen signatures only after they expired, so none is accepted twice", () => {
    const signer = new ForwardAuth(key);
    const receiver = new ForwardAuth(key);
    const first = { ...FIELDS, requestId: "first" };
    assert.equal(receiver.check(first, signer.sign(first, T0), T0), undefined);
    // Seen just before the receiver's memory rotates, signed a whole window ahead (a fast
    // clock): valid until almost two windows later.
    const seenAt = T0 + 2 * WINDOW_MS - 1;
    const ahead = signer.sign(FIELDS, seenAt + WINDOW_MS);
    assert.equal(receiver.check(FIELDS, ahead, seenAt), undefined);
    // Other calls keep arriving, rotating the receiver's memory more than once.
    for (let t = seenAt; t <= seenAt + 2 * WINDOW_MS; t += WINDOW_MS / 4) {
      const f = { ...FIELDS, requestId: `r${t}` };
      assert.equal(receiver.check(f, signer.sign(f, t), t), undefined);
      assert.equal(receiver.check(FIELDS, ahead, t), "replayed", `at +${t - seenAt} ms`);
    }
    assert.equal(receiver.check(FIELDS, ahead, seenAt + 2 * WINDOW_MS + 1), "expired");
  });

  it("verify throws FORWARD_UNAUTHENTICATED with the reason, never the key", () => {
    const receiver = new ForwardAuth(key);
    assert.throws(
      () => receiver.verify(FIELDS, undefined, T0),
      (err: unknown) => {
        assert.ok(err instanceof FennecError);
        assert.equal(err.code, "FORWARD_UNAUTHENTICATED");
        assert.match(err.message, /no signature/);
        assert.ok(!err.message.includes(key.toString("base64url")));
        return true;
      },
    );
    assert.throws(
      () => receiver.verify(FIELDS, new ForwardAuth(key).sign(FIELDS, T0 - 10 * WINDOW_MS), T0),
      /clocks in sync/,
    );
    assert.throws(() => new ForwardAuth(randomBytes(16)), /at least 32 bytes/);
  });
});
