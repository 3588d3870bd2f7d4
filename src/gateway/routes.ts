import { FennecError } from "../core/errors.js";
import { assertValidName, DEFAULT_USER, quoteForMessage } from "../core/names.js";
import type { FunctionId } from "../core/types.js";

/** A request target split into decoded path segments and the raw query. */
export interface Target {
  readonly segments: string[];
  /** The path after the first `n` segments, re-encoded as received (for the function's PATH_INFO). */
  rest(n: number): string;
  readonly query: string;
}

/**
 * Splits the raw URL without normalising it: `..` or `%2F` stay visible so name checks can refuse
 * them, instead of being resolved into some other function's path.
 */
export function parseTarget(url: string): Target {
  const q = url.indexOf("?");
  const path = q === -1 ? url : url.slice(0, q);
  const query = q === -1 ? "" : url.slice(q + 1);
  const raw = path.split("/").slice(1);
  const segments = raw.map((s) => {
    try {
      return decodeURIComponent(s);
    } catch {
      throw new FennecError(
        "BAD_REQUEST",
        `malformed percent-encoding in path segment ${quoteForMessage(s)}`,
      );
    }
  });
  return {
    segments,
    query,
    rest: (n) => "/" + raw.slice(n).join("/"),
  };
}

export function functionId(user: string | undefined, name: string | undefined): FunctionId {
  if (name === undefined || name === "") throw new FennecError("BAD_NAME", "missing function name");
  return {
    user: user === undefined ? DEFAULT_USER : assertValidName(user, "user"),
    name: assertValidName(name, "function"),
  };
}
