import { copyFile, mkdir, writeFile } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { join } from "node:path";
import { startFennec, type Fennec, type FennecOptions } from "../../src/main.js";
import { copyExamples, tempDir, WASM_FIXTURES } from "./paths.js";

export interface TestServer {
  readonly fennec: Fennec;
  readonly url: string;
  readonly registry: string;
  readonly root: string;
  close(): Promise<void>;
}

/** A real Fennec on a free loopback port, serving a scratch copy of the example registry. */
export async function startTestServer(options: Partial<FennecOptions> = {}): Promise<TestServer> {
  const { dir, cleanup } = await tempDir();
  const registry = await copyExamples(dir);
  const fennec = await startFennec({
    registry,
    port: 0,
    logLevel: "silent",
    cacheDir: join(dir, "cache"),
    // Generous: a start (a handler bundled, a container booted) is slow on a busy machine; tests
    // about the start deadline pass their own.
    startTimeoutMs: 60_000,
    ...options,
  });
  return {
    fennec,
    url: fennec.url,
    registry,
    root: dir,
    close: async () => {
      await fennec.close(2000);
      await cleanup();
    },
  };
}

/** Adds a function built from a test fixture module to a registry. */
export async function addWasmFunction(
  registry: string,
  name: string,
  fixture: string,
  extraToml = "",
  memory = 32,
): Promise<void> {
  // "user/fn" lives in the user's namespace, `<registry>/@user/fn/`.
  const parts = name.split("/");
  const dir = parts.length === 2 ? join(registry, `@${parts[0]}`, parts[1]!) : join(registry, name);
  await mkdir(dir, { recursive: true });
  await copyFile(join(WASM_FIXTURES, fixture), join(dir, fixture));
  // Top-level keys in `extraToml` replace the defaults (TOML forbids repeating a key).
  const defaults = ["keepalive = 30", "concurrent-requests = 1"].filter(
    (line) => !extraToml.includes(line.split(" ")[0]! + " "),
  );
  await writeFile(
    join(dir, "function.toml"),
    `${defaults.join("\n")}\n${extraToml}\n[wasm]\nmodule = "${fixture}"\nmemory = ${memory}\n`,
  );
}

/** What `rawRequest` answers. */
export interface RawAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

/**
 * Sends a request with the path exactly as given (fetch would normalise `..` and `%2F` away) and
 * exactly the headers given (fetch adds some and forbids others, such as `Host` and `Origin`).
 */
export function rawRequest(
  url: string,
  method: string,
  path: string,
  body?: string | Uint8Array,
  headers: Record<string, string> = {},
): Promise<RawAnswer> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: u.hostname, port: u.port, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          text: Buffer.concat(chunks).toString(),
        }),
      );
    });
    req.on("error", reject);
    req.end(body);
  });
}
