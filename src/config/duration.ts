import { z } from "zod";

/** Milliseconds per unit of a duration (function.toml, the command line). */
const UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const DURATION = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/;
const EXPECTED =
  'expected a duration such as "500ms", "1s", "5m", "6h" or "1d" (units ms, s, m, h, d), or a number of seconds';

function withUnit(text: string): number | undefined {
  const match = DURATION.exec(text.trim());
  return match ? Number(match[1]) * UNITS[match[2]!]! : undefined;
}

/** A duration given on the command line (`90s`, `24h`, `7d`) in milliseconds, or undefined. */
export function parseDuration(text: string): number | undefined {
  const raw = withUnit(text);
  if (raw === undefined) return undefined;
  const ms = Math.round(raw);
  return ms >= 1 && Number.isSafeInteger(ms) ? ms : undefined;
}

/** A duration in function.toml, in milliseconds: a number is seconds (as `timeout` is), a string carries its unit. */
export const duration = z
  .union([z.number().min(0, { error: EXPECTED }), z.string()], { error: EXPECTED })
  .transform((value, ctx) => {
    const ms = typeof value === "number" ? value * 1000 : withUnit(value);
    if (ms === undefined || !Number.isFinite(ms)) {
      ctx.addIssue({ code: "custom", message: `${EXPECTED}, got ${JSON.stringify(value)}` });
      return z.NEVER;
    }
    return Math.round(ms);
  });
