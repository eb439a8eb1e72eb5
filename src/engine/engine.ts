// The serving engine: requests in, incremental outputs out, one `step()` at a time
// (schedule, run the model, process what it sampled).
import { RequestIdError } from "../errors.ts";
import { validateSamplingParams } from "../sampling.ts";
import type { TextTokenizer } from "../tokenizer/tokenizer.ts";
import { BlockPool } from "./block_pool.ts";
import { greedyParams } from "./device_sampler.ts";
import type { Executor, SampledStep, StepSampling } from "./executor.ts";
import { buildForwardBatch, type ForwardBatch } from "./forward_batch.ts";
import { KvCacheManager } from "./kv_cache_manager.ts";
import { rankedLogprobs, topLogprobs } from "./logprobs.ts";
import type { TokenGrammar } from "./grammar.ts";
import { EngineRequest, type RequestOutput, type RequestParams } from "./request.ts";
import {
  canSampleOnDevice,
  samplesOnDevice,
  type SamplingDevice,
  setDeviceRow,
} from "./sampling_device.ts";
import { Scheduler, type SchedulerConfig, type SchedulerOutput } from "./scheduler.ts";
import { checkSpeculativeConfig, type SpeculativeConfig } from "./spec/proposer.ts";
import { type AcceptanceRule, rejectionSample } from "./spec/verify.ts";

export interface EngineConfig extends SchedulerConfig {
  enablePrefixCaching?: boolean;
  /** Speculative decoding: a proposer, k, and when to turn it off. */
  speculativeDecoding?: SpeculativeConfig;
  /** Where tokens are sampled (src/engine/sampling_device.ts); default auto. */
  samplingDevice?: SamplingDevice;
}

/** Device sampling counters since the engine started (present when it samples on the device). */
export interface DeviceSamplingStats {
  /** Steps that ran dl_sample: their sampled rows' ids came back instead of logits. */
  numSteps: number;
  /** Of those, the steps that still copied logits (a row sampled on the host, prompt logprobs). */
  numStepsWithLogits: number;
  /** Tokens that came from dl_sample. */
  numTokens: number;
}

/** Speculative decoding counters since the engine started, as vLLM's metrics count them. */
export interface SpecDecodeStats {
  /** Verification steps of a request with at least one proposed token. */
  numDrafts: number;
  numDraftTokens: number;
  numAcceptedTokens: number;
  /** Accepted tokens by their position among a step's proposals (0 = the first). */
  numAcceptedTokensPerPos: number[];
  /** Steps in which speculation was off because the batch was larger than its threshold. */
  numTurnedDownSteps: number;
}

export interface EngineStats {
  numRunning: number;
  numWaiting: number;
  numKvBlocks: number;
  numFreeKvBlocks: number;
  prefixCacheQueries: number;
  prefixCacheHits: number;
  numPreemptions: number;
  /** KV slots holding tokens of running requests (allocated minus this is waste). */
  numKvTokensInUse: number;
  numSteps: number;
  /** Tokens computed in the last step: prefill chunks and decode tokens. */
  lastStepPrefillTokens: number;
  lastStepDecodeTokens: number;
  /** Present when speculative decoding is on. */
  specDecode?: SpecDecodeStats;
  /** Present when the engine samples on the device. */
  deviceSampling?: DeviceSamplingStats;
}

/** What a step brought back: logits [numLmHeadRows, vocab], ids [numLmHeadRows], or both. */
type StepResult = SampledStep | { tokenIds: null; logits: Float32Array };

/** A step's device sampling: the executor's part, and which LM-head rows' ids are used. */
interface DeviceRows {
  step: StepSampling;
  isDeviceRow: Uint8Array; // [numLmHeadRows] 1 where the row's token is dl_sample's
  numRows: number;
}

export { RequestIdError };

export class LLMEngine {
  readonly tokenizer: TextTokenizer;
  readonly scheduler: Scheduler;
  readonly kv: KvCacheManager;
  #executor: Executor;
  #requests = new Map<string, EngineRequest>();
  /** n > 1 samples waiting for their leader's prompt to be computed, by leader id. */
  #pendingForks = new Map<string, EngineRequest[]>();
  #arrivals = 0;
  #numSteps = 0;
  #lastStep = { prefill: 0, decode: 0 };
  #spec?: SpeculativeConfig;
  #acceptanceRule: AcceptanceRule = rejectionSample;
  #specStats?: SpecDecodeStats;
  #deviceStats?: DeviceSamplingStats;

