import { readdir, readFile, stat } from "node:fs/promises";
import { basename, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { parseByteSize } from "../config/byte-size.js";
import { parseDuration } from "../config/duration.js";
import { sandboxKinds } from "../sandbox/drivers/index.js";
import type { DriverFlag, DriverSettings } from "../sandbox/kind.js";
import { callTable, eachLine, logLine, type CallRow, type LogMessage } from "./call-output.js";
import { call, expectOk, type ClientOptions } from "./client.js";
import { addUpStats, nodeTable, type NodeRow } from "./cluster-output.js";

/** A mistake in the command line (exit code 2), as opposed to a failure of the work (exit code 1). */
export class UsageError extends Error {}

export interface Command {
  readonly summary: string;
  readonly usage: string;
  run(argv: string[]): Promise<number>;
}

const clientFlags = {
  url: { type: "string", default: process.env["FENNEC_URL"] ?? "http://127.0.0.1:8123" },
  token: { type: "string", default: process.env["FENNEC_TOKEN"] },
  help: { type: "boolean", short: "h" },
} as const;

const clientHelp = `  --url URL          Fennec's address (env FENNEC_URL; default http://127.0.0.1:8123)
  --token TOKEN      admin token (env FENNEC_TOKEN)
  -h, --help         this help`;

// `invoke` talks to a function, which must never see the admin token: it takes no --token and
// ignores FENNEC_TOKEN.
const { token: _adminToken, ...invokeFlags } = clientFlags;
const invokeHelp = `  --url URL          Fennec's address (env FENNEC_URL; default http://127.0.0.1:8123)
  -h, --help         this help
The admin token (--token, FENNEC_TOKEN) is never sent to a function; -H sends what you give it.`;

function client(values: { url?: string | undefined; token?: string | undefined }): ClientOptions {
  return { url: values.url ?? "http://127.0.0.1:8123", token: values.token };
}

/** `fn`, `default/fn` or `user/fn` -> the user (default "default") and the name. */
function userAndName(spec: string): { user: string; name: string } {
  const parts = spec.split("/");
  if (parts.length === 1) return { user: "default", name: spec };
  if (parts.length === 2 && parts[0] && parts[1]) return { user: parts[0], name: parts[1] };
  throw new UsageError(`FUNCTION is "name" or "user/name", got ${JSON.stringify(spec)}`);
}

/** The `/f/<user>/<fn>` path of a function (Faasm's upload and call route). */
function fPath(user: string, name: string): string {
  return `/f/${encodeURIComponent(user)}/${encodeURIComponent(name)}`;
}

const serve: Command = {
  summary: "run the gateway and serve a registry of functions",
  usage: `fennec serve [-r DIR] [options]

Serves every function under DIR (<fn>/function.toml, or <user>/<fn>/function.toml).
Edits on disk apply to new instances without a restart; SIGINT/SIGTERM drain and exit.

  -r, --registry DIR     registry directory (default: examples/registry)
  --host HOST            listen address (default 127.0.0.1)
  -p, --port N           listen port (default 8123; 0 picks a free one)
  --token TOKEN          require "Authorization: Bearer TOKEN" for /system/* and uploads
                         (env FENNEC_TOKEN)
  --allowed-host NAME    also answer to requests for Host NAME (repeatable; ".NAME" adds its
                         subdomains, "*" any); by default only localhost, *.localhost, IP
                         addresses and --host are, which stops DNS-rebinding pages
  --memory MIB           node memory budget for instances (default 4096)
  --body-limit BYTES     largest invocation body (default 8388608; a function.toml max-request-body replaces it for that function)
  --upload-limit BYTES   largest module upload or deploy document (default 67108864)
  --start-timeout MS     how long an instance may take to become ready (default 25000)
  --cache-dir DIR        compiled modules and VM snapshots (default DIR/.fennec/cache)
  --callback-allow HOST  hosts an async call's X-Callback-Url may name (repeatable; ".NAME" adds
                         its subdomains, an IP address, "*" any host); without it callbacks go
                         only to hosts whose addresses are public (never loopback or private)
  --callback-timeout MS  how long one callback attempt may take (default 10000)
  --async-result-limit BYTES  largest response an async call's result keeps (default 8388608)
  --async-lease DURATION how long an async call's lease lasts before another node may run it
                         again (default 30s; extended every third of it while it runs); in a
                         cluster a node that leaves has its calls taken back at once anyway
  --state-dir DIR        the invocation store: async calls, call records, logs, state
                         (default DIR/.fennec/state; file fennec.db)
  --retention-age AGE    finished calls and log lines older than this are removed
                         (default 7d; units ms, s, m, h, d)
  --retention-bytes SIZE then the oldest until the store keeps less than this; queued
                         calls and dead letters stay (default 1GiB; bytes, or KiB/MiB/GiB)
  --cluster URL          join a cluster: the NATS server (JetStream) the nodes share,
                         nats://HOST:PORT (comma-separated for several); see docs/cluster.md.
                         Credentials: nats://USER:PASSWORD@HOST:PORT or nats://TOKEN@HOST:PORT
                         (percent-encoded; env FENNEC_CLUSTER keeps them off the command line);
                         tls://HOST:PORT requires TLS
  --cluster-creds FILE   authenticate to NATS with a .creds file (user JWT and nkey seed, from
                         nsc) or an nkey seed file (SU..., from nk -gen user)
  --cluster-token-file FILE  authenticate to NATS with the token on FILE's first line
  --cluster-ca FILE      PEM CA that the NATS server's TLS certificate must chain to
                         (implies TLS; default the system's CAs)
  --cluster-replicas N   copies (1-5) of every bucket and stream Fennec keeps in JetStream, on N
                         servers of a NATS cluster: 3 survives the loss of one server. Created
                         with N; existing ones are changed to N at start. Default: created with
                         1, existing ones kept. More than the cluster's JetStream servers is
                         refused at start
  --node NAME            this node's name in the cluster and in call records (default: the
                         host's name); two live nodes with one name are refused
  --advertise URL        the gateway's base URL as the other nodes reach it
                         (default http://HOST:PORT of --host and --port; needed when
                         --host listens on every address, 0.0.0.0 or ::)
  --log-level LEVEL      error | warn | info | debug (default info)
  --no-records           keep no call records and no function logs (calls still get an X-Call-Id)
${flagHelp(sandboxKinds.flags("serve"))}
  -h, --help             this help`,
  async run(argv) {
    const { values } = parseArgs({
      args: argv,
      options: {
        registry: { type: "string", short: "r", default: "examples/registry" },
        host: { type: "string", default: "127.0.0.1" },
        port: { type: "string", short: "p", default: "8123" },
        token: { type: "string", default: process.env["FENNEC_TOKEN"] },
        "allowed-host": { type: "string", multiple: true, default: [] },
        memory: { type: "string", default: "4096" },
        "body-limit": { type: "string", default: String(8 * 2 ** 20) },
        "upload-limit": { type: "string", default: String(64 * 2 ** 20) },
        "start-timeout": { type: "string", default: "25000" },
        "cache-dir": { type: "string" },
        "callback-allow": { type: "string", multiple: true, default: [] },
        "callback-timeout": { type: "string", default: "10000" },
        "async-result-limit": { type: "string", default: String(8 * 2 ** 20) },
        "async-lease": { type: "string", default: "30s" },
        "state-dir": { type: "string" },
        "retention-age": { type: "string", default: "7d" },
        "retention-bytes": { type: "string", default: "1GiB" },
        cluster: { type: "string", default: process.env["FENNEC_CLUSTER"] },
        "cluster-replicas": { type: "string" },
        "cluster-creds": { type: "string" },
        "cluster-token-file": { type: "string" },
        "cluster-ca": { type: "string" },
        node: { type: "string" },
        advertise: { type: "string" },
        "log-level": { type: "string", default: "info" },
        "no-records": { type: "boolean", default: false },
        ...parseArgsOptions(sandboxKinds.flags("serve")),
        help: { type: "boolean", short: "h" },
      },
    });
    if (values.help) return help(serve);
    const num = (name: string, v: string, max = Number.MAX_SAFE_INTEGER) => {
      const n = /^\d+$/.test(v) ? Number(v) : NaN;
      if (!Number.isSafeInteger(n) || n > max)
        throw new UsageError(`--${name} expects a whole number from 0 to ${max}, got ${JSON.stringify(v)}`);
      return n;
    };
    const port = num("port", values.port, 65535);
    const replicas = values["cluster-replicas"];
    if (replicas !== undefined && !/^[1-5]$/.test(replicas))
      throw new UsageError(
        `--cluster-replicas expects a whole number from 1 to 5 (JetStream's limit), got ${JSON.stringify(replicas)}`,
      );
    if (replicas !== undefined && !values.cluster)
      throw new UsageError(`--cluster-replicas applies to a cluster: give --cluster too`);
    const level = values["log-level"];
    if (!["error", "warn", "info", "debug"].includes(level))
      throw new UsageError(`--log-level expects error, warn, info or debug`);
    const maxAgeMs = parseDuration(values["retention-age"]);
    if (maxAgeMs === undefined)
      throw new UsageError(
        `--retention-age expects a duration such as 24h or 7d, got ${JSON.stringify(values["retention-age"])}`,
      );
    const maxBytes = parseByteSize(values["retention-bytes"]);
    if (maxBytes === undefined)
      throw new UsageError(
        `--retention-bytes expects a size such as 512MiB or 1GiB, got ${JSON.stringify(values["retention-bytes"])}`,
      );
    const asyncLeaseMs = parseDuration(values["async-lease"]);
    if (asyncLeaseMs === undefined || asyncLeaseMs < 1000)
      throw new UsageError(
        `--async-lease expects a duration of at least 1s, such as 30s or 2m, got ${JSON.stringify(values["async-lease"])}`,
      );
    for (const flag of ["cluster-creds", "cluster-token-file", "cluster-ca"] as const)
      if (values[flag] !== undefined && !values.cluster)
        throw new UsageError(`--${flag} is for a cluster's NATS server: give --cluster URL too`);
    await stat(values.registry).catch(() => {
      throw new Error(`registry directory ${values.registry} does not exist`);
    });
    // Loaded here, not at the top: the remote commands need none of the platform.
    const { startFennec } = await import("../main.js");
    const fennec = await startFennec({
      registry: values.registry,
      host: values.host,
      port,
      token: values.token || undefined,
      allowedHosts: values["allowed-host"],
      memoryBudgetMiB: num("memory", values.memory),
      bodyLimitBytes: num("body-limit", values["body-limit"]),
      uploadLimitBytes: num("upload-limit", values["upload-limit"]),
      startTimeoutMs: num("start-timeout", values["start-timeout"]),
      ...(values["cache-dir"] ? { cacheDir: values["cache-dir"] } : {}),
      callbacks: {
        allow: values["callback-allow"],
        timeoutMs: num("callback-timeout", values["callback-timeout"]),
      },
      asyncResultLimitBytes: num("async-result-limit", values["async-result-limit"]),
      asyncLeaseMs,
      ...(values["state-dir"] ? { stateDir: values["state-dir"] } : {}),
      retention: { maxAgeMs, maxBytes },
      logLevel: level as "info",
      records: !values["no-records"],
      ...(values.cluster ? { cluster: values.cluster } : {}),
      ...(replicas !== undefined ? { clusterReplicas: Number(replicas) } : {}),
      clusterAuth: {
        credsFile: values["cluster-creds"],
        tokenFile: values["cluster-token-file"],
        caFile: values["cluster-ca"],
      },
      ...(values.node ? { node: values.node } : {}),
      ...(values.advertise ? { advertise: values.advertise } : {}),
      driverSettings: driverSettings(sandboxKinds.flags("serve"), values),
    });
    await new Promise<void>((resolve, reject) => {
      const stop = (signal: string) => {
        fennec.log.info(`${signal}: draining in-flight calls, then exiting`);
        process.off("SIGINT", stop);
        process.off("SIGTERM", stop);
        // A shutdown that fails (a driver that cannot close) is the command's error, not an
        // unhandled rejection.
        fennec.close().then(resolve, reject);
      };
      process.on("SIGINT", stop);
      process.on("SIGTERM", stop);
    });
    fennec.log.info("stopped; every instance is gone");
    return 0;
  },
};

const invoke: Command = {
  summary: "call a function and print its response",
  usage: `fennec invoke FUNCTION [PATH] [options]

FUNCTION is "name" (user default) or "user/name". The response body goes to stdout;
a non-2xx status is reported on stderr with exit code 1.

  -d, --data TEXT      request body ("@file" reads a file, "-" reads stdin)
  -X, --method METHOD  HTTP method, sent as given (default POST when --data is given, else GET).
                       A function of another user than "default" is called with POST
                       /f/<user>/<name>, the only call route for it: POST is its default and
                       any other -X is refused
  -H, --header 'N: V'  extra request header (repeatable)
  -i, --include        print the status line and headers before the body
  --async              submit an asynchronous call (POST /fa/<user>/<name>) and print its id;
                       fetch its result later with GET /fa/calls/<id>. -H 'X-Callback-Url: URL'
                       has the result POSTed there, -H 'Idempotency-Key: K' submits it once
${invokeHelp}`,
  async run(argv) {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        ...invokeFlags,
        data: { type: "string", short: "d" },
        method: { type: "string", short: "X" },
        header: { type: "string", short: "H", multiple: true },
        include: { type: "boolean", short: "i" },
        async: { type: "boolean" },
      },
    });
    if (values.help) return help(invoke);
    if (positionals.length < 1 || positionals.length > 2)
      throw new UsageError("invoke expects FUNCTION and an optional PATH");
    const [fn, path = ""] = positionals as [string, string?];
    const { user, name } = userAndName(fn);
    let body: Uint8Array | undefined;
    if (values.data !== undefined) {
      if (values.data === "-") body = await readStdin();
      else if (values.data.startsWith("@"))
        body = await readFile(values.data.slice(1)).catch((err: NodeJS.ErrnoException) => {
          throw new Error(`cannot read ${values.data!.slice(1)} (${err.code ?? err.message})`);
        });
      else body = Buffer.from(values.data);
    }
    const headers: Record<string, string> = {};
    for (const h of values.header ?? []) {
      const i = h.indexOf(":");
      if (i <= 0) throw new UsageError(`--header expects "Name: value", got ${JSON.stringify(h)}`);
      headers[h.slice(0, i).trim()] = h.slice(i + 1).trim();
    }
    const rest = path.replace(/^\//, "");
    let method: string;
    let target: string;
    if (values.async) {
      if (values.method !== undefined && values.method !== "POST")
        throw new UsageError(`-X ${values.method}: an asynchronous call is submitted with POST; omit -X`);
      const res = await expectOk(
        await call(
          client(values),
          "function",
          "POST",
          `/fa/${encodeURIComponent(user)}/${encodeURIComponent(name)}${rest ? "/" + rest : ""}`,
          body,
          headers,
        ),
      );
      process.stdout.write(`${((await res.json()) as { callId: string }).callId}\n`);
      return 0;
    }
    if (user === "default") {
      method = values.method ?? (body ? "POST" : "GET");
      target = `/invoke/${encodeURIComponent(name)}/${rest}`;
    } else {
      // PUT on /f/<user>/<name> would upload the body as the function's module: never from invoke.
      if (values.method !== undefined && values.method !== "POST")
        throw new UsageError(
          `-X ${values.method}: a function of user "${user}" can only be called with POST ` +
            `(/f/${user}/${name}); omit -X, or use -X POST`,
        );
      method = "POST";
      target = `${fPath(user, name)}${rest ? "/" + rest : ""}`;
    }
    const res = await call(client(values), "function", method, target, body, headers);
    if (values.include) {
      process.stdout.write(`HTTP ${res.status} ${res.statusText}\n`);
      res.headers.forEach((v, k) => process.stdout.write(`${k}: ${v}\n`));
      process.stdout.write("\n");
    }
    process.stdout.write(Buffer.from(await res.arrayBuffer()));
    if (!res.ok) {
      process.stderr.write(
        `fennec: HTTP ${res.status} (${res.headers.get("x-fennec-error") ?? "function status"})\n`,
      );
      return 1;
    }
    return 0;
  },
};

