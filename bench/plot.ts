/**
 * Dependency-free SVG charts: latency distributions (CDFs) side by side, so a reader sees the whole
 * shape of the curves instead of reading two percentiles, and grouped bars for throughput.
 */
export interface Series {
  readonly label: string;
  readonly colour: string;
  /** Sorted latencies. */
  readonly values: readonly number[];
}

const W = 760;
const H = 420;
const M = { left: 70, right: 20, top: 40, bottom: 55 };

function niceTicks(max: number, count = 6): number[] {
  const raw = max / count;
  const step =
    [1, 2, 2.5, 5, 10].map((m) => m * 10 ** Math.floor(Math.log10(raw))).find((s) => s >= raw) ?? raw;
  const ticks: number[] = [];
  for (let t = 0; t <= max + 1e-9; t += step) ticks.push(t);
  return ticks;
}

/** 1, 2 and 5 times each power of ten from `min` to `max`. */
function logTicks(min: number, max: number): number[] {
  const ticks: number[] = [];
  for (let k = Math.floor(Math.log10(min)); k <= Math.ceil(Math.log10(max)); k++)
    for (const m of [1, 2, 5]) {
      const t = m * 10 ** k;
      if (t >= min && t <= max) ticks.push(Number(t.toPrecision(3)));
    }
  return ticks;
}

