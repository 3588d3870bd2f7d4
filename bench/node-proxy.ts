/**
 * A bare reverse proxy on Node, for the warm-hop and forwarding benchmarks: node:http in front, an
 * undici `Pool` of kept-alive connections behind, bodies streamed both ways, nothing else (no
 * routing, limits, lifecycle, records). It is the floor for any gateway written on Node's HTTP
 * stack on this machine, and so tells the cost of Node itself apart from the cost of Fennec's own
 * work. With `whole`, a body of declared length up to 64 KiB is read whole and sent as one buffer
 * each way (as Fennec's hops do), a larger or chunked one still streamed.
 *
 * Usage (a child of the benchmark): node dist/bench/node-proxy.js UPSTREAM_PORT [whole] — prints its port.
 */
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { pipeline } from "node:stream/promises";
import { Pool } from "undici";
import { HOP_BY_HOP } from "../src/core/hop-by-hop.js";

/** One hop's headers, and `host` (undici sets the upstream's). */
const NOT_FORWARDED = new Set([...HOP_BY_HOP, "host"]);
const upstream = new Pool(`http://127.0.0.1:${process.argv[2]}`, { connections: 64 });
const WHOLE = process.argv[3] === "whole";
const SMALL = 64 * 1024;

const small = (length: string | string[] | undefined) => WHOLE && Number(length) <= SMALL;

function readAll(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.once("end", () => resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)));
    req.once("error", reject);
  });
}

const server = createServer((req, res) => {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(req.headers))
    if (typeof value === "string" && !NOT_FORWARDED.has(name)) headers[name] = value;
  const bodyless =
    req.headers["content-length"] === undefined && req.headers["transfer-encoding"] === undefined;
  const body = bodyless ? null : small(req.headers["content-length"]) ? readAll(req) : req;
  Promise.resolve(body)
    .then((b) => upstream.request({ method: req.method ?? "GET", path: req.url ?? "/", headers, body: b }))
    .then(async (up) => {
      for (const [name, value] of Object.entries(up.headers))
        if (value !== undefined && !NOT_FORWARDED.has(name)) res.setHeader(name, value);
      res.statusCode = up.statusCode;
      if (small(up.headers["content-length"])) res.end(Buffer.from(await up.body.arrayBuffer()));
      else await pipeline(up.body, res);
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