const deploy: Command = {
  summary: "upload a .wasm module, or deploy a function directory",
  usage: `fennec deploy FUNCTION SOURCE [options]
fennec deploy DIR [options]

FUNCTION is "name" (user default) or "user/name"; with DIR alone it is DIR's own name.
SOURCE is either a .wasm file (uploaded with PUT /f/<user>/<name>, keeping an existing
function.toml or creating a default one) or a directory holding function.toml and its
artefacts (sent to POST /system/functions, validated before anything is written).

A deploy carries only the files directly in the directory: subdirectories (e.g. src/) and
hidden files are not sent, and each one left out is named on stderr. The .fennec directory
holds what Fennec builds itself and is left out silently.

${clientHelp}`,
  async run(argv) {
    const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: clientFlags });
    if (values.help) return help(deploy);
    if (positionals.length < 1 || positionals.length > 2)
      throw new UsageError("deploy expects FUNCTION SOURCE, or a function directory DIR");
    const [fn, source] =
      positionals.length === 2
        ? (positionals as [string, string])
        : [basename(resolve(positionals[0]!)), positionals[0]!];
    const { user, name } = userAndName(fn);
    const st = await stat(source).catch(() => {
      throw new Error(`${source} does not exist`);
    });
    if (positionals.length === 1 && !st.isDirectory())
      throw new UsageError(
        `fennec deploy with one argument expects a function directory; for a file: fennec deploy FUNCTION ${source}`,
      );
    let res: Response;
    if (st.isFile()) {
      res = await call(client(values), "platform", "PUT", fPath(user, name), await readFile(source), {
        "content-type": "application/wasm",
      });
    } else {
      const toml = await readFile(join(source, "function.toml"), "utf8").catch(() => {
        throw new Error(`${join(source, "function.toml")} does not exist: not a function directory`);
      });
      const { files, skipped } = await topLevelFiles(source);
      for (const entry of skipped) process.stderr.write(`fennec: not sent: ${join(source, entry)}\n`);
      if (skipped.length > 0)
        process.stderr.write(
          `fennec: a deploy carries only the regular files directly in ${source}: no subdirectories, no hidden files\n`,
        );
      const doc = { name, ...(user === "default" ? {} : { user }), toml, files };
      res = await call(client(values), "platform", "POST", "/system/functions", JSON.stringify(doc), {
        "content-type": "application/json",
      });
    }
    const result = (await (await expectOk(res)).json()) as { function: string; revision: string };
    process.stdout.write(`deployed ${result.function} (revision ${result.revision})\n`);
    return 0;
  },
};

