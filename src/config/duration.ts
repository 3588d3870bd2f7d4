import { z } from "zod";

/** Milliseconds per unit of a duration in function.toml. */
const UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const DURATION = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/;
const EXPECTED =
  'expected a duration such as "500ms", "1s", "5m", "6h" or "1d" (units ms, s, m, h, d), or a number of seconds';

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

function withUnit(text: string): number | undefined {
  const match = DURATION.exec(text.trim());
  return match ? Number(match[1]) * UNITS[match[2]!]! : undefined;
}
