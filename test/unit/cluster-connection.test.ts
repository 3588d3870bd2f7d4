import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmod, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { nkeyAuthenticator, nkeys } from "@nats-io/transport-node";
import { connectCluster } from "../../src/cluster/connection.js";
import { clusterTarget, redactClusterUrl } from "../../src/cluster/nats-auth.js";
import { FennecError } from "../../src/core/errors.js";
import { createLogger } from "../../src/core/log.js";
import { startNats, type TestNats } from "../helpers/nats.js";
import { tempDir } from "../helpers/paths.js";
import { waitFor } from "../helpers/wait.js";

const log = createLogger("silent");

/** A loopback port nothing listens on (taken, then given back). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const { port } = server.address() as { port: number };
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

describe("cluster connection (a real nats-server)", () => {
  let nats: TestNats;
  before(async () => {
    nats = await startNats();
  });
  after(async () => {
    await nats?.stop();
  });

  it("connects to a server with JetStream, and reconnects after it restarts", async () => {
    const nc = await connectCluster(nats.url, { node: "a", log });
    try {
      await nats.restart();
      // The client reconnects by itself: a round trip gets through again.
      await waitFor("a round trip after the restart", () => nc.flush().then(() => true));
      assert.equal(nc.isClosed(), false);
    } finally {
      await nc.close();
    }
  });

  it("refuses an unreachable URL with CLUSTER_UNREACHABLE, naming it", async () => {
    const url = `nats://127.0.0.1:${await closedPort()}`;
    await assert.rejects(connectCluster(url, { node: "a", log }), (err: unknown) => {
      assert.ok(err instanceof FennecError);
      assert.equal(err.code, "CLUSTER_UNREACHABLE");
      assert.match(err.message, new RegExp(url.replace(/[.]/g, "\\.")));
      return true;
    });
  });

  it("refuses a URL that is not nats://HOST:PORT", async () => {
    await assert.rejects(connectCluster("http://127.0.0.1:4222/x", { node: "a", log }), {
      code: "CLUSTER_UNREACHABLE",
    });
  });
});

/** Asserts `p` rejects with `code`, and that none of `secrets` is in its message. */
async function rejectsWith(p: Promise<unknown>, code: string, secrets: readonly string[]): Promise<string> {
  let message = "";
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof FennecError, String(err));
    assert.equal(err.code, code, err.message);
    for (const s of secrets)
      assert.ok(!err.message.includes(s), `the message names a secret: ${err.message}`);
    message = err.message;
    return true;
  });
  return message;
}

describe("cluster credentials (nats-auth.ts)", () => {
  it("takes user and password or a token out of the URL, percent-decoded, and redacts them", async () => {
    const t = await clusterTarget("nats://fennec:p%40ss%3Aw0rd@10.0.0.1:4222,nats://10.0.0.2:4222");
    assert.deepEqual(t.servers, ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]);
    assert.equal(t.options.user, "fennec");
    assert.equal(t.options.pass, "p@ss:w0rd");
    assert.equal(t.display, "nats://***@10.0.0.1:4222,nats://10.0.0.2:4222");
    const tok = await clusterTarget("s3cr3t@a:4222");
    assert.deepEqual(tok.servers, ["nats://a:4222"]);
    assert.equal(tok.options.token, "s3cr3t");
    assert.equal(redactClusterUrl("tls://u:p@h:1, tok@h2:2"), "tls://***@h:1,***@h2:2");
    await rejectsWith(clusterTarget("nats://u:p1@a:4222,nats://u:p2@b:4222"), "CLUSTER_AUTH", ["p1", "p2"]);
    await rejectsWith(clusterTarget("nats://u:p@a:4222/x"), "CLUSTER_UNREACHABLE", [":p@"]);
    await rejectsWith(clusterTarget("nats://a:4222,tls://b:4222"), "CLUSTER_UNREACHABLE", []);
  });

  it("reads a token file, refuses two sources at once and unreadable files, and names files others can read", async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const file = join(dir, "token");
      await writeFile(file, "file-token\nignored\n", { mode: 0o600 });
      const t = await clusterTarget("nats://a:4222", { tokenFile: file });
      assert.equal(t.options.token, "file-token");
      assert.deepEqual(t.exposedFiles, []);
      await chmod(file, 0o644);
      assert.deepEqual((await clusterTarget("nats://a:4222", { tokenFile: file })).exposedFiles, [
        `--cluster-token-file ${file}`,
      ]);
      await rejectsWith(clusterTarget("nats://u:p@a:4222", { tokenFile: file }), "CLUSTER_AUTH", [
        "file-token",
      ]);
      await rejectsWith(clusterTarget("nats://a:4222", { tokenFile: join(dir, "none") }), "CLUSTER_AUTH", []);
      await writeFile(join(dir, "junk"), "not a seed", { mode: 0o600 });
      await rejectsWith(clusterTarget("nats://a:4222", { credsFile: join(dir, "junk") }), "CLUSTER_AUTH", [
        "not a seed",
      ]);
      assert.deepEqual((await clusterTarget("tls://a:4222")).options.tls, {});
    } finally {
      await cleanup();
    }
  });
});

