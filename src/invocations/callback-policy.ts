import { lookup as dnsLookup, type LookupAddress } from "node:dns";
import { BlockList, isIP, type LookupFunction } from "node:net";
import { FennecError } from "../core/errors.js";
import { quoteForMessage } from "../core/names.js";

/**
 * Where callbacks may go. An `X-Callback-Url` makes Fennec send a request of the caller's choosing
 * from the host it runs on (server-side request forgery): to loopback services (Fennec's own admin
 * API, a Docker engine on TCP), the private network, or a cloud's metadata address. So:
 * - only `http:`/`https:` URLs without user information are taken (400 CALLBACK_NOT_ALLOWED);
 * - with an allow-list (`--callback-allow`: `name`, `.name` for it and its subdomains, an IP
 *   address, or `*`), only hosts on it, wherever they resolve;
 * - without one, any host whose addresses are public: loopback, private, link-local, carrier-grade
 *   NAT, unique-local, multicast and reserved addresses are refused, checked on the addresses the
 *   connection is really made to (at connect time, so a name re-pointed after the check gains
 *   nothing), and redirects are never followed.
 */
const BLOCKED = new BlockList();
for (const [net, prefix] of [
  ["0.0.0.0", 8],
  ["10.0.0.0", 8],
  ["100.64.0.0", 10],
  ["127.0.0.0", 8],
  ["169.254.0.0", 16],
  ["172.16.0.0", 12],
  ["192.0.0.0", 24],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["224.0.0.0", 4],
  ["240.0.0.0", 4],
] as const)
  BLOCKED.addSubnet(net, prefix, "ipv4");
for (const [net, prefix] of [
  ["::", 127], // unspecified and loopback
  // IPv4-mapped addresses (::ffff:a.b.c.d) are checked against the IPv4 rules by BlockList itself.
  ["64:ff9b::", 96], // NAT64 of any v4 address
  ["fc00::", 7],
  ["fe80::", 10],
  ["ff00::", 8],
] as const)
  BLOCKED.addSubnet(net, prefix, "ipv6");

/** True for an address a callback may not reach unless its host is on the allow-list. */
export function isPrivateAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 0) return true;
  return BLOCKED.check(address, family === 4 ? "ipv4" : "ipv6");
}

const ENTRY = /^(\*|\.?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*)$/;
const MAX_URL = 2048;

function hostOf(url: URL): string {
  const host = url.hostname.toLowerCase().replace(/\.$/, "");
  return host.startsWith("[") ? host.slice(1, -1) : host;
}

export class CallbackPolicy {
  readonly #names = new Set<string>();
  readonly #suffixes: string[] = [];
  readonly #any: boolean;
  readonly #listed: boolean;

  /** `allow` undefined or empty: any host with public addresses. Throws CONFIG_INVALID for a bad entry. */
  constructor(allow: readonly string[] = []) {
    this.#listed = allow.length > 0;
    for (const raw of allow) {
      const entry = raw
        .trim()
        .toLowerCase()
        .replace(/\.$/, "")
        .replace(/^\[(.*)\]$/, "$1");
      if (isIP(entry) === 0 && !ENTRY.test(entry))
        throw new FennecError(
          "CONFIG_INVALID",
          `callback host ${quoteForMessage(raw)} is not a host name, ".name" for a name and its subdomains, an IP address, or "*"`,
        );
      if (entry.startsWith(".")) this.#suffixes.push(entry);
      else this.#names.add(entry);
    }
    this.#any = this.#names.has("*");
  }

  /** What the policy is, for messages. */
  describe(): string {
    return this.#listed
      ? `the callback allow-list (--callback-allow): ${[...this.#names, ...this.#suffixes].join(", ")}`
      : "public addresses only (no --callback-allow list is set)";
  }

  #onList(host: string): boolean {
    return (
      this.#any ||
      this.#names.has(host) ||
      this.#suffixes.some((s) => host.endsWith(s) || host === s.slice(1))
    );
  }

  /** The URL, checked at submission; throws CALLBACK_NOT_ALLOWED with the reason. */
  check(text: string): URL {
    const refuse = (why: string) =>
      new FennecError(
        "CALLBACK_NOT_ALLOWED",
        `X-Callback-Url ${quoteForMessage(text.slice(0, 200))}: ${why}`,
      );
    if (text.length > MAX_URL) throw refuse(`longer than ${MAX_URL} characters`);
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw refuse("not an absolute URL");
    }
    if (url.protocol !== "http:" && url.protocol !== "https:")
      throw refuse("only http and https URLs are called back");
    if (url.username || url.password) throw refuse("user information in the URL is not taken");
    const host = hostOf(url);
    if (this.#listed) {
      if (!this.#onList(host)) throw refuse(`host ${quoteForMessage(host)} is not on ${this.describe()}`);
      return url;
    }
    if (host === "localhost" || host.endsWith(".localhost") || (isIP(host) !== 0 && isPrivateAddress(host)))
      throw refuse(
        `${quoteForMessage(host)} is a loopback or private address; callbacks go to public addresses unless the host is listed with --callback-allow`,
      );
    return url;
  }

  /**
   * The DNS lookup a callback connection uses: with no allow-list entry for `host`, every address
   * it resolves to must be public, so a name cannot lead the request to a private service.
   */
  lookupFor(host: string): LookupFunction | undefined {
    if (this.#listed && this.#onList(host)) return undefined;
    return ((hostname: string, options: { all?: boolean }, callback: (...args: unknown[]) => void) => {
      dnsLookup(hostname, { ...options, all: true }, (err, addresses: LookupAddress[]) => {
        if (err) return callback(err);
        const refused = addresses.find((a) => isPrivateAddress(a.address));
        if (refused || addresses.length === 0)
          return callback(
            new FennecError(
              "CALLBACK_NOT_ALLOWED",
              `${hostname} resolves to ${refused?.address ?? "nothing"}, a private address (${this.describe()})`,
            ),
          );
        if (options.all) return callback(null, addresses);
        callback(null, addresses[0]!.address, addresses[0]!.family);
      });
    }) as unknown as LookupFunction;
  }
}
