// The server's log: plain lines or JSON lines on stderr, one per event, written synchronously so
// nothing is lost when the process exits right after.

export type LogLevel = "debug" | "info" | "warn" | "error";
export type Logger = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void;

/** sd-daemon(3) priority prefixes, which journald strips and turns into the entry's priority. */
const JOURNAL_PRIORITY: Record<LogLevel, string> = {
  error: "<3>",
  warn: "<4>",
  info: "<6>",
  debug: "<7>",
};

const SEVERITY: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

function formatField(value: unknown): string {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return /^[^\s"=]+$/.test(text) ? text : JSON.stringify(text);
}

export interface LoggerOptions {
  /** Where lines go (default: stderr). */
  write?: (line: string) => void;
  /** Prefix text lines with journald priorities (default: when JOURNAL_STREAM is set). */
  isJournal?: boolean;
  /** The least severe level written (default info; --log-level). */
  level?: LogLevel;
  /** Start text lines with an ISO timestamp (not under journald, which stamps them itself). */
  timestamps?: boolean;
}

/**
 * A logger. Text: `[2026-01-02T03:04:05.678Z ]warn: message key=value …` (or `<4>message key=value` under journald).
 * JSON: `{"time":…,"level":…,"msg":…,…fields}`.
 */
export function createLogger(format: "text" | "json", options: LoggerOptions = {}): Logger {
  const encoder = new TextEncoder();
  const write = options.write ?? ((line: string) => {
    const bytes = encoder.encode(line);
    let offset = 0;
    while (offset < bytes.length) offset += Deno.stderr.writeSync(bytes.subarray(offset));
  });
  const isJournal = options.isJournal ?? Deno.env.get("JOURNAL_STREAM") !== undefined;
  const least = SEVERITY[options.level ?? "info"];
  if (format === "json") {
    return (level, msg, fields = {}) => {
      if (SEVERITY[level] < least) return;
      write(`${JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields })}\n`);
    };
  }
  return (level, msg, fields = {}) => {
    if (SEVERITY[level] < least) return;
    const pairs = Object.entries(fields)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => ` ${k}=${formatField(v)}`)
      .join("");
    const prefix = isJournal
      ? JOURNAL_PRIORITY[level]
      : `${options.timestamps ? `${new Date().toISOString()} ` : ""}${level}: `;
    write(`${prefix}${msg.replaceAll("\n", " ")}${pairs}\n`);
  };
}
