// One log line per request (--log-level info): its id, route, status, prompt and output tokens,
// queue time, time to first token, duration and finish reason (and with speculative decoding, the
// tokens proposed and the fraction accepted). A generation run fills in its part
// through the RunStats registered for its Request; a stream's line is written when its run ends.

/** What a generation run tells the request log. */
export interface RunStats {
  id?: string;
  promptTokens: number;
  outputTokens: number;
  queueMs?: number;
  ttftMs?: number;
  finishReasons: string[];
  /** Speculative decoding: tokens proposed and accepted over the run's sequences. */
  numDraftTokens?: number;
  numAcceptedTokens?: number;
  isEnded: boolean;
  /** Set by the request log while a stream is still running: called once the run ends. */
  onEnd?: () => void;
}

/** The fields of a request's log line. */
export interface RequestLogFields {
  id?: string;
  method: string;
  route: string;
  status: number;
  prompt_tokens?: number;
  output_tokens?: number;
  queue_ms?: number;
  ttft_ms?: number;
  duration_ms: number;
  finish_reason?: string;
  spec_draft_tokens?: number;
  /** Accepted over proposed tokens, when anything was proposed. */
  spec_acceptance?: number;
}

const statsByRequest = new WeakMap<Request, RunStats>();

/** The RunStats of `request` (created on first use), for the GenerationRun serving it. */
export function runStatsFor(request: Request): RunStats {
  let stats = statsByRequest.get(request);
  if (stats === undefined) {
    stats = { promptTokens: 0, outputTokens: 0, finishReasons: [], isEnded: false };
    statsByRequest.set(request, stats);
  }
  return stats;
}

/** The RunStats a run registered for `request`, if any. */
export function peekRunStats(request: Request): RunStats | undefined {
  return statsByRequest.get(request);
}

/** Routes polled often enough that a line each would drown the rest: logged at debug. */
export const QUIET_ROUTES = new Set(["/health", "/metrics"]);

function round(ms: number | undefined): number | undefined {
  return ms === undefined ? undefined : Math.round(ms * 10) / 10;
}

/** The log line's fields once the response (and its run, if any) is done. */
export function requestLogFields(
  request: Request,
  route: string,
  status: number,
  startMs: number,
): RequestLogFields {
  const stats = statsByRequest.get(request);
  const reasons = [...new Set(stats?.finishReasons ?? [])];
  return {
    ...(stats?.id === undefined ? {} : { id: stats.id }),
    method: request.method,
    route,
    status,
    ...(stats === undefined ? {} : {
      prompt_tokens: stats.promptTokens,
      output_tokens: stats.outputTokens,
      queue_ms: round(stats.queueMs),
      ttft_ms: round(stats.ttftMs),
    }),
    duration_ms: round(performance.now() - startMs)!,
    ...(reasons.length === 0 ? {} : { finish_reason: reasons.join(",") }),
    ...(stats?.numDraftTokens
      ? {
        spec_draft_tokens: stats.numDraftTokens,
        spec_acceptance: Math.round((stats.numAcceptedTokens ?? 0) / stats.numDraftTokens * 1000) /
          1000,
      }
      : {}),
  };
}
