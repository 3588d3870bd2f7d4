import { mkdir, readFile } from "node:fs/promises";
import { dirname } from "node:path";
import { writeFileAtomic } from "../registry/atomic-write.js";
import type { SharedFunction } from "./contract.js";

/**
 * What this node last agreed with the cluster on, per function (`<registry>/.fennec/cluster/
 * functions.json`): the `SharedFunction` it installed or published. It is how a node that was away
 * tells "the cluster deleted this function" (its copy is unchanged since it was shared) from "this
 * is a function of my -r DIR the cluster never had" (no record: it seeds the cluster), and how old
 * an unchanged copy is (its record's `deployedAt`, not the files' mtimes).
 */
export class SharedBaseline {
  readonly #file: string;
  readonly #records = new Map<string, SharedFunction>();
  #writing: Promise<void> = Promise.resolve();

  private constructor(file: string) {
    this.#file = file;
  }

  /** Reads the file; a missing or unreadable one is an empty record (every local function then seeds). */
  static async load(file: string): Promise<SharedBaseline> {
    const baseline = new SharedBaseline(file);
    try {
      const doc = JSON.parse(await readFile(file, "utf8")) as Record<string, SharedFunction>;
      for (const [key, value] of Object.entries(doc)) {
        if (typeof value?.revision === "string" && typeof value.deployedAt === "number")
          baseline.#records.set(key, value);
      }
    } catch {
      // first start in a cluster, or a damaged file: nothing agreed yet
    }
    return baseline;
  }

  get(key: string): SharedFunction | undefined {
    return this.#records.get(key);
  }

  keys(): string[] {
    return [...this.#records.keys()];
  }

  async set(key: string, value: SharedFunction | undefined): Promise<void> {
    if (value) this.#records.set(key, value);
    else if (!this.#records.delete(key)) return;
    await this.#save();
  }

  /** Writes are serialised, each the whole map, atomically: a crash leaves the old or the new file. */
  #save(): Promise<void> {
    const next = this.#writing.then(async () => {
      await mkdir(dirname(this.#file), { recursive: true, mode: 0o700 });
      await writeFileAtomic(this.#file, JSON.stringify(Object.fromEntries(this.#records), null, 1));
    });
    this.#writing = next.catch(() => undefined);
    return next;
  }
}
