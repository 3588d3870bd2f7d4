/** A tiny HTTP client for the CLI's remote commands (uses Node's built-in fetch). */
import { readFileSync } from "node:fs";

export interface ClientOptions {
  readonly url: string;
  readonly token: string | undefined;
  /** Gives up after this long (undefined: waits as long as the server takes). */
  readonly timeoutMs?: number;
}

/** The version in package.json (dist/src/cli/ is three levels below the package root). */
export const VERSION: string = (
  JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version: string }
).version;

/**
 * Who a request is for. The admin token goes to Fennec's own routes (the admin API, uploads,
 * /stats) and never to a function: whatever a function is sent, it can read, log or forward.
 */
export type Audience = "platform" | "function";

export async function call(
  opts: ClientOptions,
  audience: Audience,
  method: string,
  path: string,
  body?: Uint8Array | string,
  headers: Record<string, string> = {},
): Promise<Response> {
  // No Origin and no browser content types: the gateway refuses what a web page could send.
  const h: Record<string, string> = { "user-agent": `fennec-cli/${VERSION}`, ...headers };
  if (audience === "platform" && opts.token) h["authorization"] = `Bearer ${opts.token}`;
  try {
    return await fetch(new URL(path, opts.url), {
      method,
      headers: h,
      // A function's redirect is its answer, shown as is; Fennec itself never redirects, so a
      // redirect on an admin route is refused rather than followed somewhere with the token.
      redirect: audience === "function" ? "manual" : "error",
      ...(opts.timeoutMs === undefined ? {} : { signal: AbortSignal.timeout(opts.timeoutMs) }),
      ...(body === undefined ? {} : { body: body as string | Uint8Array<ArrayBuffer> }),
    });
  } catch (err) {
    const cause =
      (err as Error).name === "TimeoutError"
        ? `no answer within ${opts.timeoutMs} ms`
        : ((err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message);
    throw new Error(
      `cannot reach Fennec at ${opts.url} (${cause}); is \`fennec serve\` running? (--url or FENNEC_URL)`,
    );
  }
}

/** Throws with the server's error code and message unless the response is a success. */
export async function expectOk(res: Response): Promise<Response> {
  if (res.ok) return res;
  const text = await res.text();
  let detail = text;
  try {
    const parsed = JSON.parse(text) as { error?: { code?: string; message?: string } };
    if (parsed.error) detail = `${parsed.error.code}: ${parsed.error.message}`;
  } catch {
    // not JSON: show the text as it is
  }
  throw new Error(`HTTP ${res.status}: ${detail.trim()}`);
}
