/**
 * How a node authenticates to the cluster's NATS server (docs/cluster.md, "Security"): the
 * credentials NATS users already have, in the forms NATS's own tools take them.
 *
 * - In the URL: `nats://user:password@host:4222` or `nats://token@host:4222` (percent-encoded).
 *   The v3 client ignores a URL's user information (it keeps only host and port), so Fennec
 *   takes it out and passes it as the client's `user`/`pass` or `token` options.
 * - In a file, for secrets that must not be on a command line (`ps` shows it to every user):
 *   `--cluster-creds FILE`, a NATS credentials file (a user JWT and its nkey seed, as `nsc`
 *   writes it) or a bare nkey seed (`SU...`, as `nk -gen user` writes it): exactly what the
 *   `nats` CLI takes as `--creds` and `--nkey`; and `--cluster-token-file FILE` for a token.
 * - TLS: `tls://host:4222` requires it (the client then refuses a server that does not offer
 *   it); `--cluster-ca FILE` names the CA the server's certificate must chain to.
 *
 * Credentials never appear in a message: every error and log line names the URL through
 * `redactClusterUrl`.
 */
import { readFile, stat } from "node:fs/promises";
import { credsAuthenticator, nkeyAuthenticator, type ConnectionOptions } from "@nats-io/transport-node";
import { FennecError } from "../core/errors.js";

/** The credentials and TLS settings given besides `--cluster URL`. */
export interface ClusterAuthOptions {
  /** A NATS `.creds` file (user JWT + nkey seed) or an nkey seed file (`--cluster-creds`). */
  readonly credsFile?: string | undefined;
  /** A file whose first line is the NATS token (`--cluster-token-file`). */
  readonly tokenFile?: string | undefined;
  /** PEM file of the CA a `tls://` server's certificate must chain to (`--cluster-ca`); implies TLS. */
  readonly caFile?: string | undefined;
}

/** What `connect` is given: the servers without credentials, and how to authenticate. */
export interface ClusterTarget {
  readonly servers: string[];
  /** The URL as messages show it: credentials replaced by `***`. */
  readonly display: string;
  readonly options: Partial<ConnectionOptions>;
  /** Files holding secrets that other users can read (a warning, not an error). */
  readonly exposedFiles: string[];
}

const SERVER = /^(?:(nats|tls):\/\/)?(?:([^@/\s]*)@)?([^@/\s]+)$/;

/** `url` with every server's user information replaced by `***`: safe to log and to show. */
export function redactClusterUrl(url: string): string {
  return url
    .split(",")
    .map((s) =>
      s
        .trim()
        .replace(/^([A-Za-z]+:\/\/)?[^@/\s]*@/, (_m, scheme: string | undefined) => `${scheme ?? ""}***@`),
    )
    .join(",");
}

function decode(part: string, what: string, display: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw new FennecError(
      "CLUSTER_UNREACHABLE",
      `--cluster ${display}: the ${what} is not valid percent-encoding`,
    );
  }
}

/**
 * Reads `--cluster` and the file options into what the NATS client takes. Throws
 * CLUSTER_UNREACHABLE for a URL that is not `nats://HOST:PORT` (as before), CLUSTER_AUTH for
 * credentials that cannot be used (an unreadable or malformed file, two sources at once).
 */
