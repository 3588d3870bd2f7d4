/** How the CLI shows call records and log lines (`fennec calls ls`, `fennec logs`). */

/** The fields of a record the table shows (GET /system/calls leaves unset ones out). */
export interface CallRow {
  readonly id: string;
  readonly function: string;
  readonly kind: string;
  readonly state: string;
  readonly attempt: number;
  readonly submittedAt: number;
  readonly startType?: string;
  readonly execMs?: number;
  readonly status?: number;
  readonly errorCode?: string;
}

/** A readable table, newest first as the server sends them. */
export function callTable(rows: readonly CallRow[]): string {
  const lines = rows.map((r) => [
    r.id,
    r.function,
    r.kind,
    r.state,
    // What a reader wants first: the error's code when there is one, else the function's status.
    r.errorCode ?? (r.status === undefined ? "-" : String(r.status)),
    r.startType ?? "-",
    r.execMs === undefined ? "-" : `${r.execMs.toFixed(1)} ms`,
    String(r.attempt),
    new Date(r.submittedAt).toISOString(),
  ]);
  const head = ["ID", "FUNCTION", "KIND", "STATE", "RESULT", "START", "EXEC", "ATTEMPT", "SUBMITTED"];
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const format = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return [format(head), ...lines.map(format)].join("\n") + "\n";
}

/** One line of GET /system/logs (OpenFaaS's shape, plus the call and the stream). */
export interface LogMessage {
  readonly name: string;
  readonly namespace: string;
  readonly instance: string;
  readonly timestamp: string;
  readonly text: string;
  readonly callId?: string;
  readonly stream?: string;
}

/** `TIME CALL TEXT`, the call `-` when the line could not be told apart (see docs/architecture.md). */
export function logLine(m: LogMessage): string {
  return `${m.timestamp} ${m.callId ?? "-"} ${m.text}\n`;
}

/** Calls `onLine` with each line of a newline-delimited body as it arrives. */
export async function eachLine(body: ReadableStream<Uint8Array>, onLine: (line: string) => void): Promise<void> {
  const decoder = new TextDecoder();
  let rest = "";
  const reader = body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    rest += decoder.decode(value, { stream: true });
    let nl: number;
    while ((nl = rest.indexOf("\n")) >= 0) {
      const line = rest.slice(0, nl);
      rest = rest.slice(nl + 1);
      if (line.trim() !== "") onLine(line);
    }
  }
  rest += decoder.decode();
  if (rest.trim() !== "") onLine(rest);
}
