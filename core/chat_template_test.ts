import assert from "node:assert/strict";
import { detectChatFormat, formatChat, templateDefaultSystem } from "./chat_template.ts";
import { SparrowError } from "./errors.ts";

/** SmolLM2-135M-Instruct's tokenizer.chat_template, as stored in its GGUF (real newlines). */
const smollm2Template = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}" +
  "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}" +
  "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const smolSystem = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

Deno.test("chat: SmolLM2 template inserts its default system prompt", () => {
  assert.equal(templateDefaultSystem(smollm2Template), smolSystem);
  assert.equal(
    formatChat([{ role: "user", content: "Hi!" }], { template: smollm2Template }),
    `<|im_start|>system\n${smolSystem}<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n`,
  );
});

Deno.test("chat: an explicit system message replaces the default; multi-turn; no generation prompt", () => {
  const text = formatChat(
    [
      { role: "system", content: "Be brief." },
      { role: "user", content: "2+2?" },
      { role: "assistant", content: "4" },
      { role: "user", content: "and 3+3?" },
    ],
    { template: smollm2Template, addGenerationPrompt: false },
  );
  assert.equal(
    text,
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n" +
      "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nand 3+3?<|im_end|>\n",
  );
});

Deno.test("chat: defaultSystem option, templates with escaped newlines or no default, empty conversations", () => {
  const user = [{ role: "user" as const, content: "x" }];
  assert.match(
    formatChat(user, { template: smollm2Template, defaultSystem: "Custom." }),
    /^<\|im_start\|>system\nCustom\.<\|im_end\|>/,
  );
  const escaped = "{{ '<|im_start|>system\\nYou are Qwen, \\'helpful\\'.<|im_end|>\\n' }}";
  assert.equal(templateDefaultSystem(escaped), undefined); // quotes inside end the literal: not a plain default
  assert.equal(templateDefaultSystem("{{ '<|im_start|>system\\nBe kind.\\tOK<|im_end|>\\n' }}"), "Be kind.\tOK");
  const plainChatml =
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}";
  assert.equal(templateDefaultSystem(plainChatml), undefined);
  assert.equal(formatChat(user, { template: plainChatml }), "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n");
  assert.equal(formatChat([], { template: smollm2Template }), "<|im_start|>assistant\n");
});

Deno.test("chat: no template gives the plain fallback", () => {
  assert.equal(detectChatFormat(undefined), "plain");
  assert.equal(
    formatChat([{ role: "system", content: "S" }, { role: "user", content: "Hi" }, {
      role: "assistant",
      content: "Yo",
    }]),
    "System: S\nUser: Hi\nAssistant: Yo\nAssistant:",
  );
  assert.equal(formatChat([{ role: "user", content: "Hi" }], { addGenerationPrompt: false }), "User: Hi\n");
});

Deno.test("chat: unknown templates are unsupported, naming their first 60 characters", () => {
  const llama3 =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' %}";
  assert.throws(
    () => formatChat([{ role: "user", content: "x" }], { template: llama3 }),
    (e: unknown) =>
      e instanceof SparrowError && e.code === "unsupported" &&
      e.message.includes(JSON.stringify(llama3.slice(0, 60))) &&
      !e.message.includes(llama3.slice(0, 61)),
  );
  assert.throws(
    () => formatChat([{ role: "tool" as "user", content: "x" }], { template: smollm2Template }),
    (e: unknown) => e instanceof SparrowError && e.code === "invalid_argument" && /"tool"/.test(e.message),
  );
});
