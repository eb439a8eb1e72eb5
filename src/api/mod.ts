// The HTTP API's public surface.
export { createApp } from "./app.ts";
export type { ApiDeps, LogLevel } from "./deps.ts";
export { ApiError, type ErrorBody } from "./errors.ts";
export type { EngineClient } from "./generation.ts";
export { InflightTracker } from "./inflight.ts";
export {
  Counter,
  Gauge,
  Histogram,
  Metrics,
  PROMETHEUS_CONTENT_TYPE,
  Registry,
} from "./metrics.ts";