  constructor(parts: { executor: Executor; tokenizer: TextTokenizer }, config: EngineConfig) {
    const { executor } = parts;
    this.tokenizer = parts.tokenizer;
    const pool = new BlockPool(executor.numKvBlocks, {
      enablePrefixCaching: config.enablePrefixCaching ?? true,
    });
    this.kv = new KvCacheManager(pool, executor.blockSize);
    this.scheduler = new Scheduler(config, this.kv);
    // Every step the scheduler can emit must fit the executor's reserved buffers.
    const cap = executor.capacity;
    const needed = Math.ceil(config.maxModelLen / executor.blockSize);
    const numRows = this.scheduler.config.maxNumLogitRows;
    if (
      cap.maxNumTokens < config.maxNumBatchedTokens || cap.maxBlocksPerSeq < needed ||
      cap.maxNumSeqs < Math.min(config.maxNumSeqs, config.maxNumBatchedTokens) ||
      cap.maxNumLogitRows < numRows
    ) {
      throw new RangeError(
        `The executor is reserved for steps of ${cap.maxNumTokens} tokens, ${cap.maxNumSeqs} ` +
          `sequences, ${cap.maxNumLogitRows} logit rows and ${cap.maxBlocksPerSeq} blocks per ` +
          `sequence; the scheduler may emit ${config.maxNumBatchedTokens} tokens, ` +
          `${config.maxNumSeqs} sequences, ${numRows} logit rows, ${needed} blocks`,
      );
    }
    this.#executor = executor;
    if (samplesOnDevice(config.samplingDevice ?? "auto", executor)) {
      this.#deviceStats = { numSteps: 0, numStepsWithLogits: 0, numTokens: 0 };
    }
    if (config.speculativeDecoding !== undefined) {
      checkSpeculativeConfig(config.speculativeDecoding);
      this.#spec = config.speculativeDecoding;
      this.#acceptanceRule = config.speculativeDecoding.acceptanceRule ?? rejectionSample;
      this.#specStats = {
        numDrafts: 0,
        numDraftTokens: 0,
        numAcceptedTokens: 0,
        numAcceptedTokensPerPos: new Array(config.speculativeDecoding.numSpeculativeTokens).fill(0),
        numTurnedDownSteps: 0,
      };
    }
  }

  /** Logits per row: the model's vocabulary, which may be larger than the tokenizer's. */
  get vocabSize(): number {
    return this.#executor.vocabSize;
  }

  get hasWork(): boolean {
    return this.scheduler.hasWork;
  }

  /** Validates and queues a submission; n > 1 makes n requests `${id}` … that share the prompt. */
  addRequest(
    id: string,
    promptIds: readonly number[],
    params: RequestParams,
    opts: { grammars?: readonly TokenGrammar[] } = {},
  ): void {
    const vocab = this.#executor.vocabSize;
    if (promptIds.length === 0) throw new RangeError("The prompt must have at least one token");
    const bad = promptIds.find((t) => !Number.isInteger(t) || t < 0 || t >= vocab);
    if (bad !== undefined) {
      throw new RangeError(`Token id ${bad} is outside the vocabulary [0, ${vocab})`);
    }
    if (!Number.isInteger(params.maxTokens) || params.maxTokens < 0) {
      throw new RangeError(`max_tokens must be a non-negative integer, got ${params.maxTokens}`);
    }
    const numTop = params.promptLogprobs;
    if (numTop !== undefined && (!Number.isInteger(numTop) || numTop < 0)) {
      throw new RangeError(`prompt logprobs must be a non-negative integer, got ${numTop}`);
    }
    if (params.promptHiddenStates === true) {
      if (!(this.#executor.captureLayers?.length)) {
        throw new RangeError("Prompt hidden states need an engine that captures layers");
      }
      if (numTop === undefined) {
        throw new RangeError("Prompt hidden states need prompt logprobs (their rows)");
      }
    }
    const n = params.n ?? 1;
    if (
      params.pooling !== undefined &&
      (params.maxTokens !== 0 || n !== 1 || params.structured !== undefined)
    ) {
      throw new RangeError("An embedding request (pooling) samples nothing: maxTokens 0 and n 1");
    }
    const minTokens = params.minTokens ?? 0;
    if (!Number.isInteger(minTokens) || minTokens < 0 || minTokens > params.maxTokens) {
      throw new RangeError(
        `min_tokens must be an integer from 0 to max_tokens (${params.maxTokens}), got ${minTokens}`,
      );
    }
    if (!Number.isInteger(n) || n < 1) {
      throw new RangeError(`n must be a positive integer, got ${n}`);
    }
    validateSamplingParams(params.sampling);
    const grammars = opts.grammars ?? [];
    if (params.structured !== undefined && grammars.length !== n) {
      throw new RangeError(
        `A structured request needs one grammar matcher per sample: ${n}, got ${grammars.length}`,
      );
    }
    const ids = Array.from({ length: n }, (_, i) => (i === 0 ? id : `${id}#${i}`));
    for (const rid of ids) {
      if (this.#requests.has(rid)) {
        throw new RequestIdError(`Request id "${rid}" is already in use`);
      }
    }
    const requests = ids.map((rid, index) =>
      new EngineRequest(
        { id: rid, submissionId: id, index, arrival: this.#arrivals++ },
        promptIds,
        params,
        this.tokenizer,
        grammars[index],
      )
    );
    this.scheduler.add(requests[0]); // throws RequestTooLongError before anything is registered
    for (const r of requests) this.#requests.set(r.id, r);
    if (n > 1) this.#pendingForks.set(id, requests.slice(1));
  }

  /** Cancels a submission (all its samples) and frees its KV blocks at once. */
  abort(id: string): RequestOutput[] {
    const outputs: RequestOutput[] = [];
    const family = [...this.#requests.values()].filter((r) => r.submissionId === id);
    for (const request of family) {
      request.abort();
      this.scheduler.remove(request);
      this.#requests.delete(request.id);
      this.#spec?.proposer.free(request.id);
      outputs.push(this.#output(request, [], "", undefined));
    }
    this.#pendingForks.delete(id);
    return outputs;
  }

  /** Replaces how draft tokens are accepted (tests: showing that a wrong rule is caught). */
  setAcceptanceRule(rule: AcceptanceRule): void {
    this.#acceptanceRule = rule;
  }

  /** One engine step. Returns the outputs it produced (possibly none). */
  step(): RequestOutput[] {
    this.#propose();
    const plan = this.scheduler.schedule();
    if (plan.scheduled.length === 0) return [];
    const now = performance.now();
    for (const s of plan.scheduled) {
      this.scheduler.runningRequest(s.requestId).firstScheduledTime ??= now;
    }
    const batch = buildForwardBatch(plan, this.kv.blockSize);
    const device = this.#deviceStats === undefined ? undefined : this.#deviceRows(plan, batch);
    const result = this.#execute(batch, device);
    this.scheduler.commit(plan);
    this.#numSteps++;
    this.#countTokens(plan);
    return this.#processSamples(plan, result, device?.isDeviceRow);
  }

  /** Runs the step: logits back, or with device rows their ids (and logits if a row needs them). */
  #execute(batch: ForwardBatch, device: DeviceRows | undefined): StepResult {
    if (device === undefined) return { tokenIds: null, logits: this.#executor.execute(batch) };
    const stats = this.#deviceStats!;
    stats.numSteps++;
    stats.numTokens += device.numRows;
    if (device.step.copyLogits) stats.numStepsWithLogits++;
    return this.#executor.executeSampled!(batch, device.step);
  }

  /**
   * Which of a step's sampling rows dl_sample serves, with their parameters; undefined when none.
   * Each row is decided by its own request alone, so a seeded request draws the same tokens
   * whatever shares its steps; the step copies logits only if a row needs them on the host.
   */
  #deviceRows(plan: SchedulerOutput, batch: ForwardBatch): DeviceRows | undefined {
    const numHeadRows = batch.numLmHeadRows ?? batch.logitRows.length;
    const params = greedyParams(numHeadRows);
    const isDeviceRow = new Uint8Array(numHeadRows);
    let numRows = 0;
    let copyLogits = false;
    let row = 0;
    for (const s of plan.scheduled) {
      row += s.numLogitRows;
      const request = this.scheduler.runningRequest(s.requestId);
      if (request.params.pooling !== undefined) continue;
      copyLogits ||= request.needsPromptLogits;
      if (!s.sample || request.params.maxTokens === 0) continue;
      const isDevice = (s.numDraftTokens ?? 0) === 0 && !this.#pendingForks.has(request.id) &&
        canSampleOnDevice(request);
      if (!isDevice) {
        copyLogits = true;
        continue;
      }
      setDeviceRow(params, row - 1, request);
      isDeviceRow[row - 1] = 1;
      numRows++;
    }
    if (numRows === 0) return undefined;
    return { step: { params, copyLogits }, isDeviceRow, numRows };
  }

  /**
   * Gives each decoding request up to k proposals for this step (none while the batch is larger
   * than the turn-down threshold). Requests that constrain or inspect every step's logits in
   * ways verification does not reproduce (structured output) are left out.
   */
  #propose(): void {
    const spec = this.#spec;
    // The static baseline reserves each request's whole length up front; rolling back into that
    // reservation would undo it, so it never speculates.
    if (spec === undefined || this.scheduler.config.mode === "static") return;
    const candidates: EngineRequest[] = [];
    let numRunning = 0;
    for (const request of this.#requests.values()) {
      request.draftTokenIds = [];
      request.draftDists = undefined;
      if (request.status !== "running") continue;
      numRunning++;
      const isDecoding = request.numComputedTokens === request.numTokens - 1 &&
        request.numOutputTokens > 0;
      // Room for k drafts plus the bonus token within max_tokens.
      const room = request.params.maxTokens - request.numOutputTokens - 1;
      if (isDecoding && room > 0 && request.grammar === undefined) candidates.push(request);
    }
    if (candidates.length === 0) return;
    if (numRunning > spec.disableBySize) {
      this.#specStats!.numTurnedDownSteps++;
      return;
    }
    const k = spec.numSpeculativeTokens;
    const limit = (r: EngineRequest) =>
      Math.min(k, r.params.maxTokens - r.numOutputTokens - 1, this.scheduler.config.maxModelLen);
    const proposals = spec.proposer.propose(candidates, limit);
    for (const request of candidates) {
      const proposal = proposals.get(request.id);
      if (proposal === undefined || proposal.tokenIds.length === 0) continue;
      const n = Math.min(proposal.tokenIds.length, limit(request));
      request.draftTokenIds = proposal.tokenIds.slice(0, n);
      request.draftDists = proposal.dists?.slice(0, n);
    }
  }

  #countTokens(plan: SchedulerOutput): void {
    let prefill = 0;
    let decode = 0;
    for (const s of plan.scheduled) {
      const request = this.scheduler.runningRequest(s.requestId);
      // A step that starts at the last known token is a decode step; anything else is prompt.
      const numDraft = s.numDraftTokens ?? 0;
      if (
        s.numNewTokens === 1 + numDraft && s.start === request.numTokens - 1 &&
        request.numOutputTokens > 0
      ) {
        decode += 1 + numDraft;
      } else {
        prefill += s.numNewTokens;
      }
    }
    this.#lastStep = { prefill, decode };
  }

  #processSamples(
    plan: SchedulerOutput,
    { logits, tokenIds }: StepResult,
    isDeviceRow?: Uint8Array,
  ): RequestOutput[] {
    const vocab = this.#executor.vocabSize;
    const outputs: RequestOutput[] = [];
    const numRows = plan.scheduled.reduce((n, s) => n + s.numLogitRows, 0);
    const isPooling = plan.scheduled.some((s) => s.isPooling);
    const hidden = isPooling ? this.#executor.hiddenRows(numRows) : undefined;
    const wantsLayers = plan.scheduled.some((s) =>
      this.scheduler.runningRequest(s.requestId).params.promptHiddenStates === true
    );
    const layerRows = wantsLayers ? this.#executor.capturedRows!(numRows) : undefined;
    let row = 0;
    for (const s of plan.scheduled) {
      const firstRow = row;
      row += s.numLogitRows;
      const rowAt = (r: number) => {
        if (logits === null) throw new Error(`Row ${r}'s logits were not copied from the device`);
        return logits.subarray(r * vocab, (r + 1) * vocab);
      };
      const leader = this.scheduler.runningRequest(s.requestId);
      if (leader.params.pooling !== undefined) {
        const dim = this.#executor.hiddenSize;
        const output = this.#pool(leader, s, hidden!.subarray(firstRow * dim, row * dim));
        if (output !== undefined) outputs.push(output);
        continue;
      }
      if (layerRows !== undefined && leader.params.promptHiddenStates === true) {
        this.#addPromptHidden(leader, s.start + s.numNewTokens - s.numLogitRows, layerRows, {
          firstRow,
          numRows: s.numLogitRows,
        });
      }
      if (leader.needsPromptLogits) {
        this.#addPromptLogprobs(
          leader,
          s.start + s.numNewTokens - s.numLogitRows,
          (j) => rowAt(firstRow + j),
          s.numLogitRows,
        );
      }
      if (!s.sample) continue;
      if ((s.numDraftTokens ?? 0) > 0) {
        outputs.push(this.#verifyInto(leader, s, (j) => rowAt(firstRow + j)));
        continue;
      }
      // The token dl_sample picked, or the logits to sample from on the host.
      const source = isDeviceRow?.[row - 1] === 1 ? tokenIds![row - 1] : rowAt(row - 1);
      // A leader's first sample also starts its n - 1 siblings from the same prompt logits; they
      // share its blocks (forked before sampling, in case the leader finishes at once).
      const siblings = this.#pendingForks.get(leader.id) ?? [];
      this.#pendingForks.delete(leader.id);
      for (const sibling of siblings) {
        this.kv.fork(leader.id, sibling.id);
        sibling.numComputedTokens = leader.numComputedTokens;
        sibling.firstScheduledTime = leader.firstScheduledTime;
        this.scheduler.addRunning(sibling);
      }
      // The prompt logprobs go out once, with each sample's first output.
      const promptLogprobs = leader.params.promptLogprobs !== undefined &&
          leader.numOutputTokens === 0
        ? leader.promptLogprobs
        : undefined;
      const promptHidden = promptLogprobs !== undefined ? leader.promptHidden?.rows : undefined;
      for (const request of [leader, ...siblings]) {
        const output = this.#sampleInto(request, source, promptLogprobs);
        if (promptHidden !== undefined) output.promptHiddenStates = promptHidden;
        outputs.push(output);
      }
    }
    return outputs;
  }

  /**
   * Adds a step's hidden rows to an embedding request; once its prompt is computed, ends it with
   * its pooled, L2-normalized hidden state (its blocks are freed at once).
   */
  #pool(
    request: EngineRequest,
    s: SchedulerOutput["scheduled"][number],
    rows: Float32Array,
  ): RequestOutput | undefined {
    const dim = this.#executor.hiddenSize;
    const sum = request.poolSum ??= new Float64Array(dim);
    // After a preemption the prompt is computed again from the start.
    if (s.start === 0) sum.fill(0);
    if (request.params.pooling === "mean") {
      for (let r = 0; r < s.numLogitRows; r++) {
        for (let i = 0; i < dim; i++) sum[i] += rows[r * dim + i];
      }
    } else if (s.sample) {
      for (let i = 0; i < dim; i++) sum[i] = rows[(s.numLogitRows - 1) * dim + i];
    }
    if (!s.sample) return undefined;
    let norm = 0;
    for (let i = 0; i < dim; i++) norm += sum[i] * sum[i];
    // vLLM's normalize: x / max(|x|, 1e-12); the mean's 1/n cancels out.
    const scale = 1 / Math.max(Math.sqrt(norm), 1e-12);
    const embedding = new Float32Array(dim);
    for (let i = 0; i < dim; i++) embedding[i] = sum[i] * scale;
    request.finishWithoutSampling();
    this.#retire(request);
    return { ...this.#output(request, [], "", undefined), embedding };
  }

  /** Copies captured layer rows of prompt positions from `firstPos` on into the request. */
  #addPromptHidden(
    request: EngineRequest,
    firstPos: number,
    layerRows: Float32Array[],
    at: { firstRow: number; numRows: number },
  ): void {
    const dim = this.#executor.hiddenSize;
    const n = request.numPromptTokens;
    const held = request.promptHidden ??= {
      rows: layerRows.map(() => new Float32Array(n * dim)),
      numPositions: 0,
    };
    for (let j = 0; j < at.numRows; j++) {
      // After a preemption the positions already kept come round again and are skipped.
      const pos = firstPos + j;
      if (pos >= n) break;
      if (pos !== held.numPositions) continue;
      const r = at.firstRow + j;
      layerRows.forEach((rows, k) =>
        held.rows[k].set(rows.subarray(r * dim, (r + 1) * dim), pos * dim)
      );
      held.numPositions++;
    }
  }

  /** Logprobs of the prompt tokens that `numRows` rows from position `firstPos` predict. */
  #addPromptLogprobs(
    request: EngineRequest,
    firstPos: number,
    rowLogits: (j: number) => Float32Array,
    numRows: number,
  ): void {
    const numTop = request.params.promptLogprobs!;
    for (let j = 0; j < numRows; j++) {
      // The row at position p predicts the token at p + 1; after a preemption the rows already
      // turned into logprobs come round again and are skipped.
      const predicted = firstPos + j + 1;
      if (predicted >= request.numPromptTokens) break;
      if (predicted !== request.promptLogprobs.length + 1) continue;
      request.promptLogprobs.push(
        rankedLogprobs(rowLogits(j), request.tokenIds[predicted], numTop),
      );
    }
  }

  /** Appends one token: `source` is the id dl_sample picked, or the row to sample on the host. */
  #sampleInto(
    request: EngineRequest,
    source: Float32Array | number,
    promptLogprobs: RequestOutput["promptLogprobs"],
  ): RequestOutput {
    if (request.params.maxTokens === 0) {
      // Only the prompt was wanted (echo with prompt logprobs): nothing is sampled.
      request.finishWithoutSampling();
      this.#retire(request);
      return this.#output(request, [], "", undefined, promptLogprobs);
    }
    const grammar = request.grammar;
    const wantLogprobs = request.params.logprobs !== undefined;
    if (typeof source === "number" && (wantLogprobs || grammar !== undefined)) {
      throw new Error(`Request ${request.id} needs its logits, but they stayed on the device`);
    }
    const token = typeof source === "number" ? source : request.sampler.sample(
      request.isBelowMinTokens ? withoutTokens(source, request.stopTokenIds) : source,
      request,
      grammar?.mask(),
    );
    // A token the grammar refuses can only be a fully masked row's fallback: end the sample.
    if (grammar !== undefined && !grammar.accept(token)) {
      request.abort();
      this.#retire(request);
      return this.#output(request, [], "", undefined, promptLogprobs);
    }
    const { text, appended } = request.appendToken(token);
    // Under ignore_eos the stop token that completed the format is kept; nothing may follow it.
    if (grammar?.isTerminated && !request.isFinished) request.finishFormatComplete();
    const logprobs = wantLogprobs && appended && typeof source !== "number"
      ? [topLogprobs(source, token, request.params.logprobs!)]
      : undefined;
    if (request.isFinished) {
      this.#retire(request);
    }
    return this.#output(request, appended ? [token] : [], text, logprobs, promptLogprobs);
  }

  /**
   * Verifies a step's proposals in order: row j is the target's logits after the last real token
   * and the first j proposals. Each position's token comes from the acceptance rule on exactly
   * the distribution normal sampling would use there; the first rejection's replacement, or the
   * bonus token after k acceptances, ends the step. Stops and max_tokens are checked token by
   * token, so nothing past them is emitted.
   */
  #verifyInto(
    request: EngineRequest,
    s: SchedulerOutput["scheduled"][number],
    rowAt: (j: number) => Float32Array,
  ): RequestOutput {
    const numDraft = s.numDraftTokens!;
    const drafts = s.tokenIds.slice(s.tokenIds.length - numDraft);
    const dists = request.draftDists;
    const stats = this.#specStats!;
    const sampler = request.sampler;
    const uniform = () => sampler.uniform();
    const wantLogprobs = request.params.logprobs !== undefined;
    const newTokenIds: number[] = [];
    const logprobs: NonNullable<RequestOutput["logprobs"]> = [];
    let text = "";
    let numAccepted = 0;
    for (let j = 0; j <= numDraft; j++) {
      const rowLogits = rowAt(j);
      const logits = request.isBelowMinTokens
        ? withoutTokens(rowLogits, request.stopTokenIds)
        : rowLogits;
      const p = sampler.distribution(logits, request);
      const verified = j < numDraft
        ? this.#acceptanceRule(p, drafts[j], dists?.[j], uniform)
        : { tokenId: p.isArgmax ? p.ids[0] : sampler.draw(p), isAccepted: false };
      if (verified.isAccepted) {
        numAccepted++;
        stats.numAcceptedTokensPerPos[j]++;
      }
      const piece = request.appendToken(verified.tokenId);
      text += piece.text;
      if (piece.appended) {
        newTokenIds.push(verified.tokenId);
        if (wantLogprobs) {
          logprobs.push(topLogprobs(rowLogits, verified.tokenId, request.params.logprobs!));
        }
      }
      if (request.isFinished || !verified.isAccepted) break;
    }
    stats.numDrafts++;
    stats.numDraftTokens += numDraft;
    stats.numAcceptedTokens += numAccepted;
    request.specStats.numDrafts++;
    request.specStats.numDraftTokens += numDraft;
    request.specStats.numAcceptedTokens += numAccepted;
    request.draftTokenIds = [];
    request.draftDists = undefined;
    if (request.isFinished) {
      this.#retire(request);
    } else {
      this.scheduler.acceptDrafts(request, numAccepted);
    }
    return this.#output(request, newTokenIds, text, wantLogprobs ? logprobs : undefined);
  }

  /** Drops a finished request: its blocks, its proposer state, its entry. */
  #retire(request: EngineRequest): void {
    this.scheduler.finish(request);
    this.#requests.delete(request.id);
    this.#spec?.proposer.free(request.id);
  }

  #output(
    request: EngineRequest,
    newTokenIds: number[],
    textDelta: string,
    logprobs: RequestOutput["logprobs"],
    promptLogprobs?: RequestOutput["promptLogprobs"],
  ): RequestOutput {
    return {
      requestId: request.submissionId,
      index: request.index,
      newTokenIds,
      textDelta,
      ...(logprobs ? { logprobs } : {}),
      ...(promptLogprobs ? { promptLogprobs } : {}),
      finished: request.isFinished,
      ...(request.finishReason ? { finishReason: request.finishReason } : {}),
      numPromptTokens: request.numPromptTokens,
      numOutputTokens: request.numGeneratedTokens,
      ...(request.firstScheduledTime === undefined
        ? {}
        : { queueMs: request.firstScheduledTime - request.arrivalTime }),
      ...(request.specStats.numDrafts === 0 ? {} : {
        specDecode: {
          numDraftTokens: request.specStats.numDraftTokens,
          numAcceptedTokens: request.specStats.numAcceptedTokens,
        },
      }),
    };
  }

  stats(): EngineStats {
    const kvStats = this.kv.stats;
    return {
      numRunning: this.scheduler.numRunning,
      numWaiting: this.scheduler.numWaiting,
      numKvBlocks: this.kv.numUsableBlocks,
      numFreeKvBlocks: this.kv.numFreeBlocks,
      prefixCacheQueries: kvStats.prefixQueries,
      prefixCacheHits: kvStats.prefixHits,
      numPreemptions: this.scheduler.numPreemptions,
      numKvTokensInUse: this.scheduler.numComputedTokens,
      numSteps: this.#numSteps,
      lastStepPrefillTokens: this.#lastStep.prefill,
      lastStepDecodeTokens: this.#lastStep.decode,
      ...(this.#specStats === undefined ? {} : {
        specDecode: {
          ...this.#specStats,
          numAcceptedTokensPerPos: [...this.#specStats.numAcceptedTokensPerPos],
        },
      }),
      ...(this.#deviceStats === undefined ? {} : { deviceSampling: { ...this.#deviceStats } }),
    };
  }
}

/** A copy of `logits` with `ids` masked out (-Infinity), as min_tokens masks the stop tokens. */
function withoutTokens(logits: Float32Array, ids: ReadonlySet<number>): Float32Array {
  if (ids.size === 0) return logits;
  const masked = logits.slice();
  for (const id of ids) if (id < masked.length) masked[id] = -Infinity;
  return masked;
}