const ls: Command = {
  summary: "list functions with their state and errors",
  usage: `fennec ls [--json] [options]

  --json             print the raw JSON of GET /system/functions
${clientHelp}`,
  async run(argv) {
    const { values } = parseArgs({ args: argv, options: { ...clientFlags, json: { type: "boolean" } } });
    if (values.help) return help(ls);
    const res = await expectOk(await call(client(values), "platform", "GET", "/system/functions"));
    const rows = (await res.json()) as Array<{
      key: string;
      sandbox: string | null;
      state: string;
      replicas: number;
      error: { code: string; message: string } | null;
    }>;
    if (values.json) {
      process.stdout.write(JSON.stringify(rows, null, 2) + "\n");
      return 0;
    }
    const width = Math.max(8, ...rows.map((r) => r.key.length));
    process.stdout.write(`${"FUNCTION".padEnd(width)}  SANDBOX    STATE  INSTANCES\n`);
    for (const r of rows) {
      process.stdout.write(
        `${r.key.padEnd(width)}  ${(r.sandbox ?? "-").padEnd(9)}  ${r.state.padEnd(5)}  ${r.replicas}\n`,
      );
      if (r.error) process.stdout.write(`${"".padEnd(width)}  ${r.error.code}: ${r.error.message}\n`);
    }
    return 0;
  },
};

