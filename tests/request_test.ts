// A request's streamed text: a UTF-8 character split across byte tokens is only emitted whole, a
// stop string is never emitted in part, and the deltas add up to the final text.
import assert from "node:assert/strict";
import { EngineRequest } from "../src/engine/request.ts";
import { openModelSource } from "../src/model/load.ts";
import { GREEDY } from "../src/sampling.ts";

const MODEL = new URL("../../shared/models/stories260K/hf", import.meta.url).pathname;
const { tokenizer } = await openModelSource(MODEL);
// stories260K's byte-fallback tokens: <0xNN> is id NN + 3.
const byteToken = (byte: number) => tokenizer.tokenId(`<0x${byte.toString(16).toUpperCase()}>`)!;

function request(stopStrings: string[] = []) {
  return new EngineRequest(
    { id: "r", submissionId: "r", index: 0, arrival: 0 },
    [1],
    { maxTokens: 50, sampling: GREEDY, stopStrings },
    tokenizer,
  );
}

Deno.test("a character split across byte tokens streams only when complete", () => {
  const r = request();
  const euro = [0xe2, 0x82, 0xac].map(byteToken);
  const deltas = euro.map((id) => r.appendToken(id).text);
  assert.deepEqual(deltas, ["", "", "€"]);
  assert.ok(!deltas.join("").includes("\uFFFD"));
});

Deno.test("a stop string split across tokens is cut and never streamed", () => {
  const r = request(["Lily"]);
  const ids = tokenizer.encode("she saw Lily and", { addSpecial: false });
  let text = "";
  for (const id of ids) {
    const piece = r.appendToken(id);
    text += piece.text;
    if (r.isFinished) break;
  }
  assert.equal(r.finishReason, "stop");
  assert.equal(text, " she saw ");
});

Deno.test("output continues the prompt: its leading space is kept, deltas add up", () => {
  const r = request();
  const ids = tokenizer.encode("there was a girl.", { addSpecial: false });
  assert.equal(tokenizer.tokenText(ids[0]), "\u2581there");
  let text = "";
  for (const id of ids) text += r.appendToken(id).text;
  // decode() of the ids alone strips SentencePiece's leading space; a continuation must not.
  assert.equal(text, " " + tokenizer.decode(ids));
  assert.equal(text, " there was a girl.");
});

Deno.test("min_tokens: a stop token or stop string before it does not end the request", () => {
  const r = new EngineRequest(
    { id: "r", submissionId: "r", index: 0, arrival: 0 },
    [1],
    { maxTokens: 50, sampling: GREEDY, stopStrings: ["saw"], minTokens: 4 },
    tokenizer,
  );
  const ids = tokenizer.encode("she saw Lily", { addSpecial: false });
  assert.ok(ids.length >= 3 && ids.length < 4, `${ids.length} tokens`);
  let text = "";
  for (const id of ids) text += r.appendToken(id).text;
  assert.ok(r.isBelowMinTokens && !r.isFinished);
  assert.equal(text, " she saw Lily");
  // EOS is not a stop until min_tokens are generated (the sampler masks it; were it sampled, it
  // would be text).
  const eos = tokenizer.eosIds[0];
  r.appendToken(eos);
  assert.ok(!r.isFinished && !r.isBelowMinTokens);
  r.appendToken(eos);
  assert.equal(r.finishReason, "stop");
});

Deno.test("include_stop_str_in_output keeps the stop string, split across tokens too", () => {
  const r = new EngineRequest(
    { id: "r", submissionId: "r", index: 0, arrival: 0 },
    [1],
    { maxTokens: 50, sampling: GREEDY, stopStrings: ["Lily"], includeStopStrInOutput: true },
    tokenizer,
  );
  let text = "";
  for (const id of tokenizer.encode("she saw Lily and", { addSpecial: false })) {
    text += r.appendToken(id).text;
    if (r.isFinished) break;
  }
  assert.equal(text, " she saw Lily");
});
