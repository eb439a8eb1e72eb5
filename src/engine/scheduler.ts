// Decides, each step, which requests run and how many of their tokens: a token budget handed to
// running requests first, then waiting ones (vLLM v1's rule: no separate prefill and decode
// phases, every request just catches its computed tokens up with its known tokens).
import { RequestTooLongError } from "../errors.ts";
import type { BlockCopy, KvCacheManager } from "./kv_cache_manager.ts";
import type { EngineRequest } from "./request.ts";

export interface SchedulerConfig {
  /** Token budget of one step (prefill chunks plus decode tokens). */
  maxNumBatchedTokens: number;
  /** Most requests running at once. */
  maxNumSeqs: number;
  /**
   * Most token rows that get logits in one step: one per sampling request, and every prompt row
   * of a request that wants prompt logprobs (its prefill is chunked to fit). Default and minimum:
   * min(maxNumSeqs, maxNumBatchedTokens).
   */
  maxNumLogitRows?: number;
  /** Longest prompt + output a request may have. */
  maxModelLen: number;
  /** Split long prompts across steps so prefill and decode share a step. Default true. */
  enableChunkedPrefill?: boolean;
  /** "fcfs" (default) or "priority": the order waiting requests are admitted in. */
  policy?: "fcfs" | "priority";
  /**
   * "continuous" (default): in-flight batching. "static": the baseline — fixed batches that run
   * until their longest member finishes, with KV for maxModelLen tokens reserved per member.
   */
  mode?: "continuous" | "static";
}

/** One request's share of a step, as plain data: it can be sent to another thread or rank. */
export interface ScheduledRequest {
  requestId: string;
  /** Position of the first new token. */
  start: number;
  numNewTokens: number;
  /** The tokens at positions [start, start + numNewTokens). */
  tokenIds: number[];
  /**
   * Speculative decoding: the last this many tokens are proposals, not yet the request's; every
   * row from the last real token on gets logits (numLogitRows is 1 + this), and only the KV of
   * the accepted ones is kept. Absent or 0 for a plain share.
   */
  numDraftTokens?: number;
  /** The request's KV block table, covering at least its first start + numNewTokens positions. */
  blockIds: number[];
  /** Whether this step reaches the end of its known tokens, so a token is sampled. */
  sample: boolean;
  /**
   * How many of the last rows of this share get logits: all of them for a prompt-logprobs chunk,
   * else 1 when `sample`, else 0. When `sample`, the last of them is the one sampled from.
   */
  numLogitRows: number;
  /**
   * An embedding request's share: its logit rows need only their final-norm hidden states, not
   * the LM head. Such shares come last in a step, so their rows are the last logit rows.
   */
  isPooling?: true;
}

/** Everything the executor needs for a step; the only thing crossing that boundary. */
export interface SchedulerOutput {
  scheduled: ScheduledRequest[];
  numBatchedTokens: number;
  /** KV block copies (copy-on-write) to do before the forward pass. */
  blockCopies: BlockCopy[];
  /** Ids of the requests preempted (by recompute) this step. */
  preemptedIds: string[];
}

// Re-exported for the scheduler's callers; src/errors.ts holds the one class.
export { RequestTooLongError };

export class Scheduler {
  readonly config: Required<SchedulerConfig>;
  #kv: KvCacheManager;
  #waiting: EngineRequest[] = [];
  #running: EngineRequest[] = [];
  /** Running requests by id, for `commit`, which receives plain data. */
  #runningById = new Map<string, EngineRequest>();
  #numPreemptions = 0;

