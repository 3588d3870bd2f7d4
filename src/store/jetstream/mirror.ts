import type { KV, KvEntry } from "@nats-io/kv";
import { decodeDoc, type CallDoc } from "./call-doc.js";
import { untoken } from "./names.js";

export interface Entry {
  readonly doc: CallDoc;
  /** The key's revision: what a compare-and-set names. */
  readonly rev: number;
}

/**
 * Every call of the `calls` bucket in memory, kept by a watch (an ordered consumer that resumes
 * after a reconnect or a nats-server restart). Scans answer from it (take's candidates, list,
 * queue figures, pending callbacks, retention); every change still goes to the bucket as a
 * compare-and-set, so a stale entry costs a failed write and a re-read, never a double lease.
 *
 * Each change is applied once, newest revision wins: this node's writes apply when acknowledged
 * (reads see them at once), other nodes' when the watch delivers them.
 */
export class CallMirror {
  readonly #calls = new Map<string, Entry>();
  /** Revisions of deletes not yet seen on the watch: an older put it delivers must not revive them. */
  readonly #deleted = new Map<string, number>();
  #watched = 0;
  #stop: (() => void) | undefined;
  #stopped = false;
  /** Told when the watch fails (it is started again). */
  onWatchError: ((err: unknown) => void) | undefined;

  constructor(private readonly onChange: (id: string, entry: Entry | undefined) => void) {}

  /**
   * Starts the watch; resolves once every call the bucket held at the start is loaded. Should
   * the watch end while the mirror is in use (its consumer lost for good), a new one resumes
   * from the next revision, a second later.
   */
  async start(kv: KV): Promise<void> {
    const status = await kv.status();
    const { messages, last_seq } = status.streamInfo.state;
    let ready!: () => void;
    const loaded = new Promise<void>((resolve) => (ready = resolve));
    if (messages === 0) ready();
    const run = async (resume: number): Promise<void> => {
      const watch = await kv.watch({ key: "c.>", ...(resume > 0 ? { resumeFromRevision: resume } : {}) });
      this.#stop = () => watch.stop();
      for await (const e of watch) {
        this.#apply(e);
        if (e.isUpdate || e.revision >= last_seq) ready();
      }
    };
    const keep = (resume: number): void => {
      run(resume)
        .catch((err: unknown) => this.onWatchError?.(err))
        .finally(() => {
          if (this.#stopped) return;
          setTimeout(() => keep(this.#watched + 1), 1_000).unref();
        });
    };
    keep(0);
    await loaded;
  }

  #apply(e: KvEntry): void {
    this.#watched = Math.max(this.#watched, e.revision);
    const id = untoken(e.key.slice(2));
    if (e.operation === "PUT") this.put(id, { doc: decodeDoc(e.value), rev: e.revision });
    else this.remove(id, e.revision);
    for (const [k, rev] of this.#deleted) if (rev <= this.#watched) this.#deleted.delete(k);
  }

  put(id: string, entry: Entry): void {
    const now = this.#calls.get(id);
    if (now && now.rev >= entry.rev) return;
    const gone = this.#deleted.get(id);
    if (gone !== undefined && gone >= entry.rev) return;
    this.#calls.set(id, entry);
    this.onChange(id, entry);
  }

  remove(id: string, rev: number): void {
    const now = this.#calls.get(id);
    if (now && now.rev > rev) return;
    if (rev > this.#watched) this.#deleted.set(id, rev);
    if (!now) return;
    this.#calls.delete(id);
    this.onChange(id, undefined);
  }

  get(id: string): Entry | undefined {
    return this.#calls.get(id);
  }

  values(): IterableIterator<Entry> {
    return this.#calls.values();
  }

  /**
   * Ends the current watch; a new one resumes from the next revision a second later (on a live
   * server: called when a server of the NATS cluster is lost, `onServerLost`).
   */
  rewatch(): void {
    if (!this.#stopped) this.#stop?.();
  }

  stop(): void {
    this.#stopped = true;
    this.#stop?.();
  }
}
