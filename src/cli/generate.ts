// `denollm generate`: loads a model, streams one completion to stdout; logs go to stderr.
import { parseArgs } from "node:util";
import { NativeBackend } from "../../ffi/native.ts";
import { type GenerationRequest, LLM } from "../engine/llm.ts";
import { applyOmpEnvDefaults, defaultNumThreads } from "../engine/threads.ts";
import { UsageError } from "../errors.ts";
import { type LoadedModel, loadModel } from "../model/load.ts";
import { describeQuantization } from "../model/quantize.ts";
import { quantizationFlag, samplingDeviceFlag, samplingDeviceUsage } from "./engine_flags.ts";
import { validateSamplingParams } from "../sampling.ts";
import { renderChat } from "../tokenizer/chat_template.ts";
import { downloadSnapshot, parseRepoRef } from "../hub/download.ts";
import { defaultHfCache, REPO_ID } from "../server/config.ts";
import { DEMO_MODEL, DEMO_NOTICE, demoCacheRoot, ensureDemoModel } from "../server/demo_model.ts";

export const GENERATE_USAGE = `Usage: denollm generate --model MODEL --prompt TEXT [options]

  --model MODEL        HF model directory, .gguf file, HF repo id (ORG/NAME[:FILE.gguf],
                       downloaded once into the hub cache, as for serve) or demo (required)
  --revision REV       branch, tag or commit of a repo id (default main)
  --hf-cache DIR       Hugging Face hub cache (default $HF_HUB_CACHE, $HF_HOME/hub or
                       ~/.cache/huggingface/hub)
  --prompt TEXT        prompt text (required)
  --max-tokens N       tokens to generate (default 128)
  --temperature T      0 = greedy (default 0)
  --top-k K            keep the K most likely tokens (default 0 = off)
  --top-p P            nucleus sampling threshold (default 1 = off)
  --min-p P            drop tokens below P x the top probability (default 0 = off)
  --seed S             random seed (default: random)
  --stop STR           stop string, repeatable; not included in the output
  --chat               apply the model's chat template to the prompt (as one user message)
  --ignore-eos         keep generating past end-of-sequence tokens
  --threads N          CPU threads (default: CPUs - 1; 0 = all cores)
  --kv-cache-memory B  KV cache bytes (default: just enough for the prompt and --max-tokens)
  --library PATH       native library to load (default build/libdenollm_cpu.so)
  --quantization Q     quantize F32/F16/BF16 weights on load: int8, int4, q8_0, q4_k, …
${samplingDeviceUsage(23)}
`;

function parseNumber(flag: string, value: string | undefined, fallback: number, integer = false) {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || (integer && !Number.isInteger(n))) {
    throw new UsageError(
      `--${flag} expects ${integer ? "an integer" : "a number"}, got "${value}"`,
    );
  }
  return n;
}

