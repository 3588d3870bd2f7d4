/**
 * Closed-loop HTTP load client, run as a child process so it never shares an event loop with the
 * server it measures. Each of `connections` keep-alive connections sends `requests` requests one
 * after another; every latency is recorded in microseconds.
 */
import { Agent, request } from "node:http";

interface Job {
  url: string;
  method: string;
  body: string;
  connections: number;
  requests: number;
  warmup: number;
}

function once(agent: Agent, url: URL, method: string, body: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const req = request(url, { agent, method, headers: { "content-length": body.length } }, (res) => {
      res.on("data", () => undefined);
      res.on("end", () => {
        if (res.statusCode !== 200) reject(new Error(`status ${res.statusCode}`));
        else resolve(Number(process.hrtime.bigint() - t0) / 1000);
      });
    });
    req.on("error", reject);
    req.end(body);
  });
}

async function run(job: Job): Promise<{ latenciesUs: number[]; seconds: number }> {
  const url = new URL(job.url);
  const body = Buffer.from(job.body);
  const agent = new Agent({ keepAlive: true, maxSockets: job.connections });
  const loop = async (n: number, out: number[] | undefined) => {
    for (let i = 0; i < n; i++) {
      const us = await once(agent, url, job.method, body);
      out?.push(us);
    }
  };
  await Promise.all(Array.from({ length: job.connections }, () => loop(job.warmup, undefined)));
  const latenciesUs: number[] = [];
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: job.connections }, () => loop(job.requests, latenciesUs)));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  agent.destroy();
  return { latenciesUs, seconds };
}

process.once("message", (job: Job) => {
  run(job).then(
    (result) => process.send!(result, () => process.exit(0)),
    (err: unknown) => process.send!({ error: String(err) }, () => process.exit(1)),
  );
});
