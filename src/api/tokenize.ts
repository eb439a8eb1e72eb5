// POST /tokenize and POST /detokenize, as vLLM serves them.
import { readJsonObject } from "./body.ts";
import { type ApiDeps, checkModel, DEFAULT_MAX_BODY_BYTES, requireEngine } from "./deps.ts";
import { checkPromptChars, checkTokenIds } from "./params.ts";
import { chatPrompt, encodePrompt, numMessageChars } from "./prompt_ids.ts";
import {
  detokenizeRequest,
  parseBody,
  tokenizeChatRequest,
  tokenizePromptRequest,
} from "./schemas.ts";

/**
 * `{prompt}` or `{messages}` to `{count, max_model_len, tokens}`. Held to the completion routes'
 * limit: text far too long for the context is refused before the tokenizer spends seconds on it
 * (other prompts wait behind it on the one tokenizer worker). A count over max_model_len is still
 * answered, as vLLM does, so a client can see by how much a prompt is too long.
 */
export async function handleTokenize(request: Request, deps: ApiDeps): Promise<Response> {
  const engine = requireEngine(deps);
  const body = await readJsonObject(request, deps.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES);
  let tokens: number[];
  if ("messages" in body) {
    const req = parseBody(tokenizeChatRequest, body);
    checkModel(deps, req.model);
    checkPromptChars(deps.tokenizer, numMessageChars(req.messages), {
      maxModelLen: engine.maxModelLen,
      promptParam: "messages",
    });
    tokens = await chatPrompt(deps, req.messages, {
      addGenerationPrompt: req.add_generation_prompt ?? true,
      addSpecial: req.add_special_tokens ?? undefined,
    });
  } else {
    const req = parseBody(tokenizePromptRequest, body);
    checkModel(deps, req.model);
    checkPromptChars(deps.tokenizer, req.prompt.length, {
      maxModelLen: engine.maxModelLen,
      promptParam: "prompt",
    });
    tokens = await encodePrompt(deps, req.prompt, { addSpecial: req.add_special_tokens ?? true });
  }
  return Response.json({ count: tokens.length, max_model_len: engine.maxModelLen, tokens });
}

/** `{tokens}` to `{prompt}`. */
export async function handleDetokenize(request: Request, deps: ApiDeps): Promise<Response> {
  requireEngine(deps);
  const body = await readJsonObject(request, deps.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES);
  const req = parseBody(detokenizeRequest, body);
  checkModel(deps, req.model);
  checkTokenIds(req.tokens, deps.tokenizer.vocabSize, "tokens");
  return Response.json({ prompt: deps.tokenizer.decode(req.tokens) });
}