const statsCmd: Command = {
  summary: "show /stats: start and execution times, per-function figures",
  usage: `fennec stats [--cluster] [options]

Prints the JSON of GET /stats (the thesis keys in nanoseconds plus per-function figures
in milliseconds). /stats is per node.

  --cluster          every live node's /stats (the nodes of GET /system/nodes) added up:
                     counters summed, means and standard deviations pooled by their counts,
                     maxima the largest; percentiles cannot be added up and are left out.
                     A node that does not answer is named on stderr (exit code 1)
${clientHelp}`,
  async run(argv) {
    const { values } = parseArgs({ args: argv, options: { ...clientFlags, cluster: { type: "boolean" } } });
    if (values.help) return help(statsCmd);
    if (!values.cluster) {
      const res = await expectOk(await call(client(values), "platform", "GET", "/stats"));
      process.stdout.write(JSON.stringify(await res.json(), null, 2) + "\n");
      return 0;
    }
    const list = await expectOk(await call(client(values), "platform", "GET", "/system/nodes"));
    const nodes = (await list.json()) as NodeRow[];
    const docs = new Map<string, Record<string, unknown>>();
    let failed = 0;
    for (const node of nodes) {
      try {
        const res = await expectOk(
          // A node listed but stuck (cut off, paused) must not hang the whole command.
          await call({ url: node.url, token: values.token, timeoutMs: 10_000 }, "platform", "GET", "/stats"),
        );
        docs.set(node.name, (await res.json()) as Record<string, unknown>);
      } catch (err) {
        failed++;
        process.stderr.write(`fennec: node ${node.name} (${node.url}): ${(err as Error).message}\n`);
      }
    }
    process.stdout.write(JSON.stringify(addUpStats(docs), null, 2) + "\n");
    return failed > 0 ? 1 : 0;
  },
};

