import { readBody } from "../../src/core/body.js";
import type { Body } from "../../src/core/types.js";

export { bodyOf } from "../../src/core/body.js";

/** Reads a whole body (tests only: what they read is small, or they say so). */
export function bytesOf(body: Body): Promise<Buffer> {
  return readBody(body, Number.POSITIVE_INFINITY, () => new Error("unreachable"));
}
