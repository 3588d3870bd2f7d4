import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { copyFile, mkdir, writeFile } from "node:fs/promises";
import { request as httpRequest, type IncomingMessage } from "node:http";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import type { CallHost } from "../../src/core/call-host.js";
import { TRUNCATED_MARKER } from "../../src/sandbox/call-log.js";
import type { CallRecord } from "../../src/store/contract.js";
import { errorCode, request, type Reply } from "../helpers/http.js";
import { CLI, ROOT } from "../helpers/paths.js";
import { addWasmFunction, startTestServer, type TestServer } from "../helpers/server.js";
import { waitFor } from "../helpers/wait.js";

const TOKEN = "records-test-token";
const NODE = "records-test-node";
const admin = { authorization: `Bearer ${TOKEN}` };

/** What a call may ask of Fennec is not under test here: every request is refused. */
function refusingCallHost(callId: string, user: string, depth: number): CallHost {
  const refuse = () => Promise.reject(new Error("not available in this test"));
  return {
    callId,
    user,
    depth,
    chain: refuse,
    await: refuse,
    state: {
      get: refuse,
      set: refuse,
      write: refuse,
      append: refuse,
      appended: refuse,
      clearAppended: refuse,
      delete: refuse,
    },
  };
}

interface LogMessage {
  name: string;
  namespace: string;
  instance: string;
  timestamp: string;
  text: string;
  callId?: string;
  stream: string;
}

const ndjson = (text: string): LogMessage[] =>
  text
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => JSON.parse(l) as LogMessage);

