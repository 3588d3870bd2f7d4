import { randomUUID } from "node:crypto";

/**
 * A UUID of version 7 (RFC 9562): the time in milliseconds, then random bits. Still a UUID, and
 * ids made later sort later. Every call id Fennec makes is one (sync, async and chained calls): the
 * store keeps calls in id order and lists them newest first by id (schema 3), and a new call is
 * appended there instead of going to a random place, which made a record cost three times as much
 * to write (bench/records.ts).
 */
export function timeOrderedUuid(now: number): string {
  if (now !== prefixAt) {
    const time = now.toString(16).padStart(12, "0");
    prefix = `${time.slice(0, 8)}-${time.slice(8, 12)}-7`;
    prefixAt = now;
  }
  // randomUUID() is xxxxxxxx-xxxx-4xxx-Vxxx-xxxxxxxxxxxx: its random part after the version digit.
  return prefix + randomUUID().slice(15);
}
/** The time part of the ids of the current millisecond: made once per millisecond, not per call. */
let prefix = "";
let prefixAt = -1;
