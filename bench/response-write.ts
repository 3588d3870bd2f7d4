/**
 * node:http's work to write a warm call's answer (issue 11), without a socket's system call: the
 * gateway's headers set one by one (`setHeader` × 5, `appendHeader`, then `end`) against one
 * `writeHead` with a flat name/value list and `end` (function-response.ts `sendWhole`). The
 * response writes into a stream that drops what it gets; CPU time per response, both ways
 * alternating in one process. Usage: npm run build && node dist/bench/response-write.js [N]
 */
import { randomUUID } from "node:crypto";
import { IncomingMessage, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { Duplex } from "node:stream";
import { fmt } from "./stats.js";

const N = Number(process.argv[2] ?? 50_000);
const ROUNDS = 7;
const BODY = Buffer.from("hello from wrk 18b");

class Sink extends Duplex {
  override _write(_chunk: unknown, _encoding: string, done: () => void): void {
    done();
  }
  override _writev(_chunks: unknown, done: () => void): void {
    done();
  }
  override _read(): void {}
}

function respond(flat: boolean, req: IncomingMessage, socket: Socket): void {
  const res = new ServerResponse(req);
  res.shouldKeepAlive = true;
  // What node:http's assignSocket leaves for the writes, without its listeners.
  Object.assign(res, { socket, connection: socket });
  const requestId = randomUUID();
  const callId = randomUUID();
  if (flat) {
    res.writeHead(200, [
      "x-request-id",
      requestId,
      "x-fennec-node",
      "node",
      "x-call-id",
      callId,
      "x-fennec-start",
      "warm",
      "content-type",
      "text/plain",
      "content-length",
      String(BODY.byteLength),
    ]);
  } else {
    res.setHeader("x-request-id", requestId);
    res.setHeader("x-fennec-node", "node");
    res.setHeader("x-call-id", callId);
    res.setHeader("x-fennec-start", "warm");
    res.appendHeader("content-type", "text/plain");
    res.statusCode = 200;
    res.setHeader("content-length", BODY.byteLength);
  }
  res.end(BODY);
}

const rows: Record<"set" | "flat", number[]> = { set: [], flat: [] };
for (let round = 0; round < ROUNDS; round++) {
  for (const way of ["set", "flat"] as const) {
    const socket = new Sink() as unknown as Socket;
    const req = new IncomingMessage(socket);
    req.method = "POST";
    const cpu = process.cpuUsage();
    for (let i = 0; i < N; i++) respond(way === "flat", req, socket);
    const used = process.cpuUsage(cpu);
    rows[way].push((used.user + used.system) / N);
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
console.log(
  `setHeader × 5 + appendHeader + end: ${fmt(median(rows.set), 2)} µs; writeHead(flat list) + end: ${fmt(median(rows.flat), 2)} µs (median of ${ROUNDS} × ${N}, ServerResponse made each time)`,
);
