import type { PruneResult, RetentionPolicy } from "../contract.js";
import type { CallDoc } from "./call-doc.js";
import type { LineMessage } from "./logs.js";
import type { Entry } from "./mirror.js";
import { readStream } from "./stream-read.js";
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";

/** What retention needs of the store. */
export interface Prunable {
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly logStream: string;
  readonly logFilter: string;
  calls(): Iterable<Entry>;
  /** Removes an ended call with its payloads (a compare-and-set: false when it changed meanwhile). */
  removeCall(id: string, entry: Entry): Promise<boolean>;
  /** Drops every log line before `seq`; returns how many. */
  purgeLogsBefore(seq: number): Promise<number>;
  /** Bytes of log lines (what the log stream holds) and of state. */
  logBytes(): Promise<number>;
  stateBytes(): Promise<number>;
}

interface LogHead {
  readonly seq: number;
  readonly time: number;
  readonly bytes: number;
}

const CHUNK = 2000;
const PARALLEL = 64;

const endedAt = (d: CallDoc): number => d.finishedAt ?? d.submittedAt;

async function logsFrom(p: Prunable, startSeq: number): Promise<LogHead[]> {
  const out: LogHead[] = [];
  await readStream(p.js, p.jsm, p.logStream, { filter: p.logFilter, startSeq }, (m) => {
    const line = m.json<LineMessage>();
    out.push({ seq: m.seq, time: line.t, bytes: m.data.byteLength + m.subject.length });
    return out.length < CHUNK;
  });
  return out;
}

async function removeAll(p: Prunable, entries: ReadonlyArray<readonly [string, Entry]>): Promise<number> {
  let n = 0;
  for (let i = 0; i < entries.length; i += PARALLEL) {
    const done = await Promise.all(entries.slice(i, i + PARALLEL).map(([id, e]) => p.removeCall(id, e)));
    n += done.filter(Boolean).length;
  }
  return n;
}

/**
 * The embedded store's retention over JetStream: ended calls (dead letters too) and log lines
 * older than `maxAgeMs`; then the oldest ended calls (not dead letters) and log lines, whichever
 * is older first, until what is kept is under `maxBytes`. Queued and running calls and state are
 * never removed. Log lines go from the front of their stream (a purge up to a sequence): lines are
 * stored in the order they were written, so the old ones are the first ones.
 */
export async function prune(p: Prunable, policy: RetentionPolicy, now: number): Promise<PruneResult> {
  const cutoff = now - policy.maxAgeMs;
  const old: Array<[string, Entry]> = [];
  for (const e of p.calls()) {
    const d = e.doc;
    if ((d.state === "succeeded" || d.state === "failed" || d.state === "dead") && endedAt(d) < cutoff)
      old.push([d.id, e]);
  }
  let calls = await removeAll(p, old);

  let logLines = 0;
  let heads = await logsFrom(p, 1);
  let firstYoung = heads.findIndex((h) => h.time >= cutoff);
  while (firstYoung === -1 && heads.length === CHUNK) {
    logLines += await p.purgeLogsBefore(heads.at(-1)!.seq + 1);
    heads = await logsFrom(p, 1);
    firstYoung = heads.findIndex((h) => h.time >= cutoff);
  }
  if (firstYoung === -1) firstYoung = heads.length;
  if (firstYoung > 0) {
    logLines += await p.purgeLogsBefore(heads[firstYoung - 1]!.seq + 1);
    heads = heads.slice(firstYoung);
  }

  // By bytes: decide what goes first (only as much as it takes), then remove it.
  const ended: Array<[string, Entry]> = [];
  let used = (await p.logBytes()) + (await p.stateBytes());
  for (const e of p.calls()) {
    used += e.doc.bytes;
    if (e.doc.state === "succeeded" || e.doc.state === "failed") ended.push([e.doc.id, e]);
  }
  if (used <= policy.maxBytes) return { calls, logLines };
  ended.sort((a, b) => endedAt(a[1].doc) - endedAt(b[1].doc) || (a[0] < b[0] ? -1 : 1));
  const going: Array<[string, Entry]> = [];
  let ci = 0;
  let li = 0;
  let lastLog = -1;
  while (used > policy.maxBytes) {
    if (li === heads.length && heads.length === CHUNK) {
      heads = await logsFrom(p, heads.at(-1)!.seq + 1);
      li = 0;
    }
    const nextLog = heads[li]?.time ?? Infinity;
    const nextCall = ended[ci] ? endedAt(ended[ci]![1].doc) : Infinity;
    if (nextLog === Infinity && nextCall === Infinity) break;
    if (nextCall <= nextLog) {
      going.push(ended[ci]!);
      used -= ended[ci]![1].doc.bytes;
      ci++;
    } else {
      used -= heads[li]!.bytes;
      lastLog = heads[li]!.seq;
      li++;
    }
  }
  calls += await removeAll(p, going);
  if (lastLog >= 0) logLines += await p.purgeLogsBefore(lastLog + 1);
  return { calls, logLines };
}
