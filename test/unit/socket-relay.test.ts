import assert from "node:assert/strict";
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { connect, createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import type { RelayPlan } from "../../src/sandbox/socket-relay.js";

const RELAY = fileURLToPath(new URL("../../src/sandbox/socket-relay.js", import.meta.url));

function relay(plan: RelayPlan): { child: ChildProcessWithoutNullStreams; ready: Promise<void> } {
  const child = spawn(process.execPath, [RELAY], {
    env: { ...process.env, FENNEC_RELAY: JSON.stringify(plan) },
  });
  let out = "";
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout.on("data", (b: Buffer) => {
      out += b.toString();
      if (out.includes("ready\n")) resolve();
    });
    child.once("exit", (code) => reject(new Error(`the relay exited (${code}) before it was ready`)));
  });
  return { child, ready };
}

/** A server that answers once the client has half-closed: "got: " and all it sent. */
function halfCloseEcho(): Server {
  return createServer({ allowHalfOpen: true }, (c) => {
    let text = "";
    c.on("data", (b: Buffer) => (text += b.toString()));
    c.on("end", () => c.end(`got: ${text}`));
  });
}

/** Sends `text`, half-closes, and resolves with the whole answer. */
async function ask(socket: Socket, text: string): Promise<string> {
  let answer = "";
  socket.on("data", (b: Buffer) => (answer += b.toString()));
  socket.end(text);
  await once(socket, "close");
  return answer;
}

describe("socket relay (port forwarder and tap bridge)", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "fennec-relay-"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it("listens on its socket only once the port answers, relays a half-close, and exits with its stdin", async () => {
    // Two routes, taken in order: the first's port answers from the start, so its socket appearing
    // shows the relay is up and waiting on the second, whose port is closed until the test opens it.
    // (Checking at the port's first connection raced: the relay may create its socket between its
    // probe's handshake and this process seeing that connection.)
    const early = halfCloseEcho();
    await new Promise<void>((r) => early.listen(0, "127.0.0.1", r));
    const server = halfCloseEcho();
    // A free port, closed again: the relay starts with nothing answering there.
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const { port } = server.address() as AddressInfo;
    await new Promise((r) => server.close(r));
    const first = join(dir, "first.sock");
    const sock = join(dir, "port.sock");
    const r = relay({
      routes: [
        { listen: { path: first }, to: { host: "127.0.0.1", port: (early.address() as AddressInfo).port } },
        { listen: { path: sock }, to: { host: "127.0.0.1", port } },
      ],
      awaitTargets: true,
    });
    try {
      while (!existsSync(first)) {
        assert.equal(r.child.exitCode, null, "the relay exited before its first route listened");
        await new Promise((res) => setTimeout(res, 10));
      }
      // A round trip through the first route: the relay has run past setting up that route, so
      // a relay that did not wait would have made the second socket by now.
      assert.equal(await ask(connect(first), "first"), "got: first");
      assert.equal(existsSync(sock), false, "the socket appeared before the port answered");
      server.listen(port, "127.0.0.1");
      await r.ready;
      assert.equal(await ask(connect(sock), "hello"), "got: hello");
      r.child.stdin.end();
      const [code] = (await once(r.child, "exit")) as [number | null];
      assert.equal(code, 0);
    } finally {
      r.child.kill("SIGKILL");
      server.close();
      early.close();
    }
  });

  it("relays both ways at once: TCP to a socket and a socket to TCP", async () => {
    const unixServer = halfCloseEcho();
    const tcpServer = halfCloseEcho();
    const target = join(dir, "target.sock");
    unixServer.listen(target);
    tcpServer.listen(0, "127.0.0.1");
    await Promise.all([once(unixServer, "listening"), once(tcpServer, "listening")]);
    const free = createServer();
    await new Promise<void>((res) => free.listen(0, "127.0.0.1", res));
    const { port: listenPort } = free.address() as AddressInfo;
    await new Promise((res) => free.close(res));
    const inbound = join(dir, "in.sock");
    const r = relay({
      routes: [
        { listen: { host: "127.0.0.1", port: listenPort }, to: { path: target } },
        {
          listen: { path: inbound },
          to: { host: "127.0.0.1", port: (tcpServer.address() as AddressInfo).port },
        },
      ],
    });
    try {
      await r.ready;
      assert.equal(await ask(connect(listenPort, "127.0.0.1"), "to unix"), "got: to unix");
      assert.equal(await ask(connect(inbound), "to tcp"), "got: to tcp");
    } finally {
      r.child.kill("SIGKILL");
      unixServer.close();
      tcpServer.close();
    }
  });

  it("fails with its reason on a plan without routes", async () => {
    const r = relay({ routes: [] });
    let err = "";
    r.child.stderr.on("data", (b: Buffer) => (err += b.toString()));
    const stderrEnded = once(r.child.stderr, "end");
    await assert.rejects(r.ready, /exited \(1\)/);
    await stderrEnded;
    assert.match(err, /no routes/);
  });
});
