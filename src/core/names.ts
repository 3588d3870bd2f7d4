import { FennecError } from "./errors.js";

// ASCII only, so look-alike unicode can never name a function; no leading dot, so `.` and `..`
// and hidden directories are impossible; no slash, so a name is always one path segment.
const NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

export function isValidName(name: string): boolean {
  return NAME.test(name);
}

/** How much of a caller's text an error message quotes: enough to recognise it, never all of it. */
const QUOTED_CHARS = 80;

/**
 * Quotes caller-supplied text for an error message, cut to a recognisable prefix: a 10 KB name
 * is not echoed back whole (answers stay small, and logs stay readable).
 */
export function quoteForMessage(text: string): string {
  if (text.length <= QUOTED_CHARS) return JSON.stringify(text);
  return `${JSON.stringify(text.slice(0, QUOTED_CHARS))}… (${text.length} characters)`;
}

/** Throws BAD_NAME unless `name` is a safe single path segment. */
export function assertValidName(name: string, what: "function" | "user"): string {
  if (!isValidName(name)) {
    throw new FennecError(
      "BAD_NAME",
      `invalid ${what} name ${quoteForMessage(name)}: expected 1-64 characters of A-Z a-z 0-9 _ - starting with a letter or digit`,
    );
  }
  return name;
}

export const DEFAULT_USER = "default";
