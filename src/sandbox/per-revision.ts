import type { FunctionConfig } from "../config/function-config.js";

/**
 * Work done once per function revision (a bundle, a root filesystem, an image, a VM's
 * artefacts), however many instances start at once. A failure is forgotten, so the next start
 * tries again.
 */
export class PerRevision<T> {
  readonly #results = new Map<string, Promise<T>>();

  get(config: FunctionConfig, make: () => Promise<T>): Promise<T> {
    const key = `${config.key}@${config.revision}`;
    let result = this.#results.get(key);
    if (!result) {
      result = make();
      this.#results.set(key, result);
      result.catch(() => this.#results.delete(key));
    }
    return result;
  }
}
