/** An append-only sample series with the thesis' summary statistics. */
export class Samples {
  #values: number[] = [];
  #count = 0;
  readonly #cap: number;

  /** Keeps at most `cap` recent samples (the count keeps growing) so a long run cannot exhaust memory. */
  constructor(cap = 1_000_000) {
    this.#cap = cap;
  }

  add(value: number): void {
    this.#count++;
    this.#values.push(value);
    if (this.#values.length > this.#cap)
      this.#values = this.#values.slice(this.#values.length - Math.floor(this.#cap / 2));
  }

  get count(): number {
    return this.#count;
  }

  /**
   * The thesis' summary: integer mean, population standard deviation, the element at index
   * floor(0.95·N) of the sorted samples, and the maximum; all -1 when there are no samples.
   */
  thesis(): { avg: number; std: number; p95: number; max: number } {
    const v = this.#values;
    if (v.length === 0) return { avg: -1, std: -1, p95: -1, max: -1 };
    const sorted = [...v].sort((a, b) => a - b);
    const mean = v.reduce((s, x) => s + x, 0) / v.length;
    const variance = v.reduce((s, x) => s + (x - mean) ** 2, 0) / v.length;
    return {
      avg: Math.trunc(mean),
      std: Math.sqrt(variance),
      p95: sorted[Math.floor(0.95 * sorted.length)]!,
      max: sorted[sorted.length - 1]!,
    };
  }

  /** Percentiles for Fennec's own per-function figures (nearest-rank). */
  percentiles():
    { count: number; avg: number; p50: number; p95: number; p99: number; max: number } | undefined {
    const v = this.#values;
    if (v.length === 0) return undefined;
    const sorted = [...v].sort((a, b) => a - b);
    const at = (q: number) =>
      sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
    const round = (x: number) => Math.round(x * 1000) / 1000;
    return {
      count: this.#count,
      avg: round(v.reduce((s, x) => s + x, 0) / v.length),
      p50: round(at(0.5)),
      p95: round(at(0.95)),
      p99: round(at(0.99)),
      max: round(sorted[sorted.length - 1]!),
    };
  }
}
