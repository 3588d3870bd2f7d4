/**
 * Headers that describe one HTTP hop, not the message (RFC 9110 §7.6.1, and the `keep-alive` and
 * `proxy-connection` of older peers): a proxy never forwards them. The gateway and the transport
 * to an instance each add the few of their own hop (`content-length`, `expect`, `host`).
 */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "transfer-encoding",
  "upgrade",
  "te",
  "trailer",
  "proxy-connection",
]);
