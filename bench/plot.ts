/**
 * A dependency-free SVG line chart: latency distributions (CDFs) side by side, so a reader sees
 * the whole shape of both curves instead of reading two percentiles.
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

export function cdfChart(
  title: string,
  xLabel: string,
  series: readonly Series[],
  clipQuantile = 0.99,
): string {
  const xMax =
    Math.max(...series.map((s) => s.values[Math.floor((s.values.length - 1) * clipQuantile)] ?? 0)) * 1.05;
  const x = (v: number) => M.left + (Math.min(v, xMax) / xMax) * (W - M.left - M.right);
  const y = (q: number) => H - M.bottom - q * (H - M.top - M.bottom);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${title}</text>`,
  ];
  for (const t of niceTicks(xMax)) {
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
