import type { InvokeRequest } from "./types.js";

/** Request headers that carry the caller's credentials (the admin token, a browser's cookies). */
const CREDENTIAL_HEADERS = ["authorization", "proxy-authorization", "cookie"];

/**
 * The request as a function sees it unless its function.toml sets `forward-credentials = true`:
 * without the caller's credentials, which belong to the caller and the platform, not to function code.
 */
export function withoutCredentials(request: InvokeRequest): InvokeRequest {
  if (!CREDENTIAL_HEADERS.some((name) => name in request.headers)) return request;
  const headers = { ...request.headers };
  for (const name of CREDENTIAL_HEADERS) delete headers[name];
  return { ...request, headers };
}
