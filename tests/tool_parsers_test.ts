// The tool-call formats models write, parsed into OpenAI's calls; text that is no call stays text.
import assert from "node:assert/strict";
import { detectToolParser, parseRequiredOutput, parseToolCalls } from "../src/api/tools.ts";

Deno.test("Hermes/Qwen2.5 <tool_call> blocks", () => {
  const text = 'Let me look.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n' +
    '<tool_call>{"name": "g", "arguments": {}}';
  assert.deepEqual(parseToolCalls("hermes", text), {
    content: "Let me look.",
    calls: [{ name: "f", arguments: '{"a":1}' }, { name: "g", arguments: "{}" }],
  });
  assert.deepEqual(parseToolCalls("hermes", "<tool_call>{broken</tool_call>").calls, []);
  assert.equal(parseToolCalls("hermes", "plain").content, "plain");
});

Deno.test("Llama 3.1 JSON calls, with or without <|python_tag|>", () => {
  assert.deepEqual(
    parseToolCalls("llama3_json", '<|python_tag|>{"name": "f", "parameters": {"x": "y"}}'),
    {
      content: null,
      calls: [{ name: "f", arguments: '{"x":"y"}' }],
    },
  );
  assert.equal(
    parseToolCalls(
      "llama3_json",
      '{"name": "f", "parameters": {}}; {"name": "g", "parameters": {}}',
    ).calls.length,
    2,
  );
  assert.equal(parseToolCalls("llama3_json", "{not json").content, "{not json");
});

Deno.test("Mistral [TOOL_CALLS] lists", () => {
  assert.deepEqual(
    parseToolCalls("mistral", '[TOOL_CALLS][{"name": "f", "arguments": {"n": 2}}]'),
    {
      content: null,
      calls: [{ name: "f", arguments: '{"n":2}' }],
    },
  );
  assert.equal(parseToolCalls("mistral", "no calls [here]").calls.length, 0);
});

Deno.test("the parser follows the template, and required output is a list of calls", () => {
  assert.equal(detectToolParser("{{ '[TOOL_CALLS]' }}"), "mistral");
  assert.equal(detectToolParser("<tool_call>"), "hermes");
  assert.equal(detectToolParser("<|python_tag|>"), "llama3_json");
  assert.deepEqual(parseRequiredOutput('[{"name": "f", "parameters": {"a": [1]}}]'), [
    { name: "f", arguments: '{"a":[1]}' },
  ]);
  assert.equal(parseRequiredOutput("[{"), undefined);
});
