import { z } from "zod";

/** The units a size in function.toml may carry: binary ones only, so "1GiB" means one thing. */
const UNITS: Readonly<Record<string, number>> = {
  B: 1,
  KiB: 2 ** 10,
  MiB: 2 ** 20,
  GiB: 2 ** 30,
  TiB: 2 ** 40,
};
const SIZE = /^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB)$/;
const EXPECTED =
  'expected a size such as "64KiB", "16MiB" or "1GiB" (units B, KiB, MiB, GiB, TiB), or a whole number of MiB';

/**
 * A size in function.toml, in bytes: a whole number is MiB, as every `memory` key is, and a
 * string carries its unit (`"1GiB"`, `"512KiB"`, `"1.5MiB"`), for limits finer than a MiB.
 */
export const byteSize = z
  .union([z.int().min(1, { error: EXPECTED }), z.string()], { error: EXPECTED })
  .transform((value, ctx) => {
    const bytes = typeof value === "number" ? value * UNITS["MiB"]! : withUnit(value);
    if (bytes < 1 || !Number.isSafeInteger(bytes)) {
      ctx.addIssue({ code: "custom", message: `${EXPECTED}, got ${JSON.stringify(value)}` });
      return z.NEVER;
    }
    return bytes;
  });

/** `"1.5KiB"` in bytes (rounded down), or 0 when it is not a size. */
function withUnit(text: string): number {
  const match = SIZE.exec(text.trim());
  return match ? Math.floor(Number(match[1]) * UNITS[match[2]!]!) : 0;
}

/** A size as function.toml would spell it: the largest unit it is a whole number of ("1GiB", "1536B"). */
export function formatByteSize(bytes: number): string {
  for (const unit of ["TiB", "GiB", "MiB", "KiB"]) {
    const size = UNITS[unit]!;
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return `${bytes}B`;
}

/** A size given on the command line: a whole number of bytes, or one with its unit (`512MiB`). */
export function parseByteSize(text: string): number | undefined {
  const bytes = /^\d+$/.test(text.trim()) ? Number(text) : withUnit(text);
  return bytes >= 1 && Number.isSafeInteger(bytes) ? bytes : undefined;
}
