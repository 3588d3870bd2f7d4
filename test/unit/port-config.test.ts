import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { FennecError } from "../../src/core/errors.js";
import { parseFunctionToml } from "../../src/config/load-function.js";

const HEAD = "keepalive = 1\nconcurrent-requests = 1\n";

function refused(toml: string, message: RegExp): void {
  assert.throws(
    () => parseFunctionToml(`${HEAD}${toml}`, "f.toml"),
    (err: unknown) =>
      err instanceof FennecError && err.code === "CONFIG_INVALID" && message.test(err.message),
  );
}

describe("function.toml: port (a program serving on a port in its own network namespace)", () => {
  it("goes with an [oci] command and a [container] image without a network", () => {
    const oci = parseFunctionToml(`${HEAD}[oci]\ncommand = ["node", "main.js"]\nport = 8080\n`, "f.toml");
    assert.equal(oci.oci?.port, 8080);
    const ct = parseFunctionToml(`${HEAD}[container]\nimage = "unifaas/node"\nport = 8080\n`, "f.toml");
    assert.equal(ct.container?.port, 8080);
    assert.equal(parseFunctionToml(`${HEAD}[container]\nimage = "x"\n`, "f.toml").container?.port, undefined);
  });

  it("is refused with a handler, with the host's network, and outside 1-65535", () => {
    refused(`[oci]\nhandler = "h.ts"\nport = 8080\n`, /port goes with command/);
    refused(`[container]\nhandler = "h.ts"\nport = 8080\n`, /port goes with image/);
    refused(`[container]\nimage = "x"\nnetwork = "host"\nport = 8080\n`, /network = "none"/);
    refused(`[oci]\ncommand = ["x"]\nport = 0\n`, /port/);
    refused(`[oci]\ncommand = ["x"]\nport = 65536\n`, /port/);
  });
});