export function cdfChart(
  title: string,
  xLabel: string,
  series: readonly Series[],
  clipQuantile = 0.99,
  /** A logarithmic latency axis: a busy machine's tail is 100× the median, and both stay readable. */
  logX = false,
): string {
  const xMax =
    Math.max(...series.map((s) => s.values[Math.floor((s.values.length - 1) * clipQuantile)] ?? 0)) * 1.05;
  const xMin = logX
    ? 10 ** Math.floor(Math.log10(Math.max(1e-9, Math.min(...series.map((s) => s.values[0] ?? xMax)))))
    : 0;
  const share = (v: number) =>
    logX ? Math.log(Math.max(v, xMin) / xMin) / Math.log(xMax / xMin) : Math.min(v, xMax) / xMax;
  const x = (v: number) => M.left + Math.min(1, share(v)) * (W - M.left - M.right);
  const y = (q: number) => H - M.bottom - q * (H - M.top - M.bottom);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${title}</text>`,
  ];
  for (const t of logX ? logTicks(xMin, xMax) : niceTicks(xMax)) {
    parts.push(`<line x1="${x(t)}" x2="${x(t)}" y1="${M.top}" y2="${H - M.bottom}" stroke="#eee"/>`);
    parts.push(`<text x="${x(t)}" y="${H - M.bottom + 18}" text-anchor="middle">${t}</text>`);
  }
  for (const q of [0, 0.25, 0.5, 0.75, 0.9, 1]) {
    parts.push(`<line x1="${M.left}" x2="${W - M.right}" y1="${y(q)}" y2="${y(q)}" stroke="#eee"/>`);
    parts.push(`<text x="${M.left - 8}" y="${y(q) + 4}" text-anchor="end">${Math.round(q * 100)} %</text>`);
  }
  parts.push(`<text x="${(M.left + W - M.right) / 2}" y="${H - 12}" text-anchor="middle">${xLabel}</text>`);
  parts.push(
    `<text transform="translate(16 ${(M.top + H - M.bottom) / 2}) rotate(-90)" text-anchor="middle">share of requests at or below</text>`,
  );
  // The legend sits in the lower right (CDFs are flat there), as wide as its longest label.
  const legendX = W - M.right - 40 - Math.max(...series.map((s) => s.label.length)) * 6.6;
  series.forEach((s, i) => {
    const n = s.values.length;
    const step = Math.max(1, Math.floor(n / 400));
    const pts: string[] = [];
    for (let k = 0; k < n; k += step) pts.push(`${x(s.values[k]!).toFixed(1)},${y((k + 1) / n).toFixed(1)}`);
    parts.push(`<polyline fill="none" stroke="${s.colour}" stroke-width="2" points="${pts.join(" ")}"/>`);
    const ly = H - M.bottom - 10 - (series.length - i) * 18;
    parts.push(
      `<line x1="${legendX}" x2="${legendX + 25}" y1="${ly - 4}" y2="${ly - 4}" stroke="${s.colour}" stroke-width="3"/>`,
    );
    parts.push(`<text x="${legendX + 32}" y="${ly}">${s.label}</text>`);
  });
  parts.push(`</svg>`);
  return parts.join("\n") + "\n";
}

/** A sorted pseudo-sample from wrk's percentiles (piecewise linear), for the CDF chart. */
export function fromPercentiles(latency: Record<string, number>): number[] {
  const points = Object.entries(latency)
    .map(([q, v]) => [Number(q) / 100, v] as const)
    .sort((a, b) => a[0] - b[0]);
  const out: number[] = [];
  for (let k = 1; k <= 1000; k++) {
    const q = k / 1000;
    const hi = points.findIndex(([pq]) => pq >= q);
    if (hi <= 0) out.push(points[hi === 0 ? 0 : points.length - 1]![1]);
    else {
      const [q0, v0] = points[hi - 1]!;
      const [q1, v1] = points[hi]!;
      out.push(v0 + ((v1 - v0) * (q - q0)) / (q1 - q0));
    }
  }
  return out;
}

/** One group of bars: a value per category (undefined: not measured, no bar). */
export interface BarSeries {
  readonly label: string;
  readonly colour: string;
  readonly values: ReadonlyArray<number | undefined>;
}

/** Horizontal grouped bars, one group per category (its label on the left), values printed at the ends. */
export function barChart(
  title: string,
  xLabel: string,
  categories: readonly string[],
  series: readonly BarSeries[],
): string {
  const left = 30 + Math.max(...categories.map((c) => c.length)) * 6.6;
  const bar = 16;
  const group = series.length * bar + 14;
  const legend = series.length * 18 + 10;
  const height = M.top + categories.length * group + legend + M.bottom;
  const all = series.flatMap((s) => s.values.filter((v): v is number => v !== undefined));
  const xMax = Math.max(1, ...all) * 1.12;
  const x = (v: number) => left + (v / xMax) * (W - left - M.right);
  const bottom = height - M.bottom - legend;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${title}</text>`,
  ];
  for (const t of niceTicks(xMax)) {
    parts.push(`<line x1="${x(t)}" x2="${x(t)}" y1="${M.top}" y2="${bottom}" stroke="#eee"/>`);
    parts.push(`<text x="${x(t)}" y="${bottom + 18}" text-anchor="middle">${t}</text>`);
  }
  parts.push(
    `<text x="${(left + W - M.right) / 2}" y="${bottom + 40}" text-anchor="middle">${xLabel}</text>`,
  );
  categories.forEach((c, i) => {
    const top = M.top + i * group + 7;
    parts.push(
      `<text x="${left - 8}" y="${top + (series.length * bar) / 2 + 4}" text-anchor="end">${c}</text>`,
    );
    series.forEach((s, k) => {
      const v = s.values[i];
      const y = top + k * bar;
      if (v === undefined) {
        parts.push(`<text x="${left + 4}" y="${y + bar - 4}" fill="#888">not measured</text>`);
        return;
      }
      parts.push(
        `<rect x="${left}" y="${y}" width="${(x(v) - left).toFixed(1)}" height="${bar - 2}" fill="${s.colour}"/>`,
      );
      parts.push(
        `<text x="${(x(v) + 4).toFixed(1)}" y="${y + bar - 4}">${Math.round(v).toLocaleString("en")}</text>`,
      );
    });
  });
  series.forEach((s, k) => {
    const ly = bottom + 58 + k * 18;
    parts.push(`<rect x="${left}" y="${ly - 10}" width="25" height="10" fill="${s.colour}"/>`);
    parts.push(`<text x="${left + 32}" y="${ly}">${s.label}</text>`);
  });
  parts.push(`</svg>`);
  return parts.join("\n") + "\n";
}
