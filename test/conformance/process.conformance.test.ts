import { join } from "node:path";
import { ProcessDriver } from "../../src/sandbox/drivers/process/driver.js";
import { testConfig } from "../helpers/config.js";
import { ROOT } from "../helpers/paths.js";
import { runConformance } from "./suite.js";

const processFn = (name: string, mode: string, transport: "unix" | "tcp", isolate: boolean) =>
  testConfig({
    id: { user: "default", name },
    key: `default/${name}`,
    dir: join(ROOT, "test", "fixtures", "process"),
    sandbox: {
      kind: "process",
      handler: undefined,
      command: [process.execPath, "server.mjs", mode],
      env: {},
      transport,
      memoryMiB: 64,
      isolate,
      pids: 512,
    },
  });

/** The fixture server's modes as the suite's functions: `fail` exits with 3 mid-request, `crash-at-start` with 7. */
const fixture = (transport: "unix" | "tcp", isolate: boolean) => ({
  driver: new ProcessDriver(),
  echo: processFn("echo", "echo", transport, isolate),
  hang: processFn("hang", "hang", transport, isolate),
  fail: processFn("fail", "fail", transport, isolate),
  crash: { config: processFn("fail", "fail", transport, isolate), exitCode: 3 },
  failedStart: { config: processFn("crash-at-start", "crash-at-start", transport, isolate), exitCode: 7 },
  oom: isolate
    ? processFn("alloc", "alloc", transport, isolate)
    : { skip: "a process function without `isolate` runs under no memory limit" },
});

runConformance("process (unix socket)", async () => fixture("unix", false));
runConformance("process (loopback tcp)", async () => fixture("tcp", false));
runConformance("process (bubblewrap + cgroups)", async () => fixture("unix", true));
