import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { FunctionConfig, SandboxConfig } from "../../src/config/function-config.js";
import { probeSandboxes, sandboxOf, type HostProbe } from "../../src/cluster/sandboxes.js";
import { testConfig } from "../helpers/config.js";
import { tempDir } from "../helpers/paths.js";

const config = (sandbox: Record<string, unknown>): FunctionConfig =>
  testConfig({ sandbox: sandbox as unknown as SandboxConfig });

/** A host that has what it is told, and says why not for the rest. */
function host(has: {
  bins?: string[];
  firecracker?: boolean;
  guestKernel?: boolean;
  docker?: Record<string, { path?: string; runtimeArgs?: string[] }>;
}): HostProbe {
  return {
    executable: (name, pkg) =>
      has.bins?.includes(name) ? undefined : `${name} is not installed: apt-get install ${pkg}`,
    firecracker: async () => (has.firecracker ? undefined : "Firecracker is not installed"),
    guestKernel: async () => (has.guestKernel ? undefined : "no Fennec guest kernel"),
    docker: async () =>
      has.docker ? { runtimes: has.docker } : { error: "the Docker engine cannot be reached (ENOENT)" },
  };
}

const ALL = new Map<string, unknown>(["wasm", "process", "oci", "container", "vm"].map((k) => [k, {}]));

describe("sandboxOf: what a function needs, in the vocabulary nodes publish", () => {
  it("names each kind and what inside it needs another host", () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ kind: "wasm" }, "wasm"],
      [{ kind: "process", isolate: false }, "process"],
      [{ kind: "process", isolate: true }, "process/isolated"],
      [{ kind: "oci", runtime: "runc" }, "oci/runc"],
      [{ kind: "oci", runtime: "runsc" }, "oci/runsc"],
      [{ kind: "container", runtime: undefined }, "container"],
      [{ kind: "container", runtime: "runsc" }, "container/runsc"],
      [{ kind: "vm", hypervisor: { type: "microvm" }, kernel: undefined, image: undefined }, "vm/qemu"],
      [{ kind: "vm", hypervisor: { type: "qemu" }, kernel: "/k", image: "/i" }, "vm/qemu-image"],
      [{ kind: "vm", hypervisor: { type: "microvm" }, kernel: "/k", image: undefined }, "vm/unikernel"],
      [{ kind: "vm", hypervisor: { type: "firecracker" }, kernel: "/k", image: "/i" }, "vm/firecracker"],
      [
        { kind: "vm", hypervisor: { type: "firecracker" }, kernel: undefined, image: undefined },
        "vm/firecracker-guest",
      ],
      [{ kind: "fake" }, "fake"],
    ];
    for (const [sandbox, name] of cases)
      assert.equal(sandboxOf(config(sandbox)), name, JSON.stringify(sandbox));
  });
});

describe("probeSandboxes: what this node can run, and why not the rest", () => {
  it("a full host runs everything; every name sandboxOf makes is in one list or the other", async () => {
    const r = await probeSandboxes(ALL, {
      host: host({
        bins: ["bwrap", "setpriv", "runc", "runsc", "qemu-system-x86_64"],
        firecracker: true,
        guestKernel: true,
        docker: { runc: { path: "runc" }, runsc: { path: "/usr/bin/runsc", runtimeArgs: ["--oci-seccomp"] } },
      }),
    });
    assert.deepEqual(r.missing, {});
    for (const name of [
      "wasm",
      "process",
      "process/isolated",
      "oci/runc",
      "oci/runsc",
      "container",
      "container/runc",
      "container/runsc",
      "vm/qemu",
      "vm/qemu-image",
      "vm/unikernel",
      "vm/firecracker",
      "vm/firecracker-guest",
    ])
      assert.ok(r.sandboxes.includes(name), name);
  });

  it("a bare host says what each missing sandbox lacks", async () => {
    const r = await probeSandboxes(new Map([...ALL].filter(([k]) => k !== "process")), {
      enableHint: (kind) => (kind === "process" ? "start Fennec with --process to enable it" : undefined),
      host: host({ bins: ["runc"] }),
    });
    assert.deepEqual(r.sandboxes, ["wasm", "oci/runc"]);
    assert.match(r.missing["process"]!, /--process/);
    assert.match(r.missing["process/isolated"]!, /--process/);
    assert.match(r.missing["oci/runsc"]!, /runsc is not installed/);
    assert.match(r.missing["container"]!, /Docker engine cannot be reached/);
    assert.match(r.missing["container/runsc"]!, /Docker engine cannot be reached/);
    assert.match(r.missing["vm/qemu-image"]!, /qemu-system-x86_64 is not installed/);
    assert.match(r.missing["vm/firecracker"]!, /Firecracker/);
  });

  it("QEMU without Fennec's guest kernel runs images and unikernels, not handlers; gVisor without seccomp is refused", async () => {
    const r = await probeSandboxes(ALL, {
      host: host({ bins: ["qemu-system-x86_64"], docker: { runc: {}, runsc: { path: "/usr/bin/runsc" } } }),
    });
    assert.ok(r.sandboxes.includes("vm/qemu-image") && r.sandboxes.includes("vm/unikernel"));
    assert.match(r.missing["vm/qemu"]!, /guest kernel/);
    assert.ok(r.sandboxes.includes("container") && r.sandboxes.includes("container/runc"));
    assert.match(r.missing["container/runsc"]!, /--oci-seccomp/);
  });

  it("a kind it does not know (a stand-in driver) runs where its driver is", async () => {
    const r = await probeSandboxes(new Map([["fake", {}]]), { host: host({}) });
    assert.ok(r.sandboxes.includes("fake"));
    assert.ok("wasm" in r.missing);
  });

  it("asks the Docker engine on the container driver's socket (GET /info), without its client", async () => {
    const { dir, cleanup } = await tempDir();
    const socketPath = join(dir, "docker.sock");
    const server: Server = createServer((req, res) => {
      assert.equal(req.url, "/info");
      res
        .writeHead(200, { "content-type": "application/json" })
        .end(
          JSON.stringify({ Runtimes: { runc: { path: "runc" }, "io.containerd.runc.v2": { path: "runc" } } }),
        );
    });
    await new Promise<void>((r) => server.listen(socketPath, r));
    try {
      const drivers = new Map<string, unknown>([["container", { engine: { socketPath } }]]);
      const up = await probeSandboxes(drivers);
      assert.ok(
        up.sandboxes.includes("container") && up.sandboxes.includes("container/io.containerd.runc.v2"),
      );
      assert.match(up.missing["container/runsc"]!, /no runtime "runsc"/);
      const down = await probeSandboxes(
        new Map([["container", { engine: { socketPath: join(dir, "none.sock") } }]]),
      );
      assert.match(down.missing["container"]!, /cannot be reached \(ENOENT\)/);
    } finally {
      await new Promise((r) => server.close(r));
      await cleanup();
    }
  });
});
