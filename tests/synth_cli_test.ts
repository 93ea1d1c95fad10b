/**
 * `sparrow synth` as a user runs it: a preset shape in a quantized type loads and `info` reports
 * the shape asked for; explicit sizes override the preset; impossible options are usage errors.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { runCli } from "./_cli.ts";

Deno.test("sparrow synth writes the model asked for, and refuses impossible options", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "m.gguf");
    const w = await runCli(["synth", "--shape", "tiny", "--type", "q4_0", "--layers", "3", "--tied", "-o", path]);
    assert.equal(w.code, 0, w.stderr);
    assert.match(w.stderr, /wrote .*m\.gguf: synthetic .*\(dim 64, ffn 192, 3 layers, 4\/2 heads, vocab 300\)/);
    const info = await runCli(["info", "--model", path, "--json"]);
    assert.equal(info.code, 0, info.stderr);
    const i = JSON.parse(info.stdout);
    assert.equal(i.hparams.nLayers, 3);
    assert.equal(i.hparams.dim, 64);
    assert.equal(i.tiedEmbeddings, true);

    const sparse = await runCli(["synth", "--activation", "relu", "--sparsity", "0.9", "-o", join(dir, "s.gguf")]);
    assert.equal(sparse.code, 0, sparse.stderr);
    assert.match(sparse.stderr, /relu sparsity 0\.9/);

    const bad = await runCli(["synth", "--sparsity", "0.9", "-o", join(dir, "x.gguf")]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--sparsity needs --activation relu or drelu/);
    const badType = await runCli(["synth", "--type", "q3_k", "-o", join(dir, "x.gguf")]);
    assert.equal(badType.code, 2);
    assert.match(badType.stderr, /--type/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