const nodesCmd: Command = {
  summary: "list the cluster's live nodes: address, sandboxes, memory, warm instances",
  usage: `fennec nodes [--json] [options]

Lists the live nodes as the node at --url sees them (GET /system/nodes): each one's address,
memory reserved of its budget, calls in flight and warm instances per function, the
sandboxes it can run, and the ones it cannot with why. A Fennec without --cluster is one node.

  --json             print the raw JSON of GET /system/nodes
${clientHelp}`,
  async run(argv) {
    const { values } = parseArgs({ args: argv, options: { ...clientFlags, json: { type: "boolean" } } });
    if (values.help) return help(nodesCmd);
    const res = await expectOk(await call(client(values), "platform", "GET", "/system/nodes"));
    const rows = (await res.json()) as NodeRow[];
    process.stdout.write(values.json ? JSON.stringify(rows, null, 2) + "\n" : nodeTable(rows));
    return 0;
  },
};

const build: Command = {
  summary: "build and check every function of a registry (handlers, modules, roots, images)",
  usage: `fennec build [-r DIR] [FUNCTION...]
fennec build --guest-kernel

Checks each function's function.toml; compiles and checks each [wasm] module against what the
sandbox grants; bundles each handler (.ts/.js) with esbuild into <function>/.fennec/build/;
builds the root filesystems of [oci] and [vm] handlers (and a [vm] disk image), and the Docker
images of [container] handlers. Fennec also does this on demand, so running it is optional: it
finds mistakes before a request does, and takes the work off the first cold start. Exit code 1
when any function fails.

--guest-kernel builds the Linux kernel and agent that [vm] handler and command functions boot
(guest/linux/build.sh: Debian's linux-source-6.1, about 11 minutes on two cores the first time;
cached by the hash of its inputs in $FENNEC_CACHE_DIR or ~/.cache/fennec).

  -r, --registry DIR   registry directory (default: examples/registry)
  --guest-kernel       build the [vm] guest kernel and agent
${flagHelp(sandboxKinds.flags("build"), 23)}
  -h, --help           this help`,
  async run(argv) {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        registry: { type: "string", short: "r", default: "examples/registry" },
        "guest-kernel": { type: "boolean", default: false },
        ...parseArgsOptions(sandboxKinds.flags("build")),
        help: { type: "boolean", short: "h" },
      },
    });
    if (values.help) return help(build);
    const { buildRegistry, buildGuestKernel } = await import("./build.js");
    if (values["guest-kernel"]) return buildGuestKernel();
    return buildRegistry(values.registry, positionals, {
      settings: driverSettings(sandboxKinds.flags("build"), values),
    });
  },
};

