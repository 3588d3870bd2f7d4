/**
 * Drives a load against a URL from a separate process (bench/load-client.ts), so the client's
 * own work never shares an event loop with the server measured. Shared by the benchmarks.
 */
import { fork, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = fileURLToPath(new URL(".", import.meta.url));

export interface LoadResult {
  latenciesUs: number[];
  seconds: number;
}

/** The next message a child sends, or its exit as an error. */
export function message<T>(child: ChildProcess): Promise<T> {
  return new Promise((resolve, reject) => {
    child.once("message", (m) =>
      (m as { error?: string }).error ? reject(new Error((m as { error: string }).error)) : resolve(m as T),
    );
    child.once("exit", (code) => reject(new Error(`child exited with ${code}`)));
  });
}

/** `requests` calls over `connections` keep-alive connections, after a tenth as warm-up. */
export async function load(
  url: string,
  connections: number,
  requests: number,
  request: { method: string; body: string } = { method: "GET", body: "" },
): Promise<LoadResult> {
  const client = fork(join(HERE, "load-client.js"));
  const done = message<LoadResult>(client);
  client.send({ url, ...request, connections, requests, warmup: Math.ceil(requests / 10) });
  return done;
}