  constructor(config: SchedulerConfig, kv: KvCacheManager) {
    for (const key of ["maxNumBatchedTokens", "maxNumSeqs", "maxModelLen"] as const) {
      if (!Number.isInteger(config[key]) || config[key] <= 0) {
        throw new RangeError(`${key} must be a positive integer, got ${config[key]}`);
      }
    }
    const minLogitRows = Math.min(config.maxNumSeqs, config.maxNumBatchedTokens);
    this.config = {
      enableChunkedPrefill: true,
      policy: "fcfs",
      mode: "continuous",
      ...config,
      maxNumLogitRows: config.maxNumLogitRows ?? minLogitRows,
    };
    const rows = this.config.maxNumLogitRows;
    if (!Number.isInteger(rows) || rows < minLogitRows) {
      throw new RangeError(
        `maxNumLogitRows must be an integer of at least min(maxNumSeqs, maxNumBatchedTokens) = ` +
          `${minLogitRows}, got ${rows}`,
      );
    }
    if (!this.config.enableChunkedPrefill && config.maxNumBatchedTokens < config.maxModelLen) {
      throw new RangeError(
        `Without chunked prefill, maxNumBatchedTokens (${config.maxNumBatchedTokens}) must be at ` +
          `least maxModelLen (${config.maxModelLen}) so any prompt fits one step`,
      );
    }
    if (this.config.mode === "static" && kv.numUsableBlocks * kv.blockSize < config.maxModelLen) {
      throw new RangeError(
        `Static batching reserves maxModelLen (${config.maxModelLen}) tokens per request, more ` +
          `than the whole KV cache (${kv.numUsableBlocks * kv.blockSize} tokens)`,
      );
    }
    this.#kv = kv;
  }

  get numWaiting(): number {
    return this.#waiting.length;
  }

  get numRunning(): number {
    return this.#running.length;
  }

  get numPreemptions(): number {
    return this.#numPreemptions;
  }

  /** Tokens whose KV the running requests hold: what allocated KV slots are actually used for. */
  get numComputedTokens(): number {
    return this.#running.reduce((n, r) => n + r.numComputedTokens, 0);
  }

  get hasWork(): boolean {
    return this.#waiting.length > 0 || this.#running.length > 0;
  }

  /** Blocks a request needs at its maximum length. */
  #blocksFor(numTokens: number): number {
    return Math.ceil(numTokens / this.#kv.blockSize);
  }

  /** Admits a request to the waiting queue, refusing one that could never run. */
  add(request: EngineRequest): void {
    const maxLen = request.numPromptTokens + request.params.maxTokens;
    if (maxLen > this.config.maxModelLen) {
      throw new RequestTooLongError(
        `This request needs ${maxLen} tokens (${request.numPromptTokens} in the prompt + ` +
          `${request.params.maxTokens} max_tokens), more than the maximum context length of ` +
          `${this.config.maxModelLen}`,
      );
    }
    const needed = this.#blocksFor(maxLen);
    if (needed > this.#kv.numUsableBlocks) {
      throw new RequestTooLongError(
        `This request needs ${needed} KV blocks (${maxLen} tokens) but the whole cache has ` +
          `${this.#kv.numUsableBlocks}`,
      );
    }
    this.#insertWaiting(request);
  }

  /** Puts an already-computed request straight into the running set (a forked n > 1 sample). */
  addRunning(request: EngineRequest): void {
    request.status = "running";
    this.#running.push(request);
    this.#runningById.set(request.id, request);
  }

