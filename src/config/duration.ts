import { z } from "zod";

const UNITS: Readonly<Record<string, number>> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};
const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/;

/** `"90s"` in milliseconds (rounded), or undefined when it is not a duration. */
function milliseconds(text: string): number | undefined {
  const match = DURATION.exec(text.trim());
  if (!match) return undefined;
  const ms = Math.round(Number(match[1]) * UNITS[match[2]!]!);
  return Number.isSafeInteger(ms) ? ms : undefined;
}

/** A duration given on the command line (`90s`, `24h`, `7d`) in milliseconds, or undefined. */
export function parseDuration(text: string): number | undefined {
  const ms = milliseconds(text);
  return ms !== undefined && ms >= 1 ? ms : undefined;
}

const EXPECTED =
  'expected a duration such as "500ms", "1s", "5m", "6h" or "1d" (units ms, s, m, h, d), or a number of seconds';

/** A duration in function.toml, in milliseconds: a number is seconds (as `timeout` is), a string carries its unit. */
export const duration = z
  .union([z.number().min(0, { error: EXPECTED }), z.string()], { error: EXPECTED })
  .transform((value, ctx) => {
    const ms = typeof value === "number" ? Math.round(value * 1000) : milliseconds(value);
    if (ms === undefined || !Number.isSafeInteger(ms)) {
      ctx.addIssue({ code: "custom", message: `${EXPECTED}, got ${JSON.stringify(value)}` });
      return z.NEVER;
    }
    return ms;
  });
