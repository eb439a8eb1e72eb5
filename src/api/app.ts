// The OpenAI-compatible HTTP API as a Hono app: routes, bearer auth, and the one error handler
// that turns every failure into OpenAI's error JSON.
import { Hono } from "hono";
import { handleChat } from "./chat.ts";
import { handleCompletion } from "./completions.ts";
import { handleEmbeddings } from "./embeddings.ts";
import type { ApiDeps } from "./deps.ts";
import { withBodyDeadline } from "./body.ts";
import { ApiError, errorResponse, toApiError } from "./errors.ts";
import { InflightTracker } from "./inflight.ts";
import { PROMETHEUS_CONTENT_TYPE } from "./metrics.ts";
import { peekRunStats, QUIET_ROUTES, requestLogFields } from "./request_log.ts";
import { handleDetokenize, handleTokenize } from "./tokenize.ts";

export type { ApiDeps } from "./deps.ts";
export type { EngineClient } from "./generation.ts";
export { InflightTracker } from "./inflight.ts";

/** The methods each route answers, for 405 and its Allow header. */
const ROUTES: Record<string, string> = {
  "/health": "GET",
  "/version": "GET",
  "/metrics": "GET",
  "/v1/models": "GET",
  "/v1/completions": "POST",
  "/v1/chat/completions": "POST",
  "/v1/embeddings": "POST",
  "/tokenize": "POST",
  "/detokenize": "POST",
};

/** The request headers a cross-origin page may send (the OpenAI clients send these). */
const CORS_ALLOW_HEADERS = "Authorization, Content-Type, OpenAI-Organization, OpenAI-Project, " +
  "X-Request-Id, X-Stainless-Arch, X-Stainless-Lang, X-Stainless-OS, X-Stainless-Package-Version, " +
  "X-Stainless-Retry-Count, X-Stainless-Runtime, X-Stainless-Runtime-Version, X-Stainless-Timeout";

/** The Access-Control-Allow-Origin value for `origin`, or undefined when it is not allowed. */
function corsOrigin(allowed: readonly string[], origin: string | undefined): string | undefined {
  if (origin === undefined) return undefined;
  if (allowed.includes("*")) return "*";
  return allowed.includes(origin) ? origin : undefined;
}

/** Routes that stay open when an API key is set: probes and scrapers carry no key. */
const OPEN_ROUTES = new Set(["/health", "/metrics"]);

function allowedMethods(path: string): string | undefined {
  if (path.startsWith("/v1/models/") && path.length > "/v1/models/".length) return "GET";
  return ROUTES[path];
}

async function sha256(text: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
}

/**
 * Compares the key a client sent with ours in time independent of where they differ: both are
 * hashed first, so neither the content nor the length of our key leaks through timing.
 */
function makeKeyCheck(apiKey: string): (candidate: string) => Promise<boolean> {
  const expected = sha256(apiKey);
  return async (candidate) => {
    const [a, b] = await Promise.all([expected, sha256(candidate)]);
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
    return diff === 0;
  };
}