export async function runGenerate(args: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        model: { type: "string" },
        revision: { type: "string" },
        "hf-cache": { type: "string" },
        prompt: { type: "string" },
        "max-tokens": { type: "string" },
        temperature: { type: "string" },
        "top-k": { type: "string" },
        "top-p": { type: "string" },
        "min-p": { type: "string" },
        seed: { type: "string" },
        stop: { type: "string", multiple: true },
        chat: { type: "boolean" },
        "ignore-eos": { type: "boolean" },
        threads: { type: "string" },
        "kv-cache-memory": { type: "string" },
        library: { type: "string" },
        quantization: { type: "string" },
        "sampling-device": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const v = parsed.values;
  if (v.help) {
    console.log(GENERATE_USAGE);
    return;
  }
  if (!v.model) throw new UsageError("--model is required");
  if (v.prompt === undefined) throw new UsageError("--prompt is required");
  const maxTokens = parseNumber("max-tokens", v["max-tokens"], 128, true);
  if (maxTokens < 1) throw new UsageError(`--max-tokens must be at least 1, got ${maxTokens}`);
  const sampling = {
    temperature: parseNumber("temperature", v.temperature, 0),
    topK: parseNumber("top-k", v["top-k"], 0, true),
    topP: parseNumber("top-p", v["top-p"], 1),
    minP: parseNumber("min-p", v["min-p"], 0),
    seed: v.seed === undefined ? undefined : parseNumber("seed", v.seed, 0, true),
  };
  try {
    validateSamplingParams(sampling);
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const samplingDevice = samplingDeviceFlag(v["sampling-device"] ?? "auto");
  const threads = parseNumber("threads", v.threads, defaultNumThreads(), true);
  // libgomp reads its wait policy once, when the native library first loads.
  applyOmpEnvDefaults(Deno.env);

  const backend = NativeBackend.open({ numThreads: threads, libraryPath: v.library });
  try {
    const modelPath = await resolveModel(v.model, v.revision ?? "main", v["hf-cache"]);
    const loaded = await loadModel(backend, modelPath, {
      ...(v.quantization === undefined ? {} : { quantization: quantizationFlag(v.quantization) }),
    });
    if (loaded.quantization !== undefined) console.error(describeQuantization(loaded.quantization));
    try {
      const c = loaded.config;
      console.error(
        `loaded ${loaded.format} model ${v.model}: ${c.architecture}, ${c.numLayers} layers, ` +
          `hidden ${c.hiddenSize}, vocab ${c.vocabSize}, ${
            (loaded.model.weights.sizeBytes / 1e6).toFixed(1)
          } MB in ${loaded.loadMs.toFixed(0)} ms`,
      );
      const promptIds = promptTokens(loaded, v.prompt, v.chat === true);
      const kvMemory = parseNumber("kv-cache-memory", v["kv-cache-memory"], 0, true);
      // The serving engine with one sequence, sized for this prompt and output unless a KV budget
      // is given; a request that does not fit fails at admission with the reason.
      const maxModelLen = Math.min(promptIds.length + maxTokens, c.maxPositionEmbeddings);
      const blockSize = 16;
      const llm = LLM.over(backend, loaded, {
        blockSize,
        maxModelLen,
        maxNumSeqs: 1,
        maxNumBatchedTokens: Math.min(2048, maxModelLen),
        samplingDevice,
        ...(kvMemory > 0
          ? { kvCacheMemoryBytes: kvMemory }
          : { numKvBlocks: Math.ceil(maxModelLen / blockSize) + 1 }),
      });
      try {
        await streamCompletion(llm, {
          promptIds,
          maxTokens,
          sampling,
          stopStrings: v.stop ?? [],
          ignoreEos: v["ignore-eos"] ?? false,
        });
      } finally {
        llm.release();
      }
    } finally {
      loaded.release();
    }
  } finally {
    backend.close();
  }
}

/** Tokenizes the prompt, through the chat template when asked. */
function promptTokens(loaded: LoadedModel, prompt: string, chat: boolean): number[] {
  const tok = loaded.tokenizer;
  if (!chat) return tok.encode(prompt);
  if (loaded.chatTemplate === null) {
    throw new UsageError(`--chat: the model at ${loaded.path} has no chat template`);
  }
  const bosText = tok.bosId === undefined ? "" : tok.tokenText(tok.bosId) ?? "";
  const text = renderChat(loaded.chatTemplate, [{ role: "user", content: prompt }], {
    addGenerationPrompt: true,
    bosToken: bosText,
  });
  // The template spells out BOS itself when the model wants one; its control tokens are parsed.
  const templateHasBos = bosText !== "" && text.startsWith(bosText);
  return tok.encode(text, { addSpecial: !templateHasBos, parseSpecial: true });
}

/** Writes the completion to stdout as it is generated, then a summary line to stderr. */
async function streamCompletion(llm: LLM, request: GenerationRequest): Promise<void> {
  const encoder = new TextEncoder();
  const { promptIds, ...params } = request;
  const started = performance.now();
  let firstTokenAt: number | undefined;
  let numTokens = 0;
  let finishReason = "length";
  for (const out of llm.stream(promptIds, params)) {
    if (out.newTokenIds.length > 0) firstTokenAt ??= performance.now();
    numTokens += out.newTokenIds.length;
    if (out.textDelta) await Deno.stdout.write(encoder.encode(out.textDelta));
    if (out.finished) finishReason = out.finishReason ?? finishReason;
  }
  const ended = performance.now();
  await Deno.stdout.write(encoder.encode("\n"));
  const prefillMs = (firstTokenAt ?? ended) - started;
  const decodeMs = ended - (firstTokenAt ?? ended);
  const decodeTokens = Math.max(numTokens - 1, 0);
  console.error(
    `prompt ${promptIds.length} tokens in ${prefillMs.toFixed(1)} ms (${
      (promptIds.length / (prefillMs / 1000)).toFixed(1)
    } tok/s), generated ${numTokens} tokens, decode ${
      decodeTokens > 0 ? (decodeTokens / (decodeMs / 1000)).toFixed(1) : "-"
    } tok/s, finish reason ${finishReason}`,
  );
}

/** A local path as is; `demo`, the built-in demo model; a repo id through the hub cache. */
async function resolveModel(model: string, revision: string, cacheDir?: string): Promise<string> {
  const env = Deno.env.toObject();
  if (model === DEMO_MODEL) {
    const demo = await ensureDemoModel(demoCacheRoot(env), (msg) => console.error(msg));
    console.error(`warning: ${DEMO_NOTICE}`);
    return demo.path;
  }
  try {
    await Deno.stat(model);
    return model;
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound) || !REPO_ID.test(model)) return model;
  }
  const { repoId, file } = parseRepoRef(model);
  const snapshot = await downloadSnapshot(repoId, {
    revision,
    cacheDir: cacheDir ?? defaultHfCache(env),
    file,
    log: (msg) => console.error(msg),
  });
  return snapshot.modelPath;
}