describe("cluster connection to a NATS server with authentication (a real nats-server)", () => {
  let userPass: TestNats;
  let tokenNats: TestNats;
  let nkeyNats: TestNats;
  const user = nkeys.createUser();
  let dir: string;
  let cleanup: () => Promise<void>;
  before(async () => {
    ({ dir, cleanup } = await tempDir());
    userPass = await startNats({ user: "fennec", pass: "right p@ss" });
    tokenNats = await startNats({ token: "the-token" });
    nkeyNats = await startNats({
      config: `authorization { users = [ { nkey: "${user.getPublicKey()}" } ] }\n`,
      client: {
        authenticator: nkeyAuthenticator(user.getSeed()),
      },
    });
  });
  after(async () => {
    await Promise.all([userPass?.stop(), tokenNats?.stop(), nkeyNats?.stop()]);
    await cleanup?.();
  });
  const at = (n: TestNats, info: string) => `nats://${info}@127.0.0.1:${n.port}`;

  it("connects with the user and password in the URL, or a token (URL or file)", async () => {
    for (const url of [at(userPass, "fennec:right%20p%40ss"), at(tokenNats, "the-token")]) {
      const nc = await connectCluster(url, { node: "a", log });
      await nc.close();
    }
    const file = join(dir, "token");
    await writeFile(file, "the-token\n", { mode: 0o600 });
    const nc = await connectCluster(tokenNats.url, { node: "a", log, auth: { tokenFile: file } });
    await nc.close();
  });

  it("connects with an nkey seed file (--cluster-creds)", async () => {
    const file = join(dir, "user.nk");
    await writeFile(file, new TextDecoder().decode(user.getSeed()) + "\n", { mode: 0o600 });
    const nc = await connectCluster(nkeyNats.url, { node: "a", log, auth: { credsFile: file } });
    await nc.close();
    await rejectsWith(connectCluster(nkeyNats.url, { node: "a", log }), "CLUSTER_AUTH", []);
  });

  it("fails at start with CLUSTER_AUTH, not CLUSTER_UNREACHABLE, for wrong or missing credentials, naming no secret", async () => {
    const wrong = await rejectsWith(
      connectCluster(at(userPass, "fennec:wrong-pass"), { node: "a", log }),
      "CLUSTER_AUTH",
      ["wrong-pass"],
    );
    assert.match(wrong, /refused this node's credentials/);
    assert.match(wrong, new RegExp(`nats://\\*\\*\\*@127\\.0\\.0\\.1:${userPass.port}`));
    await rejectsWith(connectCluster(userPass.url, { node: "a", log }), "CLUSTER_AUTH", []);
    await rejectsWith(connectCluster(at(tokenNats, "not-the-token"), { node: "a", log }), "CLUSTER_AUTH", [
      "not-the-token",
    ]);
    // Unreachable stays unreachable, and its message hides the credentials too.
    await rejectsWith(
      connectCluster(`nats://fennec:right-pass@127.0.0.1:${await closedPort()}`, { node: "a", log }),
      "CLUSTER_UNREACHABLE",
      ["right-pass"],
    );
  });
});

describe("cluster connection over TLS (a real nats-server with a test CA)", () => {
  let nats: TestNats;
  let plain: TestNats;
  let dir: string;
  let cleanup: () => Promise<void>;
  let ca: string;
  before(async () => {
    ({ dir, cleanup } = await tempDir());
    const ssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "ignore" });
    ssl(
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "1",
      "-subj",
      "/CN=fennec test CA",
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
    );
    ssl(
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-subj",
      "/CN=127.0.0.1",
      "-keyout",
      "server.key",
      "-out",
      "server.csr",
    );
    // The v3 client checks a certificate of an IP address's server against "localhost" (it sends
    // no server name for an IP): the test certificate names both.
    await writeFile(join(dir, "san.ext"), "subjectAltName = IP:127.0.0.1, DNS:localhost\n");
    ssl(
      "x509",
      "-req",
      "-in",
      "server.csr",
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-days",
      "1",
      "-extfile",
      "san.ext",
      "-out",
      "server.pem",
    );
    ca = join(dir, "ca.pem");
    nats = await startNats({
      config: `tls { cert_file: "${join(dir, "server.pem")}", key_file: "${join(dir, "server.key")}" }\n`,
      client: { tls: { caFile: ca } },
    });
    plain = await startNats();
  });
  after(async () => {
    await Promise.all([nats?.stop(), plain?.stop()]);
    await cleanup?.();
  });

  it("connects to tls:// with --cluster-ca, and refuses a certificate it cannot verify", async () => {
    const url = `tls://127.0.0.1:${nats.port}`;
    const nc = await connectCluster(url, { node: "a", log, auth: { caFile: ca } });
    await nc.close();
    await rejectsWith(connectCluster(url, { node: "a", log }), "CLUSTER_UNREACHABLE", []);
    // tls:// never falls back to plain text: a server without TLS is refused.
    const downgrade = await rejectsWith(
      connectCluster(`tls://127.0.0.1:${plain.port}`, { node: "a", log, auth: { caFile: ca } }),
      "CLUSTER_UNREACHABLE",
      [],
    );
    assert.match(downgrade, /tls/i);
  });
});
