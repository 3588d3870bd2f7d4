import { isIP } from "node:net";
import type { IncomingMessage } from "node:http";
import { FennecError } from "../core/errors.js";
import { quoteForMessage } from "../core/names.js";

/**
 * The gateway's defence against DNS rebinding: it answers only to the host names it knows.
 *
 * A page on `evil.example` whose name the attacker re-points to 127.0.0.1 is, to the browser, the
 * same origin as Fennec: `Origin` and `Sec-Fetch-Site` say "same-origin", any method, type and
 * header may be sent, and the answers may be read. The one thing the page cannot choose is the
 * `Host` header: it is always the page's own name. So a request is refused unless its Host is
 * - a loopback name (`localhost`, `*.localhost`: RFC 6761 reserves them; browsers resolve them
 *   to loopback themselves and no public DNS answers for them),
 * - an IP literal (a page can only be same-origin with an address by having been loaded from it,
 *   so no attacker's name is involved; this is also how sandboxes and probes reach the gateway),
 * - the name the server was told to listen on, or one the operator lists
 *   (`--allowed-host NAME`, `.example.com` for a name and its subdomains, `*` for any).
 * This is the rule of webpack-dev-server's `allowedHosts`, Vite's `server.allowedHosts` and
 * Jupyter's `allow_remote_access`. A request without a Host header (HTTP/1.0 from a tool) cannot
 * have come from a browser, so it passes. The port is not compared: the attack keeps the port.
 */

/** Names every Fennec answers to, besides IP literals. */
const LOOPBACK_NAMES = ["localhost", ".localhost"];

/** What an operator may list: a name, `.name` (it and its subdomains), or `*`. */
const ENTRY = /^(\*|\.?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*)$/;

/** A host name without port, brackets, case or the trailing dot of a fully qualified name. */
function hostNameOf(host: string): string {
  let name = host.trim().toLowerCase();
  if (name.startsWith("[")) return name.slice(1, name.indexOf("]") === -1 ? undefined : name.indexOf("]"));
  const colon = name.lastIndexOf(":");
  if (colon !== -1) name = name.slice(0, colon);
  return name.endsWith(".") ? name.slice(0, -1) : name;
}

/** Throws CONFIG_INVALID for an entry that is not a host name, `.name` or `*`. */
function normalizeEntry(entry: string): string {
  const name = entry.trim().toLowerCase().replace(/\.$/, "");
  if (isIP(name) !== 0) return name;
  if (!ENTRY.test(name)) {
    throw new FennecError(
      "CONFIG_INVALID",
      `allowed host ${quoteForMessage(entry)} is not a host name (without port), ".name" for a name and its subdomains, or "*"`,
    );
  }
  return name;
}

export class AllowedHosts {
  /** Exact names. */
  readonly #names = new Set<string>();
  /** Suffixes such as `.localhost`: a name ending in one, or equal to it without the dot, passes. */
  readonly #suffixes: string[] = [];
  readonly #any: boolean;

  /**
   * `listed` are the operator's entries; `boundTo` is the address the server listens on (a name
   * there is one the operator means to be reached by; an IP literal passes anyway).
   */
  constructor(listed: readonly string[] = [], boundTo?: string) {
    const entries = [...LOOPBACK_NAMES, ...listed.map(normalizeEntry)];
    if (boundTo !== undefined && boundTo !== "") entries.push(hostNameOf(boundTo));
    this.#any = entries.includes("*");
    for (const entry of entries) {
      if (entry.startsWith(".")) this.#suffixes.push(entry);
      else this.#names.add(entry);
    }
  }

  /** Whether a request carrying this Host header is for a host this gateway answers to. */
  allows(host: string | undefined): boolean {
    if (host === undefined || this.#any) return true;
    const name = hostNameOf(host);
    if (isIP(name) !== 0 || this.#names.has(name)) return true;
    return this.#suffixes.some((s) => name.endsWith(s) || name === s.slice(1));
  }

  /** Throws HOST_NOT_ALLOWED for a request whose Host is not one this gateway answers to. */
  check(req: IncomingMessage): void {
    const host = req.headers.host;
    if (this.allows(host)) return;
    const name = hostNameOf(host ?? "");
    // Only a well-formed name is suggested back as a flag; anything else is just quoted.
    const flag = ENTRY.test(name) ? `--allowed-host ${name}` : "--allowed-host NAME";
    throw new FennecError(
      "HOST_NOT_ALLOWED",
      `refused a request for host ${quoteForMessage(name)}: this server answers only to localhost, *.localhost, IP addresses and the names it is given (a page whose name points here may be a DNS-rebinding attack); if it is meant to be reached by that name, start it with ${flag} (FennecOptions.allowedHosts)`,
    );
  }
}