describe("call records and function logs", () => {
  let server: TestServer;
  const get = (path: string, headers: Record<string, string> = admin): Promise<Reply> =>
    request(`${server.url}${path}`, { headers });
  const invoke = (path: string, body?: string): Promise<Reply> =>
    request(`${server.url}${path}`, body === undefined ? {} : { method: "POST", body });
  /** The records of `fn`, once `count` of them are there. */
  const recordsOf = (fn: string, count: number, extra = ""): Promise<CallRecord[]> =>
    waitFor(`${count} records of ${fn}`, async () => {
      const list = (await get(`/system/calls?function=${fn}${extra}`)).json<CallRecord[]>();
      return list.length >= count ? list : undefined;
    });
  const logsOf = (query: string, until: (lines: LogMessage[]) => boolean): Promise<LogMessage[]> =>
    waitFor(`log lines for ${query}`, async () => {
      const reply = await get(`/system/logs?${query}`);
      assert.equal(reply.status, 200, reply.text);
      const lines = ndjson(reply.text);
      return until(lines) ? lines : undefined;
    });

  before(async () => {
    server = await startTestServer({
      token: TOKEN,
      node: NODE,
      makeCallHost: refusingCallHost,
      driverSettings: { process: true },
    });
    await addWasmFunction(server.registry, "logger", "logger.wasm");
    await addWasmFunction(server.registry, "exit3", "exit3.wasm");
    const fn = join(server.registry, "proc-log");
    await mkdir(fn);
    await copyFile(join(ROOT, "test", "fixtures", "process", "server.mjs"), join(fn, "server.mjs"));
    await writeFile(
      join(fn, "function.toml"),
      `keepalive = 30\nconcurrent-requests = 1\n[process]\ncommand = [${JSON.stringify(process.execPath)}, "server.mjs", "log"]\n`,
    );
  });
  after(() => server.close());

  it("records every sync call of a wasm function, newest first, with its figures, and names it in X-Call-Id", async () => {
    const ids: string[] = [];
    for (const body of ["one", "two", "three"]) {
      const r = await invoke("/invoke/echo", body);
      assert.equal(r.status, 200, r.text);
      const id = r.headers.get("x-call-id");
      assert.match(id ?? "", /^[0-9a-f-]{36}$/);
      ids.push(id!);
    }
    assert.equal(new Set(ids).size, 3, "every call has its own id");
    const list = await recordsOf("echo", 3);
    assert.deepEqual(
      list.map((r) => r.id),
      [...ids].reverse(),
    );
    const first = list[2]!;
    assert.equal(first.function, "default/echo");
    assert.equal(first.kind, "sync");
    assert.equal(first.state, "succeeded");
    assert.equal(first.node, NODE);
    assert.equal(first.attempt, 1);
    assert.equal(first.status, 200);
    assert.equal(first.startType, "cold");
    assert.equal(list[0]!.startType, "warm");
    for (const r of list) {
      assert.equal(typeof r.execMs, "number");
      assert.equal(typeof r.ttfbMs, "number");
      assert.equal(typeof r.queueWaitMs, "number");
      assert.ok(r.finishedAt! >= r.submittedAt);
      assert.equal(r.errorCode, undefined);
    }
    // One of them, by id; the limit; the filters.
    const one = await get(`/system/calls/${ids[1]}`);
    assert.equal(one.status, 200);
    assert.equal(one.json<CallRecord>().id, ids[1]);
    assert.deepEqual(
      (await get("/system/calls?function=default/echo&limit=2")).json<CallRecord[]>().map((r) => r.id),
      [ids[2], ids[1]],
    );
    assert.equal((await get("/system/calls?function=echo&status=500")).json<CallRecord[]>().length, 0);
    assert.equal((await get("/system/calls?function=echo&status=200&kind=sync")).json<CallRecord[]>().length, 3);
    assert.equal((await get("/system/calls?function=echo&state=failed")).json<CallRecord[]>().length, 0);
    assert.equal((await get("/system/calls?function=echo&since=10m")).json<CallRecord[]>().length, 3);
    assert.equal(
      (await get(`/system/calls?function=echo&since=${Date.now() + 60_000}`)).json<CallRecord[]>().length,
      0,
    );
    const unknown = await get("/system/calls/00000000-0000-0000-0000-000000000000");
    assert.equal(unknown.status, 404);
    assert.equal(errorCode(unknown), "CALL_NOT_FOUND");
    assert.equal(errorCode(await get("/system/calls?since=yesterday")), "BAD_REQUEST");
    assert.equal(errorCode(await get("/system/calls?state=lost")), "BAD_REQUEST");
  });

  it("records a failing call with its error code and message, and sends its X-Call-Id with the error", async () => {
    const r = await invoke("/invoke/exit3");
    assert.equal(errorCode(r), "FN_EXIT");
    const id = r.headers.get("x-call-id");
    assert.ok(id);
    const [record] = await recordsOf("exit3", 1, "&status=FN_EXIT");
    assert.equal(record!.id, id);
    assert.equal(record!.state, "failed");
    assert.equal(record!.errorCode, "FN_EXIT");
    assert.match(record!.errorMessage ?? "", /exited with code 3/);
    const missing = await invoke("/invoke/no-such-function");
    assert.equal(errorCode(missing), "FUNCTION_NOT_FOUND");
    assert.ok(missing.headers.get("x-call-id"));
  });

  it("records calls of a [process] function", async () => {
    const r = await invoke("/invoke/proc-log", "recorded");
    assert.equal(r.status, 200, r.text);
    const [record] = await recordsOf("proc-log", 1);
    assert.equal(record!.id, r.headers.get("x-call-id"));
    assert.equal(record!.status, 200);
    assert.equal(record!.startType, "cold");
    assert.ok(record!.initMs! > 0, "a process's start takes time");
  });

  it("refuses the call and log routes without the admin token", async () => {
    for (const path of ["/system/calls", "/system/calls/x", "/system/logs?function=echo"]) {
      assert.equal(errorCode(await get(path, {})), "UNAUTHORIZED", path);
      assert.equal(errorCode(await get(path, { authorization: "Bearer wrong" })), "UNAUTHORIZED", path);
    }
    assert.equal(
      errorCode(await get("/system/calls", { ...admin, "sec-fetch-site": "cross-site" })),
      "CROSS_SITE_REFUSED",
    );
  });

  it("keeps what a wasm function writes to stderr as lines of its call, bounded per call", async () => {
    const a = await invoke("/invoke/logger", "alpha");
    const b = await invoke("/invoke/logger", "bravo");
    assert.equal(a.text, "logged");
    const idA = a.headers.get("x-call-id")!;
    const idB = b.headers.get("x-call-id")!;
    const lines = await logsOf("function=logger", (l) => l.some((m) => m.text === "called with bravo"));
    const alpha = lines.find((m) => m.text === "called with alpha")!;
    assert.equal(alpha.callId, idA);
    assert.equal(alpha.stream, "stderr");
    assert.equal(alpha.name, "logger");
    assert.equal(alpha.namespace, "default");
    assert.ok(alpha.instance);
    assert.ok(!Number.isNaN(Date.parse(alpha.timestamp)));
    assert.equal(lines.find((m) => m.text === "called with bravo")!.callId, idB);
    // One call's lines only.
    const onlyB = ndjson((await get(`/system/logs?function=logger&call=${idB}`)).text);
    assert.deepEqual(
      onlyB.map((m) => m.text),
      ["called with bravo"],
    );
    // A call that writes 1000 lines of 101 bytes keeps 64 KiB of them, then the marker.
    const big = await invoke("/invoke/logger?lines=1000", "big");
    const idBig = big.headers.get("x-call-id")!;
    const kept = await logsOf(`call=${idBig}&limit=10000`, (l) => l.at(-1)?.text === TRUNCATED_MARKER);
    assert.ok(kept.length > 600 && kept.length < 700, `${kept.length} lines kept`);
    assert.equal(kept.filter((m) => m.text === TRUNCATED_MARKER).length, 1);
  });

  it("keeps what a [process] function writes to stdout and stderr as lines of its call, bounded per call", async () => {
    const r = await invoke("/invoke/proc-log", "charlie");
    const id = r.headers.get("x-call-id")!;
    const lines = await logsOf(`function=proc-log&call=${id}`, (l) => l.length >= 2);
    assert.deepEqual(lines.map((m) => [m.stream, m.text]).sort(), [
      ["stderr", "stderr: charlie"],
      ["stdout", "stdout: charlie"],
    ]);
    const big = await invoke("/invoke/proc-log?lines=1000", "big");
    const idBig = big.headers.get("x-call-id")!;
    const kept = await logsOf(`call=${idBig}&limit=10000`, (l) => l.at(-1)?.text === TRUNCATED_MARKER);
    assert.ok(kept.length > 600 && kept.length < 700, `${kept.length} lines kept`);
  });

  it("follows a function's log: a line written after the follower started reaches it", async () => {
    const url = new URL(`${server.url}/system/logs?function=logger&follow=true&since=1s`);
    const received: LogMessage[] = [];
    let res: IncomingMessage | undefined;
    const req = httpRequest(url, { headers: admin });
    const opened = new Promise<IncomingMessage>((resolve, reject) => {
      req.once("response", resolve);
      req.once("error", reject);
    });
    req.end();
    try {
      res = await opened;
      assert.equal(res.statusCode, 200);
      assert.match(res.headers["content-type"] ?? "", /ndjson/);
      let rest = "";
      res.on("data", (chunk: Buffer) => {
        rest += chunk.toString();
        const parts = rest.split("\n");
        rest = parts.pop()!;
        received.push(...parts.filter((p) => p !== "").map((p) => JSON.parse(p) as LogMessage));
      });
      const r = await invoke("/invoke/logger", "followed");
      const id = r.headers.get("x-call-id");
      const line = await waitFor("the followed line", () =>
        received.find((m) => m.text === "called with followed"),
      );
      assert.equal(line.callId, id);
    } finally {
      req.destroy();
    }
  });

  it("lists and shows calls and prints logs with the CLI", async () => {
    const r = await invoke("/invoke/logger", "from-cli-test");
    const id = r.headers.get("x-call-id")!;
    await recordsOf("logger", 1);
    const cli = (...args: string[]) =>
      promisify(execFile)(process.execPath, [CLI, ...args, "--url", server.url, "--token", TOKEN]);
    const ls = await cli("calls", "ls", "--function", "logger", "--limit", "1");
    const [head, row, ...more] = ls.stdout.trimEnd().split("\n");
    assert.match(head!, /^ID\s+FUNCTION\s+KIND\s+STATE\s+RESULT/);
    assert.match(row!, new RegExp(`^${id}\\s+default/logger\\s+sync\\s+succeeded\\s+200\\s+warm`));
    assert.deepEqual(more, []);
    const json = JSON.parse((await cli("calls", "ls", "--status", "FN_EXIT", "--json")).stdout) as CallRecord[];
    assert.ok(json.length >= 1 && json.every((c) => c.errorCode === "FN_EXIT"));
    const shown = JSON.parse((await cli("calls", "get", id)).stdout) as CallRecord;
    assert.equal(shown.id, id);
    assert.equal(shown.function, "default/logger");
    await logsOf(`call=${id}`, (l) => l.length > 0);
    const printed = await cli("logs", "logger", "--call", id);
    assert.match(printed.stdout, new RegExp(`^\\S+Z ${id} called with from-cli-test\\n$`));
    const missing = await cli("calls", "get", "nope").catch((err: { code: number; stderr: string }) => err);
    assert.equal((missing as { code: number }).code, 1);
    assert.match((missing as { stderr: string }).stderr, /CALL_NOT_FOUND/);
  });
});
