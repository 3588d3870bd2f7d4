import { FennecError } from "../../src/core/errors.js";
import { FakeDriver } from "../../src/sandbox/drivers/fake/driver.js";
import { testConfig } from "../helpers/config.js";
import { runConformance } from "./suite.js";

// The in-memory driver must honour the same contract the real ones do; its behaviour per
// function is chosen by name.
runConformance("fake (in-memory, scheduler logic only)", async () => {
  const driver = new FakeDriver();
  driver.behaviour.respond = (req, id) => {
    if (req.headers["x-fake-mode"] === "fail") throw new FennecError("FN_CRASHED", "fails on purpose");
    return {
      status: 200,
      headers: [
        ["x-method", req.method],
        ["x-path", req.path],
        ["x-query", req.query],
        ["x-header", req.headers["x-conformance"] ?? ""],
        ["x-instance", id],
      ],
      body: req.body,
    };
  };
  const wrap = driver.start.bind(driver);
  // hang and fail are told apart by function name.
  driver.start = async (ctx) => {
    const handle = await wrap(ctx);
    const name = ctx.config.id.name;
    return {
      ...handle,
      invoke: (req, ictx) => {
        if (name === "hang")
          return new Promise((_, reject) =>
            ictx.signal.addEventListener("abort", () => reject(ictx.signal.reason)),
          );
        if (name === "fail")
          return handle.invoke({ ...req, headers: { ...req.headers, "x-fake-mode": "fail" } }, ictx);
        return handle.invoke(req, ictx);
      },
    };
  };
  return {
    driver,
    echo: testConfig({ id: { user: "default", name: "echo" }, key: "default/echo" }),
    hang: testConfig({ id: { user: "default", name: "hang" }, key: "default/hang" }),
    fail: testConfig({ id: { user: "default", name: "fail" }, key: "default/fail" }),
    crash: { skip: "the fake runs no process: nothing exits, so there is no exit code to report" },
    failedStart: { skip: "the fake runs no process: nothing exits, so there is no exit code to report" },
  };
});
