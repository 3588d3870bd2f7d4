import { OciDriver } from "../../src/sandbox/drivers/oci/driver.js";
import { ociFixtureConfig } from "../helpers/config.js";
import { runConformance } from "./suite.js";

// Needs root, runc and runsc (.ci/run installs them); under CI=true a missing tool fails.
const ociFn = (name: string, mode: string, runtime: "runc" | "runsc") =>
  ociFixtureConfig(mode, runtime, { name });

for (const runtime of ["runc", "runsc"] as const) {
  runConformance(`oci (${runtime})`, async () => ({
    driver: new OciDriver(),
    echo: ociFn("echo", "echo", runtime),
    hang: ociFn("hang", "hang", runtime),
    fail: ociFn("fail", "fail", runtime),
  }));
}
