import { randomBytes } from "node:crypto";
import { FennecError, toFennecError } from "../../../core/errors.js";
import type { Logger } from "../../../core/log.js";
import type { FunctionConfig } from "../../../config/function-config.js";
import type { StartContext } from "../../contract.js";
import type { Artefacts } from "./artefacts.js";
import type { LaunchMode } from "./qemu-launch.js";
import type { QemuHandle } from "./qemu-launch.js";
import { saveDeviceState, type SnapshotStore } from "./snapshots.js";

/** Starts one QEMU in the given mode (qemu-launch.ts, its environment bound). */
export type Launch = (ctx: StartContext, art: Artefacts, mode: LaunchMode) => Promise<QemuHandle>;

/** How long a template guest may take from boot to ready. */
const TEMPLATE_READY_MS = 60_000;

/**
 * SnapFaaS on QEMU: a start restores the function's snapshot when one of its current artefacts
 * exists (and boots instead, discarding it, when it cannot be restored); otherwise it boots while
 * a template guest is booted in the background and snapshotted once ready, so a start never waits
 * for a snapshot and a function that is never called never boots a template.
 */
export class SnapshotTemplates {
  /** Snapshots being written, by function and key: a start never waits for one. */
  readonly #writing = new Map<string, Promise<void>>();
  readonly #unsnapshottable = new Set<string>();

  constructor(
    private readonly store: SnapshotStore,
    private readonly launch: Launch,
    private readonly log: Logger,
  ) {}

  /** Restores the function's snapshot, or boots and has one written. */
  async start(ctx: StartContext, art: Artefacts): Promise<QemuHandle> {
    const found = await this.store.find(ctx.config.key, art.snapshotKey);
    if (found.snapshot) {
      try {
        return await this.launch(ctx, art, { restoreFrom: found.snapshot });
      } catch (err) {
        if (ctx.signal.aborted) throw err;
        this.log.warn(`${ctx.config.key}: snapshot could not be restored; booting instead`, {
          snapshot: found.snapshot.dir,
          error: toFennecError(err).message,
        });
        await this.store.discard(found.snapshot);
      }
    } else if (found.older) {
      this.log.info(`${ctx.config.key}: snapshot is of older artefacts; booting and taking a new one`);
    }
    this.#ensure(ctx.config, art);
    return this.launch(ctx, art, {});
  }

  /** Waits for the snapshots being written. */
  async close(): Promise<void> {
    await Promise.allSettled(this.#writing.values());
  }

  /** Writes this function's snapshot in the background unless it exists or is being written. */
  #ensure(config: FunctionConfig, art: Artefacts): void {
    const id = `${config.key}@${art.snapshotKey}`;
    // One attempt per key: a guest that cannot be snapshotted is not booted again and again.
    if (this.#writing.has(id) || this.#unsnapshottable.has(id)) return;
    const job = (async () => {
      if ((await this.store.find(config.key, art.snapshotKey)).snapshot) return;
      await this.#take(config, art);
    })()
      .catch((err: unknown) => {
        this.#unsnapshottable.add(id);
        this.log.warn(`${config.key}: could not take a snapshot; instances will boot`, {
          error: toFennecError(err).message,
        });
      })
      .finally(() => this.#writing.delete(id));
    this.#writing.set(id, job);
  }

  /**
   * Boots a template guest with its RAM in a shared file, waits until it is ready, writes its
   * device state (a migration without RAM: `x-ignore-shared`) and stops it. Clones map the RAM
   * file privately, so they share its pages until they write them.
   */
  async #take(config: FunctionConfig, art: Artefacts): Promise<void> {
    const snap = await this.store.begin(config.key, art.snapshotKey);
    const controller = new AbortController();
    const timer = setTimeout(
      () =>
        controller.abort(
          new FennecError("FN_INIT_TIMEOUT", `snapshot template not ready in ${TEMPLATE_READY_MS / 1000} s`),
        ),
      TEMPLATE_READY_MS,
    );
    const { signal } = controller;
    const began = performance.now();
    let template: QemuHandle | undefined;
    try {
      template = await this.launch(
        {
          instanceId: `snap-${randomBytes(4).toString("hex")}`,
          config,
          callbackUrl: "ignore",
          waitForCallback: () => Promise.reject(new Error("a snapshot template has no callback")),
          signal,
        },
        art,
        { snapshotInto: snap },
      );
      const bootMs = performance.now() - began;
      const saved = performance.now();
      await saveDeviceState(template.qmpSocket, snap.state, signal);
      await this.store.commit(snap, {
        key: art.snapshotKey,
        function: config.key,
        createdAt: new Date().toISOString(),
        bootMs: Math.round(bootMs),
        saveMs: Math.round(performance.now() - saved),
      });
      this.log.info(`${config.key}: snapshot written`, { dir: snap.dir, bootMs: Math.round(bootMs) });
    } catch (err) {
      await this.store.discard(snap);
      throw err;
    } finally {
      clearTimeout(timer);
      await template?.destroy();
    }
  }
}
