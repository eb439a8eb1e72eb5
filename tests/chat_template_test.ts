// Chat templates: Llama 3, ChatML (Qwen) and Mistral [INST] styles render as the models expect.
import assert from "node:assert/strict";
import {
  ChatTemplateError,
  renderChat,
  selectChatTemplate,
} from "../src/tokenizer/chat_template.ts";
import { ggufTokenizer } from "../src/tokenizer/gguf.ts";
import { buildSyntheticTokenizer } from "../src/random_model/synthetic_tokenizer.ts";

const LLAMA3 =
  "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = " +
  "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | " +
  "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}" +
  "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}" +
  "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

const CHATML = "{% for message in messages %}{% if loop.first and messages[0]['role'] != " +
  "'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}" +
  "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const MISTRAL = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') " +
  "!= (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate " +
  "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}" +
  "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}" +
  "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant " +
  "roles are supported!') }}{% endif %}{% endfor %}";

const CONVERSATION = [
  { role: "user", content: "Hi" },
  { role: "assistant", content: "Hello!" },
  { role: "user", content: "How are you?" },
];

Deno.test("renderChat", async (t) => {
  await t.step("Llama 3 style", () => {
    const text = renderChat(
      LLAMA3,
      [{ role: "system", content: " Be brief. " }, { role: "user", content: "Hi" }],
      { bosToken: "<|begin_of_text|>" },
    );
    assert.equal(
      text,
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>" +
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" +
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    );
  });

  await t.step("ChatML (Qwen) with its default system prompt", () => {
    assert.equal(
      renderChat(CHATML, [{ role: "user", content: "Hi" }]),
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" +
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    );
    assert.equal(
      renderChat(CHATML, [{ role: "system", content: "S" }], { addGenerationPrompt: false }),
      "<|im_start|>system\nS<|im_end|>\n",
    );
  });

  await t.step("Mistral [INST], including its raise_exception", () => {
    assert.equal(
      renderChat(MISTRAL, CONVERSATION, { bosToken: "<s>", eosToken: "</s>" }),
      "<s>[INST] Hi [/INST]Hello!</s>[INST] How are you? [/INST]",
    );
    assert.throws(
      () => renderChat(MISTRAL, [{ role: "assistant", content: "x" }]),
      (e) => e instanceof ChatTemplateError && /roles must alternate/.test(e.message),
    );
  });

  await t.step("a list of named templates: 'default' unless named", () => {
    const list = [{ name: "default", template: CHATML }, { name: "tool_use", template: "TOOLS" }];
    assert.equal(selectChatTemplate(list), CHATML);
    assert.equal(renderChat(list, CONVERSATION, { templateName: "tool_use" }), "TOOLS");
    assert.throws(() => selectChatTemplate(list, "rag"), /No chat template named "rag"/);
  });

  await t.step("no template or a broken one is a clear error", () => {
    for (const missing of [undefined, "", []]) {
      assert.throws(() => renderChat(missing, CONVERSATION), /has no chat template/);
    }
    assert.throws(() => renderChat("{% for %}", CONVERSATION), ChatTemplateError);
    assert.throws(
      () => renderChat(CHATML, [{ role: "user" }] as { role: string; content: string }[]),
      TypeError,
    );
  });

  await t.step("a synthetic model's template tokenizes to its control tokens", () => {
    const syn = buildSyntheticTokenizer({ kind: "gpt2", vocabSize: 1000, pre: "qwen2" });
    const metadata = new Map(syn.ggufKVs.map((kv) => [kv.key, kv]));
    const tok = ggufTokenizer(metadata);
    assert.equal(tok.chatTemplate, syn.tokenizerConfig.chat_template);
    const text = renderChat(tok.chatTemplate, [{ role: "user", content: "Hi" }]);
    assert.equal(text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    const ids = tok.encode(text, { parseSpecial: true });
    const imStart = tok.tokenId("<|im_start|>")!;
    assert.equal(ids[0], imStart);
    assert.equal(ids.filter((id) => id === imStart).length, 2);
    assert.ok(tok.eosIds.includes(tok.tokenId("<|im_end|>")!));
  });
});
