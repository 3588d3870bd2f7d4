import { join } from "node:path";
import { OciDriver } from "../../src/sandbox/drivers/oci/driver.js";
import { testConfig } from "../helpers/config.js";
import { ROOT } from "../helpers/paths.js";
import { runConformance } from "./suite.js";

// Needs root, runc and runsc (.ci/run installs them); under CI=true a missing tool fails.
const ociFn = (name: string, mode: string, runtime: "runc" | "runsc") =>
  testConfig({
    id: { user: "default", name },
    key: `default/${name}`,
    dir: join(ROOT, "test", "fixtures", "process"),
    sandbox: {
      kind: "oci",
      command: [process.execPath, "server.mjs", mode],
      handler: undefined,
      runtime,
      env: {},
      memoryMiB: 256,
      pids: 1024,
      rootfs: "shared",
    },
  });

for (const runtime of ["runc", "runsc"] as const) {
  runConformance(`oci (${runtime})`, async () => ({
    driver: new OciDriver(),
    echo: ociFn("echo", "echo", runtime),
    hang: ociFn("hang", "hang", runtime),
    fail: ociFn("fail", "fail", runtime),
  }));
}
