import { join } from "node:path";
import { after, before } from "node:test";
import type { FunctionConfig } from "../../src/config/function-config.js";
import { ContainerDriver } from "../../src/sandbox/drivers/container/driver.js";
import { LABEL } from "../../src/sandbox/drivers/container/engine.js";
import { testConfig } from "../helpers/config.js";
import { importFixtureImage, startDockerd, type TestDockerd } from "../helpers/docker.js";
import { ROOT } from "../helpers/paths.js";
import { runConformance } from "./suite.js";

// Starts a real dockerd (needs root and docker.io, which .ci/run installs; under CI=true a missing
// tool fails) and runs the shared suite on the container driver under runc and under runsc.
let dockerd: TestDockerd;
let image: string;
const ready = (async () => {
  dockerd = await startDockerd();
  image = await importFixtureImage(dockerd);
})();
before(() => ready);
after(async () => {
  await ready.catch(() => undefined);
  await dockerd?.stop();
});

const containerFn = (
  name: string,
  mode: string,
  runtime: string | undefined,
  memoryMiB = 256,
): FunctionConfig =>
  testConfig({
    id: { user: "default", name },
    key: `default/${name}`,
    dir: join(ROOT, "test", "fixtures", "process"),
    sandbox: {
      kind: "container",
      image,
      handler: undefined,
      memoryMiB,
      runtime,
      env: { FENNEC_TEST_MODE: mode },
      pids: 1024,
      network: "none",
    },
  });

for (const runtime of ["runc", "runsc"] as const) {
  runConformance(`container (docker, ${runtime})`, async () => {
    await ready;
    const driver = new ContainerDriver({ socketPath: dockerd.socketPath });
    return {
      driver,
      echo: containerFn("echo", "echo", runtime),
      hang: containerFn("hang", "hang", runtime),
      fail: containerFn("fail", "fail", runtime),
      crash: { config: containerFn("fail", "fail", runtime), exitCode: 3 },
      failedStart: { config: containerFn("crash-at-start", "crash-at-start", runtime), exitCode: 7 },
      oom: containerFn("alloc", "alloc", runtime, 96),
      // Its container, live or stopped, in the engine.
      leftovers: async (id) =>
        (
          await driver.engine.api.listContainers({
            all: true,
            filters: { label: [`${LABEL.instance}=${id}`] },
          })
        ).map((c) => `container ${c.Id.slice(0, 12)} (${c.State})`),
    };
  });
}