const callsLs: Command = {
  summary: "list call records, newest first",
  usage: `fennec calls ls [--function FN] [--state S] [--dead] [--status X] [--since T] [--limit N] [--json]

  --function FN      only calls of FN ("name" or "user/name")
  --state S          queued | running | succeeded | failed | dead
  --dead             the dead letters (--state dead)
  --status X         the function's status (500) or an error code (FN_TIMEOUT)
  --since T          an ISO time, milliseconds since the epoch, or a duration (10m, 2h, 1d)
  --limit N          at most N calls (default 100, at most 1000)
  --json             print the raw JSON of GET /system/calls
${clientHelp}`,
  async run(argv) {
    const { values } = parseArgs({
      args: argv,
      options: {
        ...clientFlags,
        function: { type: "string" },
        state: { type: "string" },
        dead: { type: "boolean" },
        status: { type: "string" },
        since: { type: "string" },
        limit: { type: "string" },
        json: { type: "boolean" },
      },
    });
    if (values.help) return help(callsLs);
    if (values.dead && values.state && values.state !== "dead")
      throw new UsageError(`--dead and --state ${values.state} contradict each other`);
    const query = new URLSearchParams();
    if (values.function) query.set("function", values.function);
    if (values.dead || values.state) query.set("state", values.dead ? "dead" : values.state!);
    if (values.status) query.set("status", values.status);
    if (values.since) query.set("since", values.since);
    if (values.limit) query.set("limit", values.limit);
    const res = await expectOk(await call(client(values), "platform", "GET", `/system/calls?${query}`));
    const rows = (await res.json()) as CallRow[];
    process.stdout.write(values.json ? JSON.stringify(rows, null, 2) + "\n" : callTable(rows));
    return 0;
  },
};

