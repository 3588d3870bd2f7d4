import { join } from "node:path";
import { ProcessDriver } from "../../src/sandbox/drivers/process/driver.js";
import { testConfig } from "../helpers/config.js";
import { ROOT } from "../helpers/paths.js";
import { runConformance } from "./suite.js";

const processFn = (name: string, mode: string, transport: "unix" | "tcp" = "unix", isolate = false) =>
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

runConformance("process (unix socket)", async () => ({
  driver: new ProcessDriver(),
  echo: processFn("echo", "echo"),
  hang: processFn("hang", "hang"),
  fail: processFn("fail", "fail"),
}));

runConformance("process (loopback tcp)", async () => ({
  driver: new ProcessDriver(),
  echo: processFn("echo", "echo", "tcp"),
  hang: processFn("hang", "hang", "tcp"),
  fail: processFn("fail", "fail", "tcp"),
}));

runConformance("process (bubblewrap + cgroups)", async () => ({
  driver: new ProcessDriver(),
  echo: processFn("echo", "echo", "unix", true),
  hang: processFn("hang", "hang", "unix", true),
  fail: processFn("fail", "fail", "unix", true),
}));