  #insertWaiting(request: EngineRequest, atFront = false): void {
    request.status = "waiting";
    if (atFront) {
      this.#waiting.unshift(request);
    } else {
      this.#waiting.push(request);
    }
    if (this.config.policy === "priority") {
      this.#waiting.sort((a, b) => a.priority - b.priority || a.arrival - b.arrival);
    }
  }

  /** Removes a request wherever it is and frees its KV blocks at once. */
  remove(request: EngineRequest): void {
    this.#waiting = this.#waiting.filter((r) => r !== request);
    this.#running = this.#running.filter((r) => r !== request);
    this.#runningById.delete(request.id);
    this.#kv.free(request.id);
  }

  /** The running request to preempt: lowest priority (highest value), then newest. */
  #pickVictim(): EngineRequest | undefined {
    let victim: EngineRequest | undefined;
    for (const r of this.#running) {
      if (
        victim === undefined || r.priority > victim.priority ||
        (r.priority === victim.priority && r.arrival > victim.arrival)
      ) {
        victim = r;
      }
    }
    return victim;
  }

  /** Preemption by recompute: drop the KV, keep the tokens, requeue at the front. */
  #preempt(victim: EngineRequest, preempted: EngineRequest[]): void {
    this.#running = this.#running.filter((r) => r !== victim);
    this.#runningById.delete(victim.id);
    this.#kv.free(victim.id);
    victim.numComputedTokens = 0;
    victim.numPreemptions++;
    this.#numPreemptions++;
    preempted.push(victim);
    this.#insertWaiting(victim, true);
  }

  schedule(): SchedulerOutput {
    // Requests, not plain shares, until the end: block tables are read once allocation is done.
    const scheduled: {
      request: EngineRequest;
      start: number;
      numNewTokens: number;
      numDraft: number;
    }[] = [];
    const preempted: EngineRequest[] = [];
    let budget = this.config.maxNumBatchedTokens;
    let rowBudget = this.config.maxNumLogitRows;
    const chunk = (request: EngineRequest, start: number, numOthers: number) => {
      const remaining = request.numTokens - start;
      if (!request.needsPromptRows || start >= request.numPromptTokens) {
        return this.config.enableChunkedPrefill ? Math.min(remaining, budget) : remaining;
      }
      // Every row of a prompt-logprobs chunk gets logits, so the chunk fits the rows left after
      // one for each running request still to schedule (`numOthers`), and stops at the prompt's
      // end (after a preemption the known tokens run past it; those rows need no logits).
      const rows = Math.max(0, rowBudget - numOthers);
      return Math.min(request.numPromptTokens - start, budget, rows);
    };
    const rowsOf = (request: EngineRequest, start: number, numNew: number) => {
      if (request.needsPromptRows && start < request.numPromptTokens) return numNew;
      return start + numNew === request.numTokens ? 1 : 0;
    };

    // Running requests first, in admission order, so older requests keep making progress.
    const running = [...this.#running].sort((a, b) => a.arrival - b.arrival);
    for (const request of running) {
      // n > 1 samples join the running set without admission, so the cap is checked here too:
      // the executor's buffers are sized for at most maxNumSeqs sequences a step.
      if (budget === 0 || scheduled.length >= this.config.maxNumSeqs) break;
      if (!this.#running.includes(request)) continue; // preempted earlier in this loop
      const numOthers = Math.max(0, this.#running.length - 1 - scheduled.length);
      const numNew = chunk(request, request.numComputedTokens, numOthers);
      if (numNew === 0 || numNew > budget) continue;
      const numRows = rowsOf(request, request.numComputedTokens, numNew);
      if (numRows > rowBudget) continue;
      // A decoding request's proposals ride along if the token and row budgets have room; they
      // never cost anyone else their place, so a short pool drops them before preempting.
      const isDecoding = request.numComputedTokens === request.numTokens - 1;
      let numDraft = isDecoding
        ? Math.min(request.draftTokenIds.length, budget - numNew, rowBudget - numRows)
        : 0;
      let allocated = this.#kv.allocateSlots(request, numNew + numDraft);
      if (!allocated && numDraft > 0) {
        numDraft = 0;
        allocated = this.#kv.allocateSlots(request, numNew);
      }
      while (!allocated) {
        const victim = this.#pickVictim()!;
        this.#preempt(victim, preempted);
        if (victim === request) break;
        // A lower-priority request may already have its share of this step: take it back.
        const at = scheduled.findIndex((s) => s.request === victim);
        if (at !== -1) budget += scheduled.splice(at, 1)[0].numNewTokens;
        allocated = this.#kv.allocateSlots(request, numNew);
      }
      if (!allocated) continue;
      scheduled.push({
        request,
        start: request.numComputedTokens,
        numNewTokens: numNew + numDraft,
        numDraft,
      });
      budget -= numNew + numDraft;
      rowBudget -= numRows + numDraft;
    }

    // Then waiting requests, unless this step had to preempt (memory is short).
    const isStatic = this.config.mode === "static";
    const canAdmit = preempted.length === 0 && (!isStatic || this.#running.length === 0);
    while (canAdmit && this.#waiting.length > 0 && budget > 0) {
      if (this.#running.length >= this.config.maxNumSeqs) break;
      if (scheduled.length >= this.config.maxNumSeqs) break;
      const request = this.#waiting[0];
      // A cached prefix has K/V but no logits: prompt logprobs need every prompt row computed.
      const cached = request.needsPromptRows ? undefined : this.#kv.findCachedPrefix(request);
      const numCached = cached?.numTokens ?? 0;
      const numNew = chunk(request, numCached, 0);
      if (numNew === 0 || numNew > budget) break;
      const numRows = rowsOf(request, numCached, numNew);
      if (numRows > rowBudget) break;
      // The static baseline reserves KV for the maximum length up front, as servers without
      // paging must: they cannot know how long the output will be.
      const reserve = isStatic ? this.config.maxModelLen - numCached : numNew;
      if (!this.#kv.allocateSlots(request, reserve, cached)) break;
      this.#waiting.shift();
      request.numComputedTokens = numCached;
      this.addRunning(request);
      scheduled.push({
        request,
        start: request.numComputedTokens,
        numNewTokens: numNew,
        numDraft: 0,
      });
      budget -= numNew;
      rowBudget -= numRows;
    }

    return {
      scheduled: scheduled.map((s) => this.#share(s.request, s.start, s.numNewTokens, s.numDraft))
        .sort((a, b) => Number(a.isPooling ?? false) - Number(b.isPooling ?? false)),
      numBatchedTokens: this.config.maxNumBatchedTokens - budget,
      blockCopies: this.#kv.takePendingCopies(),
      preemptedIds: preempted.map((r) => r.id),
    };
  }

  #share(
    request: EngineRequest,
    start: number,
    numNewTokens: number,
    numDraft: number,
  ): ScheduledRequest {
    const sample = start + numNewTokens - numDraft === request.numTokens;
    const allRows = request.needsPromptRows && start < request.numPromptTokens;
    const tokenIds = request.tokenIds.slice(start, start + numNewTokens);
    if (numDraft > 0) tokenIds.push(...request.draftTokenIds.slice(0, numDraft));
    return {
      requestId: request.id,
      start,
      numNewTokens,
      tokenIds,
      ...(numDraft > 0 ? { numDraftTokens: numDraft } : {}),
      blockIds: this.#kv.blockTable(request.id),
      sample,
      numLogitRows: allRows ? numNewTokens : sample ? 1 + numDraft : 0,
      ...(request.params.pooling === undefined ? {} : { isPooling: true as const }),
    };
  }

  /** A running request by id: the engine maps a step's plain data back to its requests. */
  runningRequest(id: string): EngineRequest {
    const request = this.#runningById.get(id);
    if (request === undefined) throw new RangeError(`Request ${id} is not running`);
    return request;
  }

  /**
   * After the forward pass: the scheduled tokens now have KV. Proposed tokens are not the
   * request's yet, so they are left out until `acceptDrafts` says how many were accepted.
   */
  commit(output: SchedulerOutput): void {
    for (const s of output.scheduled) {
      const request = this.runningRequest(s.requestId);
      request.numComputedTokens = s.start + s.numNewTokens - (s.numDraftTokens ?? 0);
      this.#kv.commitComputed(request, request.numComputedTokens);
    }
  }

  /**
   * After verification, once the accepted drafts are appended to the request's tokens: their KV
   * counts as computed (full blocks of them may enter the prefix cache), and the rejected ones'
   * slots are dropped, blocks past the computed tokens going back to the pool.
   */
  acceptDrafts(request: EngineRequest, numAccepted: number): void {
    const numComputed = request.numComputedTokens + numAccepted;
    if (!Number.isInteger(numAccepted) || numAccepted < 0 || numComputed >= request.numTokens) {
      throw new RangeError(
        `Expected accepted drafts leaving the last token of ${request.id} uncomputed ` +
          `(at most ${request.numTokens - 1 - request.numComputedTokens}), got ${numAccepted}`,
      );
    }
    request.numComputedTokens = numComputed;
    this.#kv.commitComputed(request, numComputed);
    this.#kv.truncate(request.id, numComputed);
  }

  /** Drops a finished request and frees its blocks. */
  finish(request: EngineRequest): void {
    this.remove(request);
  }
}