const callsGet: Command = {
  summary: "show one call's record",
  usage: `fennec calls get ID

Prints the JSON of GET /system/calls/ID.

${clientHelp}`,
  async run(argv) {
    const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: clientFlags });
    if (values.help) return help(callsGet);
    if (positionals.length !== 1) throw new UsageError("calls get expects one call ID");
    const path = `/system/calls/${encodeURIComponent(positionals[0]!)}`;
    const res = await expectOk(await call(client(values), "platform", "GET", path));
    process.stdout.write(JSON.stringify(await res.json(), null, 2) + "\n");
    return 0;
  },
};

const callsReplay: Command = {
  summary: "run a dead-lettered async call again, from attempt 1",
  usage: `fennec calls replay ID [options]

Queues the dead call ID again (POST /system/calls/ID/replay); a call that is not dead is refused.

${clientHelp}`,
  async run(argv) {
    const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: clientFlags });
    if (values.help) return help(callsReplay);
    if (positionals.length !== 1) throw new UsageError("calls replay expects one call ID");
    const id = encodeURIComponent(positionals[0]!);
    await expectOk(await call(client(values), "platform", "POST", `/system/calls/${id}/replay`));
    process.stdout.write(`queued ${positionals[0]} again\n`);
    return 0;
  },
};

const callsRm: Command = {
  summary: "delete an async call and its result (any state but running)",
  usage: `fennec calls rm ID [options]

Deletes call ID and its result (DELETE /system/calls/ID); a running call is refused.

${clientHelp}`,
  async run(argv) {
    const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: clientFlags });
    if (values.help) return help(callsRm);
    if (positionals.length !== 1) throw new UsageError("calls rm expects one call ID");
    const id = encodeURIComponent(positionals[0]!);
    await expectOk(await call(client(values), "platform", "DELETE", `/system/calls/${id}`));
    process.stdout.write(`deleted ${positionals[0]}\n`);
    return 0;
  },
};

/** `fennec calls <sub>`: each subcommand is a Command of its own. */
export const callsSubcommands: Record<string, Command> = {
  ls: callsLs,
  get: callsGet,
  replay: callsReplay,
  rm: callsRm,
};

const calls: Command = {
  summary: "list and show call records (calls ls, calls get ID)",
  get usage() {
    return `fennec calls <subcommand> [options]      fennec calls <subcommand> --help

${Object.entries(callsSubcommands)
  .map(([name, c]) => `  ${name.padEnd(8)} ${c.summary}`)
  .join("\n")}`;
  },
  async run(argv) {
    const [sub, ...rest] = argv;
    if (sub === undefined || sub === "--help" || sub === "-h") return help(calls);
    const command = callsSubcommands[sub];
    if (!command)
      throw new UsageError(
        `unknown subcommand ${JSON.stringify(sub)}: ${Object.keys(callsSubcommands).join(", ")}`,
      );
    return command.run(rest);
  },
};

