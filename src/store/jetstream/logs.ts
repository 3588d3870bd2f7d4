import { randomUUID } from "node:crypto";
import { DeliverPolicy, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import type { LogLine, LogQuery, StoredLogLine } from "../contract.js";
import { LogFollowers } from "../log-followers.js";
import type { StoreNames } from "./names.js";
import { readStream } from "./stream-read.js";

/** A line as one stream message: short names, since every line a function writes is one. */
interface LineMessage {
  readonly t: number;
  readonly f: string;
  readonly c?: string | undefined;
  readonly i?: string | undefined;
  readonly s: "stdout" | "stderr";
  readonly x: string;
  /** The store (process) that wrote it: its own followers were told at once. */
  readonly w: string;
}

/** Lines are written behind: at most this long after they are handed over, or at this many. */
const FLUSH_MS = 20;
const FLUSH_LINES = 500;

const toStored = (seq: number, m: LineMessage): StoredLogLine => ({
  seq,
  time: m.t,
  function: m.f,
  callId: m.c,
  instanceId: m.i,
  stream: m.s,
  text: m.x,
});

/**
 * Function logs in one stream, a subject per function (so reading one function's lines reads only
 * them); a line's `seq` is its stream sequence, the same on every node. Written behind and
 * batched (publishes pipelined, acknowledgements awaited together); followers on this node are
 * told at the acknowledgement, followers on other nodes through a consumer of new lines.
 */
export class LogStream {
  readonly #writer = randomUUID();
  readonly #followers = new LogFollowers();
  #pending: LogLine[] = [];
  #timer: NodeJS.Timeout | undefined;
  #writing: Promise<void> = Promise.resolve();
  #remote: { stop(): void } | undefined;

  constructor(
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly names: StoreNames,
    private readonly onDropped: (err: unknown, dropped: number) => void,
  ) {}

  append(lines: readonly LogLine[]): void {
    this.#pending.push(...lines);
    if (this.#pending.length >= FLUSH_LINES) void this.flush();
    else this.#timer ??= setTimeout(() => void this.flush(), FLUSH_MS);
  }

  /** Writes what is pending; resolves when it (and every earlier batch) is stored. */
  flush(): Promise<void> {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    const batch = this.#pending;
    this.#pending = [];
    if (batch.length > 0) this.#writing = this.#writing.then(() => this.#write(batch));
    return this.#writing;
  }

  async #write(batch: readonly LogLine[]): Promise<void> {
    try {
      const acks = await Promise.all(
        batch.map((l) => {
          const m: LineMessage = {
            t: l.time,
            f: l.function,
            c: l.callId,
            i: l.instanceId,
            s: l.stream,
            x: l.text,
            w: this.#writer,
          };
          return this.js.publish(this.names.logSubject(l.function), JSON.stringify(m));
        }),
      );
      if (this.#followers.any) batch.forEach((l, i) => this.#followers.tell({ ...l, seq: acks[i]!.seq }));
    } catch (err) {
      this.onDropped(err, batch.length);
    }
  }

  async query(q: LogQuery): Promise<StoredLogLine[]> {
    await this.flush();
    const limit = Math.min(Math.max(Math.trunc(q.limit ?? 1000), 1), 10_000);
    const out: StoredLogLine[] = [];
    await readStream(
      this.js,
      this.jsm,
      this.names.logs,
      {
        filter: q.function !== undefined ? this.names.logSubject(q.function) : this.names.logFilter,
        // A line is published after it was written: none stored before `since` is at or after it.
        ...(q.afterSeq !== undefined
          ? { startSeq: q.afterSeq + 1 }
          : q.since !== undefined
            ? { startTime: q.since }
            : {}),
      },
      (msg) => {
        const m = msg.json<LineMessage>();
        if (q.callId !== undefined && m.c !== q.callId) return true;
        if (q.since !== undefined && m.t < q.since) return true;
        if (q.afterSeq !== undefined && msg.seq <= q.afterSeq) return true;
        out.push(toStored(msg.seq, m));
        return out.length < limit;
      },
    );
    return out;
  }

  follow(filter: Pick<LogQuery, "function" | "callId">, listener: (line: StoredLogLine) => void): () => void {
    const stop = this.#followers.follow(filter, listener);
    if (!this.#remote) this.#remote = this.#followRemote();
    return stop;
  }

  /** Lines other nodes write, from now on, told to this node's followers. */
  #followRemote(): { stop(): void } {
    let stopped = false;
    let messages: { stop(): void } | undefined;
    void (async () => {
      const consumer = await this.js.consumers.get(this.names.logs, {
        filter_subjects: this.names.logFilter,
        deliver_policy: DeliverPolicy.New,
      });
      if (stopped) return;
      const iter = await consumer.consume();
      messages = iter;
      for await (const msg of iter) {
        const m = msg.json<LineMessage>();
        if (m.w !== this.#writer) this.#followers.tell(toStored(msg.seq, m));
      }
    })().catch(() => undefined);
    return {
      stop: () => {
        stopped = true;
        messages?.stop();
      },
    };
  }

  /** Drops every line up to (not including) `seq`. */
  async purgeBefore(seq: number): Promise<number> {
    const r = await this.jsm.streams.purge(this.names.logs, { seq });
    return r.purged;
  }

  async close(): Promise<void> {
    await this.flush();
    this.#remote?.stop();
  }
}

export type { LineMessage };
