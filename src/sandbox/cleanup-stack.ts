/**
 * What a sandbox must give back when it stops, as a stack: each resource's release is deferred as
 * it is acquired and the releases run last-acquired first (the run directory made first is removed
 * last, after the mount, cgroup or container inside it), exactly once, however many paths (close,
 * destroy, a failed start) ask. The shape of TC39's AsyncDisposableStack, which Node 20 lacks.
 */
export class CleanupStack {
  readonly #steps: Array<() => unknown> = [];
  #done: Promise<void> | undefined;

  /** Adds a release step; one deferred after the stack has run runs at once. */
  defer(step: () => unknown): void {
    if (this.#done)
      void this.#done
        .catch(() => undefined)
        .then(step)
        .catch(() => undefined);
    else this.#steps.push(step);
  }

  /** True once `run` has been called. */
  get ran(): boolean {
    return this.#done !== undefined;
  }

  /**
   * Runs every step, newest first, once; later calls share the first run. A failing step does not
   * stop the others (a leaked mount must not also leak the run directory); the first failure is
   * rethrown once all have run.
   */
  run(): Promise<void> {
    this.#done ??= (async () => {
      let failure: { error: unknown } | undefined;
      for (const step of this.#steps.splice(0).reverse()) {
        try {
          await step();
        } catch (error) {
          failure ??= { error };
        }
      }
      if (failure) throw failure.error;
    })();
    return this.#done;
  }
}
