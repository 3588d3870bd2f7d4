import { createHash } from "node:crypto";
import { PassThrough, Readable } from "node:stream";
import { FennecError } from "../../src/core/errors.js";
import type { InvokeRequest, InvokeResponse } from "../../src/core/types.js";
import { FakeDriver } from "../../src/sandbox/drivers/fake/driver.js";
import { testConfig } from "../helpers/config.js";
import { BLOCK, patternBlock, runConformance } from "./suite.js";

interface Gate {
  open: boolean;
  closed: boolean;
  received: number;
  readonly waiters: Set<() => void>;
}

/**
 * The suite's streaming routes (`/stream/...`, as test/fixtures/process/server.mjs serves them),
 * in memory: the fake's bodies are streams like any sandbox's.
 */
function streamRoutes(): (req: InvokeRequest) => InvokeResponse | undefined {
  const gates = new Map<string, Gate>();
  const gateOf = (name: string) => {
    let g = gates.get(name);
    if (!g) gates.set(name, (g = { open: false, closed: false, received: 0, waiters: new Set() }));
    return g;
  };
  const changed = (g: Gate) => [...g.waiters].forEach((w) => w());
  const until = (g: Gate, test: (g: Gate) => boolean) =>
    new Promise<void>((resolve) => {
      const check = () => {
        if (!test(g)) return;
        g.waiters.delete(check);
        resolve();
      };
      g.waiters.add(check);
      check();
    });
  const later = (g: Gate, test: (g: Gate) => boolean, answer: () => string): InvokeResponse => {
    const body = new PassThrough();
    void until(g, test).then(() => body.end(answer()));
    return { status: 200, headers: [], body };
  };
  return (req) => {
    if (!req.path.startsWith("/stream/")) return undefined;
    const params = new URLSearchParams(req.query);
    const g = gateOf(params.get("gate") ?? "");
    switch (req.path) {
      case "/stream/out": {
        let ended = false;
        const body = new Readable({
          read() {},
          destroy(err, done) {
            if (!ended) {
              g.closed = true;
              changed(g);
            }
            done(err);
          },
        });
        body.push("event: 1\n\n");
        void until(g, (x) => x.open || x.closed).then(() => {
          if (g.closed) return;
          ended = true;
          body.push("event: 2\n\n");
          body.push(null);
        });
        return { status: 200, headers: [["content-type", "text/event-stream"]], body };
      }
      case "/stream/open":
        g.open = true;
        changed(g);
        return later(
          g,
          () => true,
          () => "opened",
        );
      case "/stream/in": {
        const hash = createHash("sha256");
        const out = new PassThrough();
        req.body.on("data", (c: Buffer) => {
          hash.update(c);
          g.received += c.length;
          changed(g);
        });
        req.body.on("end", () => out.end(JSON.stringify({ bytes: g.received, sha256: hash.digest("hex") })));
        return { status: 200, headers: [], body: out };
      }
      case "/stream/seen":
        return later(
          g,
          (x) => x.received >= Number(params.get("bytes")),
          () => String(g.received),
        );
      case "/stream/closed":
        return later(
          g,
          (x) => x.closed,
          () => "closed",
        );
      case "/stream/bytes": {
        const n = Number(params.get("n"));
        const half = Math.floor(n / 2 / BLOCK) * BLOCK;
        const body = Readable.from(
          (async function* () {
            for (let at = 0; at < n; at += BLOCK) {
              if (at === half) await until(g, (x) => x.open);
              yield patternBlock(at / BLOCK, Math.min(BLOCK, n - at));
            }
          })(),
          { objectMode: false },
        );
        return { status: 200, headers: [["content-length", String(n)]], body };
      }
    }
    return { status: 404, headers: [], body: Readable.from([]) };
  };
}

// The in-memory driver must honour the same contract the real ones do; its behaviour per
// function is chosen by name.
runConformance("fake (in-memory, scheduler logic only)", async () => {
  const driver = new FakeDriver();
  const streaming = streamRoutes();
  driver.behaviour.respond = (req, id) => {
    const streamed = streaming(req);
    if (streamed) return streamed;
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
