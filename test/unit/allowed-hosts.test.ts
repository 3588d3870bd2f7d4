import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { AllowedHosts } from "../../src/gateway/allowed-hosts.js";

describe("AllowedHosts: the Host names the gateway answers to (DNS rebinding)", () => {
  it("answers to loopback names and any IP literal by default, port or not", () => {
    const hosts = new AllowedHosts();
    for (const host of [
      "localhost",
      "localhost:8123",
      "LOCALHOST.:8123",
      "app.localhost",
      "a.b.localhost:1",
      "127.0.0.1:8123",
      "10.0.2.2",
      "[::1]:8123",
      "[::1]",
      "[fe80::1]:80",
      undefined, // HTTP/1.0 without Host: not a browser
    ])
      assert.ok(hosts.allows(host), String(host));
    for (const host of [
      "evil.example",
      "evil.example:8123",
      "localhost.evil.example",
      "evillocalhost",
      "127.0.0.1.nip.io",
      "2130706433",
      "",
      "[evil.example]",
    ])
      assert.ok(!hosts.allows(host), host);
  });

  it("answers to the name it is bound to and the names listed, a leading dot adding subdomains", () => {
    const hosts = new AllowedHosts(["Fennec.Example.", ".apps.test"], "node1.lan");
    for (const host of ["node1.lan:8123", "fennec.example", "apps.test", "x.apps.test:80"])
      assert.ok(hosts.allows(host), host);
    for (const host of ["sub.fennec.example", "xapps.test", "node1.lan.evil.example"])
      assert.ok(!hosts.allows(host), host);
    assert.ok(new AllowedHosts(["*"]).allows("anything.example"));
  });

  it("refuses entries that are not a host name, .name or *", () => {
    for (const entry of ["http://x.test/", "x.test:8123", "*.x.test", "a b", "", "x..test"])
      assert.throws(() => new AllowedHosts([entry]), /is not a host name/, entry);
  });

  it("says in its refusal which flag would allow the name", () => {
    const hosts = new AllowedHosts();
    const req = { headers: { host: "Fennec.Example.Com:8123" } } as never;
    assert.throws(
      () => hosts.check(req),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, "HOST_NOT_ALLOWED");
        assert.match(err.message, /--allowed-host fennec\.example\.com /);
        return true;
      },
    );
  });
});
