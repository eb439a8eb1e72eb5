// The server's log: plain lines or JSON lines on stderr, one per event, written synchronously so
// nothing is lost when the process exits right after.

export type LogLevel = "info" | "warn" | "error";
export type Logger = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void;

/** sd-daemon(3) priority prefixes, which journald strips and turns into the entry's priority. */
const JOURNAL_PRIORITY: Record<LogLevel, string> = { error: "<3>", warn: "<4>", info: "<6>" };

function formatField(value: unknown): string {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return /^[^\s"=]+$/.test(text) ? text : JSON.stringify(text);
}

export interface LoggerOptions {
  /** Where lines go (default: stderr). */
  write?: (line: string) => void;
  /** Prefix text lines with journald priorities (default: when JOURNAL_STREAM is set). */
  isJournal?: boolean;
}

/**
 * A logger. Text: `warn: message key=value …` (or `<4>message key=value` under journald).
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
  if (format === "json") {
    return (level, msg, fields = {}) =>
      write(`${JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields })}\n`);
  }
  return (level, msg, fields = {}) => {
    const pairs = Object.entries(fields)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => ` ${k}=${formatField(v)}`)
      .join("");
    const prefix = isJournal ? JOURNAL_PRIORITY[level] : `${level}: `;
    write(`${prefix}${msg.replaceAll("\n", " ")}${pairs}\n`);
  };
}
