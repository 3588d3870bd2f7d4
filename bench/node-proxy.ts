/**
 * A bare reverse proxy on Node, for the warm-hop benchmark: node:http in front, an undici `Pool`
 * of kept-alive connections behind, bodies streamed both ways, nothing else (no routing, limits,
 * lifecycle, records). It is the floor for any gateway written on Node's HTTP stack on this
 * machine, and so tells the cost of Node itself apart from the cost of Fennec's own work.
 *
 * Usage (a child of the benchmark): node dist/bench/node-proxy.js UPSTREAM_PORT — prints its port.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { pipeline } from "node:stream/promises";
import { Pool } from "undici";
import { HOP_BY_HOP } from "../src/core/hop-by-hop.js";

/** One hop's headers, and `host` (undici sets the upstream's). */
const NOT_FORWARDED = new Set([...HOP_BY_HOP, "host"]);
const upstream = new Pool(`http://127.0.0.1:${process.argv[2]}`, { connections: 64 });

const server = createServer((req, res) => {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(req.headers))
    if (typeof value === "string" && !NOT_FORWARDED.has(name)) headers[name] = value;
  const bodyless =
    req.headers["content-length"] === undefined && req.headers["transfer-encoding"] === undefined;
  upstream
    .request({ method: req.method ?? "GET", path: req.url ?? "/", headers, body: bodyless ? null : req })
    .then(async (up) => {
      for (const [name, value] of Object.entries(up.headers))
        if (value !== undefined && !NOT_FORWARDED.has(name)) res.setHeader(name, value);
      res.statusCode = up.statusCode;
      await pipeline(up.body, res);
    })
    .catch(() => {
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    });
});
server.listen(0, "127.0.0.1", () => console.log((server.address() as AddressInfo).port));
process.on("SIGTERM", () => {
  server.close();
  void upstream.close();
  server.closeAllConnections();
});