export async function clusterTarget(url: string, auth: ClusterAuthOptions = {}): Promise<ClusterTarget> {
  const display = redactClusterUrl(url);
  const servers: string[] = [];
  const infos = new Set<string>();
  const schemes = new Set<string>();
  for (const raw of url.split(",").map((s) => s.trim())) {
    const m = SERVER.exec(raw);
    const hostPort = m?.[3] ?? "";
    const wellFormed =
      m !== null && (m[1] !== undefined ? !hostPort.includes("/") : /^[^:]+:\d+$/.test(hostPort));
    if (!wellFormed)
      throw new FennecError(
        "CLUSTER_UNREACHABLE",
        `--cluster expects nats://HOST:PORT (comma-separated for several; nats://USER:PASSWORD@HOST:PORT or nats://TOKEN@HOST:PORT with credentials), got ${JSON.stringify(redactClusterUrl(raw))}`,
      );
    const scheme = m[1] ?? "nats";
    schemes.add(scheme);
    if (m[2] !== undefined) infos.add(m[2]);
    servers.push(`${scheme}://${hostPort}`);
  }
  if (schemes.size > 1)
    throw new FennecError(
      "CLUSTER_UNREACHABLE",
      `--cluster ${display} mixes nats:// and tls:// servers: one connection is either encrypted or not`,
    );
  if (infos.size > 1)
    throw new FennecError(
      "CLUSTER_AUTH",
      `--cluster ${display} gives different credentials for different servers: the client has one set (give them on one URL, or the same on all)`,
    );
  const given = [
    infos.size === 1 ? "credentials in --cluster" : undefined,
    auth.credsFile !== undefined ? "--cluster-creds" : undefined,
    auth.tokenFile !== undefined ? "--cluster-token-file" : undefined,
  ].filter((g): g is string => g !== undefined);
  if (given.length > 1)
    throw new FennecError(
      "CLUSTER_AUTH",
      `give the cluster's NATS credentials one way, not ${given.join(" and ")}`,
    );

  const options: { -readonly [K in keyof ConnectionOptions]?: ConnectionOptions[K] } = {};
  const exposedFiles: string[] = [];
  const info = [...infos][0];
  if (info !== undefined) {
    const colon = info.indexOf(":");
    if (colon >= 0) {
      options.user = decode(info.slice(0, colon), "user", display);
      options.pass = decode(info.slice(colon + 1), "password", display);
    } else {
      options.token = decode(info, "token", display);
    }
  }
  if (auth.tokenFile !== undefined) {
    const text = await secretFile(auth.tokenFile, "--cluster-token-file", exposedFiles);
    const token = text.split(/\r?\n/, 1)[0]!.trim();
    if (token === "")
      throw new FennecError(
        "CLUSTER_AUTH",
        `--cluster-token-file ${auth.tokenFile} is empty: its first line is the token`,
      );
    options.token = token;
  }
  if (auth.credsFile !== undefined) {
    const text = await secretFile(auth.credsFile, "--cluster-creds", exposedFiles);
    if (/-{3,}BEGIN NATS USER JWT-{3,}/.test(text)) {
      options.authenticator = credsAuthenticator(new TextEncoder().encode(text));
    } else {
      // A bare seed, or a seed file with comments around it (as `nk` and nsc write them).
      const seed = /\bSU[A-Z2-7]{50,}\b/.exec(text)?.[0];
      if (seed === undefined)
        throw new FennecError(
          "CLUSTER_AUTH",
          `--cluster-creds ${auth.credsFile} is neither a NATS credentials file (-----BEGIN NATS USER JWT-----) nor a user nkey seed (SU...)`,
        );
      options.authenticator = nkeyAuthenticator(new TextEncoder().encode(seed));
    }
  }
  if (schemes.has("tls") || auth.caFile !== undefined) {
    if (auth.caFile !== undefined) await readable(auth.caFile, "--cluster-ca");
    // Any object (not null) makes the client refuse a server that offers no TLS.
    options.tls = auth.caFile !== undefined ? { caFile: auth.caFile } : {};
  }
  return { servers, display, options, exposedFiles };
}

async function readable(path: string, flag: string): Promise<void> {
  await stat(path).catch((err: NodeJS.ErrnoException) => {
    throw new FennecError("CLUSTER_AUTH", `cannot read ${flag} ${path}: ${err.code ?? err.message}`);
  });
}

async function secretFile(path: string, flag: string, exposed: string[]): Promise<string> {
  const [text, info] = await Promise.all([readFile(path, "utf8"), stat(path)]).catch(
    (err: NodeJS.ErrnoException) => {
      throw new FennecError("CLUSTER_AUTH", `cannot read ${flag} ${path}: ${err.code ?? err.message}`);
    },
  );
  if ((info.mode & 0o077) !== 0) exposed.push(`${flag} ${path}`);
  return text;
}
