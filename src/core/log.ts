/** Minimal levelled logger writing one line per event to stderr; quiet in tests unless asked. */
export type LogLevel = "error" | "warn" | "info" | "debug";
const ORDER: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

export interface Logger {
  error(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  debug(msg: string, fields?: Record<string, unknown>): void;
}

export function createLogger(
  level: LogLevel | "silent" = "info",
  write = (line: string) => process.stderr.write(line),
): Logger {
  const max = level === "silent" ? -1 : ORDER[level];
  const emit = (lvl: LogLevel, msg: string, fields?: Record<string, unknown>) => {
    if (ORDER[lvl] > max) return;
    const extra = fields && Object.keys(fields).length > 0 ? " " + JSON.stringify(fields) : "";
    write(`${new Date().toISOString()} ${lvl.padEnd(5)} ${msg}${extra}\n`);
  };
  return {
    error: (m, f) => emit("error", m, f),
    warn: (m, f) => emit("warn", m, f),
    info: (m, f) => emit("info", m, f),
    debug: (m, f) => emit("debug", m, f),
  };
}
