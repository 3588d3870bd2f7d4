import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { FennecError } from "../../src/core/errors.js";
import { sandboxKinds } from "../../src/sandbox/drivers/index.js";

const { loader } = sandboxKinds;
/** The `port` of the one sandbox table `toml` declares, as the loader typed it. */
function portOf(toml: string): number | undefined {
  const sandbox = loader.load({ user: "default", name: "f" }, "/fn", "f.toml", `${HEAD}${toml}`).sandbox;
  return "port" in sandbox ? sandbox.port : undefined;
}

const HEAD = "keepalive = 1\nconcurrent-requests = 1\n";

function refused(toml: string, message: RegExp): void {
  assert.throws(
    () => loader.parse(`${HEAD}${toml}`, "f.toml"),
    (err: unknown) =>
      err instanceof FennecError && err.code === "CONFIG_INVALID" && message.test(err.message),
  );
}

describe("function.toml: port (a program serving on a port in its own network namespace)", () => {
  it("goes with an [oci] command and a [container] image without a network", () => {
    assert.equal(portOf(`[oci]\ncommand = ["node", "main.js"]\nport = 8080\n`), 8080);
    assert.equal(portOf(`[container]\nimage = "unifaas/node"\nport = 8080\n`), 8080);
    assert.equal(portOf(`[container]\nimage = "x"\n`), undefined);
  });

  it("is refused with a handler, with the host's network, and outside 1-65535", () => {
    refused(`[oci]\nhandler = "h.ts"\nport = 8080\n`, /port goes with command/);
    refused(`[container]\nhandler = "h.ts"\nport = 8080\n`, /port goes with image/);
    refused(`[container]\nimage = "x"\nnetwork = "host"\nport = 8080\n`, /network = "none"/);
    refused(`[oci]\ncommand = ["x"]\nport = 0\n`, /port/);
    refused(`[oci]\ncommand = ["x"]\nport = 65536\n`, /port/);
  });
});
