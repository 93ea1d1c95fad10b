/**
 * SmolLM2-135M-Instruct Q4_1 (the default model) answers chat questions coherently. Greedy decoding
 * makes the answers deterministic; the checks are on content a working model gets right and a
 * broken one (wrong tokenizer, wrong RoPE, wrong quant kernel) does not.
 */
import assert from "node:assert/strict";
import { formatChat } from "../core/chat_template.ts";
import { loadModel } from "../core/model.ts";
import { preloadNativeLibraries, skip, smollm2Path } from "./_models.ts";

preloadNativeLibraries();

Deno.test("SmolLM2 answers chat questions in coherent English", async () => {
  const path = smollm2Path();
  if (!path) return void skip("the default model is not downloaded (./sparrow fetch-model)");
  using model = await loadModel(path, { threads: 2, contextLength: 512 });
  const template = model.gguf.metadata.get("tokenizer.chat_template") as string;
  const ask = async (question: string) => {
    using session = model.createSession();
    const prompt = formatChat([{ role: "user", content: question }], { template, addGenerationPrompt: true });
    return await session.complete(prompt, { temperature: 0, maxTokens: 48 });
  };
  // These answers were also checked against llama.cpp (node-llama-cpp 3.22.1) on the same file.
  const france = await ask("What is the capital of France? Answer in one sentence.");
  assert.match(france.text, /Paris/, france.text);
  assert.equal(france.stats.stopReason, "stop_token", "the answer should end with <|im_end|>");
  const mars = await ask("Which planet is known as the Red Planet?");
  assert.match(mars.text, /Mars/, mars.text);
  const sky = await ask("What color is the sky on a clear day?");
  assert.match(sky.text, /blue/i, sky.text);
  // Coherent English: mostly dictionary-shaped words, sentences, no replacement characters.
  const story = await ask("Write two sentences about a sparrow.");
  const words = story.text.match(/[A-Za-z']+/g) ?? [];
  assert.ok(words.length >= 10, story.text);
  assert.ok(!story.text.includes("\uFFFD"), story.text);
  assert.match(story.text, /sparrow/i, story.text);
  console.log(
    `  France: ${JSON.stringify(france.text)}\n  Mars: ${JSON.stringify(mars.text)}\n  sky: ${
      JSON.stringify(sky.text)
    }\n  sparrow: ${JSON.stringify(story.text)}`,
  );
});