/** The app the server serves, and the tracker of its generation requests for shutdown. */
export function createApp(deps: ApiDeps): { app: Hono; inflight: InflightTracker } {
  const app = new Hono();
  const inflight = new InflightTracker({
    maxQueuedPromptTokens: deps.maxQueuedPromptTokens,
    maxQueueDelayMs: deps.maxQueueDelayMs,
  });
  const createdSeconds = Math.floor(Date.now() / 1000);
  const isKeyValid = deps.apiKey === undefined ? undefined : makeKeyCheck(deps.apiKey);
  const allowedOrigins = deps.allowedOrigins ?? [];
  const requestLog = deps.requestLog;

  if (requestLog !== undefined) {
    // Outermost, so refusals (CORS, auth, 4xx) get their line too.
    app.use(async (c, next) => {
      const startMs = performance.now();
      await next();
      const request = c.req.raw;
      const route = c.req.path;
      const status = c.res.status;
      const level = QUIET_ROUTES.has(route) ? "debug" : "info";
      const emit = () => requestLog(level, requestLogFields(request, route, status, startMs));
      const stats = peekRunStats(request);
      if (stats !== undefined && !stats.isEnded) stats.onEnd = emit;
      else emit();
    });
  }

  if (allowedOrigins.length > 0) {
    // Before auth: a browser's preflight carries no Authorization header.
    app.use(async (c, next) => {
      const origin = corsOrigin(allowedOrigins, c.req.header("origin"));
      const isPreflight = c.req.method === "OPTIONS" &&
        c.req.header("access-control-request-method") !== undefined;
      if (isPreflight) {
        const allowed = allowedMethods(c.req.path);
        if (origin === undefined || allowed === undefined) {
          return errorResponse(
            new ApiError(403, "This origin or route is not allowed to make cross-origin requests", {
              code: "cors_forbidden",
            }),
          );
        }
        return new Response(null, {
          status: 204,
          headers: {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": `${allowed}, OPTIONS`,
            "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
            "Access-Control-Max-Age": "600",
            Vary: "Origin",
          },
        });
      }
      await next();
      if (origin !== undefined) {
        c.res.headers.set("Access-Control-Allow-Origin", origin);
        c.res.headers.set("Access-Control-Expose-Headers", "X-Request-Id, Retry-After");
        c.res.headers.append("Vary", "Origin");
      }
    });
  }

  if (deps.bodyTimeoutMs !== undefined) {
    const timeoutMs = deps.bodyTimeoutMs;
    app.use(async (c, next) => {
      if (c.req.raw.body === null) return await next();
      const deadline = withBodyDeadline(c.req.raw, timeoutMs);
      c.req.raw = deadline.request;
      try {
        await next();
      } finally {
        deadline.dispose();
      }
    });
  }

  app.use(async (c, next) => {
    await next();
    deps.metrics.httpResponses.inc(1, { status: String(c.res.status) });
  });

  app.use(async (c, next) => {
    if (isKeyValid === undefined || OPEN_ROUTES.has(c.req.path)) return await next();
    const header = c.req.header("authorization") ?? "";
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    const headers = { "WWW-Authenticate": "Bearer" };
    if (match === null) {
      throw new ApiError(
        401,
        "You didn't provide an API key; send it in the Authorization header as 'Bearer <key>'",
        { code: "invalid_api_key", headers },
      );
    }
    if (!(await isKeyValid(match[1]))) {
      throw new ApiError(401, "Incorrect API key provided", { code: "invalid_api_key", headers });
    }
    await next();
  });

  app.get("/health", (c) => {
    if (deps.getEngine() === undefined) {
      return c.json({ status: "loading" }, 503, { "Retry-After": "5" });
    }
    return c.json({ status: "ok" });
  });

  app.get("/version", (c) => c.json({ version: deps.version }));

  app.get("/metrics", () => {
    const engine = deps.getEngine();
    if (engine !== undefined) deps.metrics.updateFromEngine(engine.stats);
    return new Response(deps.metrics.render(), {
      headers: { "Content-Type": PROMETHEUS_CONTENT_TYPE },
    });
  });

  const modelCard = () => ({
    id: deps.servedModelName,
    object: "model",
    created: createdSeconds,
    owned_by: "denollm",
    root: deps.servedModelName,
    parent: null,
    max_model_len: deps.getEngine()?.maxModelLen ?? null,
    ...(deps.modelNotice === undefined ? {} : { notice: deps.modelNotice }),
  });

  app.get("/v1/models", (c) => c.json({ object: "list", data: [modelCard()] }));

  app.get("/v1/models/*", (c) => {
    // Model names may contain slashes ("org/name"), so the rest of the path is the name.
    const raw = c.req.path.slice("/v1/models/".length);
    let name: string;
    try {
      name = decodeURIComponent(raw);
    } catch {
      name = raw;
    }
    if (name !== deps.servedModelName) {
      throw new ApiError(404, `The model \`${name}\` does not exist`, {
        param: "model",
        code: "model_not_found",
      });
    }
    return c.json(modelCard());
  });

  app.post("/v1/completions", (c) => handleCompletion(c.req.raw, deps, inflight));
  app.post("/v1/chat/completions", (c) => handleChat(c.req.raw, deps, inflight));
  app.post("/v1/embeddings", (c) => handleEmbeddings(c.req.raw, deps, inflight));
  app.post("/tokenize", (c) => handleTokenize(c.req.raw, deps));
  app.post("/detokenize", (c) => handleDetokenize(c.req.raw, deps));

  app.notFound((c) => {
    const allowed = allowedMethods(c.req.path);
    if (allowed !== undefined) {
      return errorResponse(
        new ApiError(405, `Method ${c.req.method} is not allowed for ${c.req.path}`, {
          headers: { Allow: allowed },
        }),
      );
    }
    return errorResponse(
      new ApiError(404, `Invalid URL (${c.req.method} ${c.req.path})`, { code: "unknown_url" }),
    );
  });

  app.onError((error) => errorResponse(toApiError(error, deps.log)));
  return { app, inflight };
}
