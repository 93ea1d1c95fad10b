/**
 * stories260K (a real tiny Llama from llama2.c), converted by our converter, must reproduce the
 * reference C implementation (llama2.c run.c) token for token: the README's reference output through
 * the CLI, and every case of tests/fixtures/stories260k_llama2c.json through the library.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { convertLlama2c } from "../models/convert_llama2c.ts";
import { loadModel } from "../core/model.ts";
import { preloadNativeLibraries, repoRoot, sharedModelsDir, skip } from "./_models.ts";
import { runCli } from "./_cli.ts";

preloadNativeLibraries();

interface Case {
  prompt: string;
  steps: number;
  prompt_ids: number[];
  ids: number[];
  stdout: string;
}

const reference = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. " +
  "One day, she saw a big, red ball. She wanted to play with it, but it was too high.\nLily";

Deno.test("stories260K through the CLI reproduces the reference output", async () => {
  const shared = sharedModelsDir();
  if (!shared) return void skip("../shared/models is absent");
  const dir = await Deno.makeTempDir();
  try {
    const gguf = join(dir, "stories260K.gguf");
    const conv = await runCli([
      "convert-llama2c",
      "--checkpoint",
      join(shared, "stories260K", "stories260K.bin"),
      "--tokenizer",
      join(shared, "stories260K", "tok512.bin"),
      "--out",
      gguf,
    ]);
    assert.equal(conv.code, 0, conv.stderr);
    // 64 positions in all: BOS + 4 prompt tokens leave 60 to generate.
    const gen = await runCli([
      "generate",
      "--model",
      gguf,
      "--prompt",
      "Once upon a time",
      "-n",
      "60",
      "--temperature",
      "0",
      "--echo",
    ]);
    assert.equal(gen.code, 0, gen.stderr);
    assert.equal(gen.stdout, reference + "\n");
    assert.match(gen.stderr, /load \d+ ms \(weights copied\) \| prefill .* tok\/s\) \| decode 60 tok .* tok\/s\)/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("stories260K matches llama2.c run.c on every fixture prompt, token for token", async () => {
  const shared = sharedModelsDir();
  if (!shared) return void skip("../shared/models is absent");
  const fixture = JSON.parse(await Deno.readTextFile(join(repoRoot, "tests", "fixtures", "stories260k_llama2c.json")));
  const dir = await Deno.makeTempDir();
  try {
    const gguf = join(dir, "stories260K.gguf");
    convertLlama2c(join(shared, "stories260K", "stories260K.bin"), join(shared, "stories260K", "tok512.bin"), gguf);
    using model = await loadModel(gguf, { threads: 2, contextLength: 256 });
    for (const c of fixture.cases as Case[]) {
      const prompt = model.tokenize(c.prompt);
      assert.deepEqual(prompt, [1, ...c.prompt_ids], `prompt ids of ${JSON.stringify(c.prompt)}`);
      using session = model.createSession();
      const want = c.ids.slice(c.prompt_ids.length);
      const got = await session.complete(prompt, { temperature: 0, maxTokens: want.length });
      assert.deepEqual(got.tokens, want, `continuation of ${JSON.stringify(c.prompt)} (${c.steps} steps)`);
      // run.c drops non-printable byte tokens from stdout; compare text where it prints every byte.
      const printable = /^\p{ASCII}*$/u.test(c.prompt);
      if (printable) assert.equal(c.prompt + got.text + "\n", c.stdout, `text of ${JSON.stringify(c.prompt)}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