const logs: Command = {
  summary: "print a function's logs (what it wrote to stderr; stdout too out of process)",
  usage: `fennec logs FUNCTION [--follow] [--call ID] [--since T] [--limit N]

Prints one line per log line: its time, the call that wrote it ("-" when that cannot be
told: the instance ran several calls at once) and its text.

  -f, --follow       keep printing new lines until Ctrl-C
  --call ID          only the lines of call ID
  --since T          an ISO time, milliseconds since the epoch, or a duration (10m, 2h, 1d)
  --limit N          at most N earlier lines (default 1000)
  --json             print the server's newline-delimited JSON as it is
${clientHelp}`,
  async run(argv) {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        ...clientFlags,
        follow: { type: "boolean", short: "f" },
        call: { type: "string" },
        since: { type: "string" },
        limit: { type: "string" },
        json: { type: "boolean" },
      },
    });
    if (values.help) return help(logs);
    if (positionals.length !== 1) throw new UsageError("logs expects one FUNCTION");
    const query = new URLSearchParams({ function: positionals[0]! });
    if (values.call) query.set("call", values.call);
    if (values.since) query.set("since", values.since);
    if (values.limit) query.set("limit", values.limit);
    if (values.follow) query.set("follow", "true");
    const res = await expectOk(await call(client(values), "platform", "GET", `/system/logs?${query}`));
    if (!res.body) return 0;
    await eachLine(res.body, (line) =>
      process.stdout.write(values.json ? line + "\n" : logLine(JSON.parse(line) as LogMessage)),
    );
    return 0;
  },
};

export const commands: Record<string, Command> = {
  serve,
  invoke,
  deploy,
  ls,
  calls,
  logs,
  stats: statsCmd,
  nodes: nodesCmd,
  build,
};

/** The help lines of the drivers' flags, descriptions aligned at `column`. */
function flagHelp(flags: readonly DriverFlag[], column = 25): string {
  return flags
    .map((f) => {
      const head = `  --${f.name}${f.value ? ` ${f.value}` : ""}`;
      const [first = "", ...rest] = f.help.split("\n");
      const pad = head.length < column - 1 ? head.padEnd(column) : `${head}  `;
      return [pad + first, ...rest.map((line) => " ".repeat(column) + line)].join("\n");
    })
    .join("\n");
}

function parseArgsOptions(flags: readonly DriverFlag[]): Record<string, { type: "string" | "boolean" }> {
  return Object.fromEntries(flags.map((f) => [f.name, { type: f.type }]));
}

/** The drivers' flags as given, each string checked against its choices. */
function driverSettings(
  flags: readonly DriverFlag[],
  values: Readonly<Record<string, unknown>>,
): DriverSettings {
  const settings: Record<string, string | boolean> = {};
  for (const f of flags) {
    const v = values[f.name];
    if (typeof v !== "string" && typeof v !== "boolean") continue;
    if (f.choices && !f.choices.includes(String(v)))
      throw new UsageError(`--${f.name} expects ${f.choices.join(", ")}`);
    settings[f.name] = v;
  }
  return settings;
}

function help(cmd: Command): number {
  process.stdout.write(cmd.usage + "\n");
  return 0;
}

/** The regular files directly in `dir` (base64, by name) and what is left out, subdirectories marked with "/". */
async function topLevelFiles(dir: string): Promise<{ files: Record<string, string>; skipped: string[] }> {
  const files: Record<string, string> = {};
  const skipped: string[] = [];
  for (const entry of (await readdir(dir)).sort()) {
    if (entry === "function.toml" || entry === ".fennec") continue;
    const st = await stat(join(dir, entry)).catch(() => undefined);
    if (!st) skipped.push(`${entry} (a broken link)`);
    else if (st.isDirectory()) skipped.push(`${entry}/`);
    else if (entry.startsWith(".") || !st.isFile()) skipped.push(entry);
    else files[entry] = (await readFile(join(dir, entry))).toString("base64");
  }
  return { files, skipped };
}

async function readStdin(): Promise<Uint8Array> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
