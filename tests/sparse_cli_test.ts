/**
 * The sparse commands through the CLI, as a user runs them, on a tiny synthetic SwiGLU model:
 * `calibrate` writes the sidecar beside the model and prints its table, `eval` prints one curve
 * (table or JSON), `generate --sparse` adds the sparse statistics line, and a predictor without a
 * sidecar is a usage error.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { synthesizeModel } from "../models/synth.ts";
import { runCli } from "./_cli.ts";

Deno.test("sparrow calibrate, eval and generate --sparse on a tiny model", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const model = join(dir, "tiny.gguf");
    synthesizeModel(model, { shape: "tiny", activation: "swiglu", seed: 11 });
    const common = ["--model", model, "--threads", "2"];

    // Without a sidecar, predictor mode says what to do.
    const none = await runCli(["generate", ...common, "--prompt", "a", "-n", "2", "--sparse", "predictor"]);
    assert.equal(none.code, 2, none.stderr);
    assert.match(none.stderr, /--sparse predictor needs a sidecar: give --sidecar, or run 'sparrow calibrate/);

    const cal = await runCli(["calibrate", ...common, "--tokens", "256", "--epochs", "2", "--targets", "0.3,0.5"]);
    assert.equal(cal.code, 0, cal.stderr);
    const sidecar = join(dir, "tiny.sparsity.gguf");
    assert.ok(Deno.statSync(sidecar).size > 0, "sidecar written beside the model");
    const table = cal.stdout.trim().split("\n");
    assert.match(
      table[0],
      /layer\s+rank\s+val loss\s+recall@0\.30\s+pred\/true@0\.30\s+recall@0\.50\s+pred\/true@0\.50/,
    );
    assert.equal(table.length, 1 + 2 + 1, "header, 2 layers, mean");
    assert.match(table[3], /^\s*mean\s+(0\.\d{3}|1\.000)\s+\d+\.\d\d\s+/);
    assert.match(cal.stderr, /recorded \d+ tokens in [\d.]+ s, trained 2 predictors in [\d.]+ s/);
    assert.match(cal.stderr, /wrote .*tiny\.sparsity\.gguf/);

    const ev = await runCli(["eval", ...common, "--tokens", "32", "--decode-tokens", "4"]);
    assert.equal(ev.code, 0, ev.stderr);
    const rows = ev.stdout.trim().split("\n");
    assert.match(rows[0], /\(swiglu\) \| 32 self-sampled tokens, teacher-forced \| dense ppl [\d.]+/);
    assert.match(
      rows[1],
      /target\s+mode\s+sparsity\s+recall\s+cand\/act\s+FFN MB\/tok\s+KL\s+top-1\s+ppl\s+tok\/s\s+speed-up\s+FFN ms sel\/rows\/down$/,
    );
    // Sparse rows end with where their timed decode's FFN time went; dense has no such split.
    assert.match(rows[2], / -$/);
    for (const row of rows.slice(3)) assert.match(row, / \d+\.\d\d\/\d+\.\d\d\/\d+\.\d\d$/);
    assert.deepEqual(rows.slice(2).map((r) => r.trim().split(/\s+/).slice(0, 2).join(" ")), [
      "0 dense",
      "0.30 oracle",
      "0.30 predictor",
      "0.50 oracle",
      "0.50 predictor",
    ]);
    const json = await runCli([
      "eval",
      ...common,
      "--tokens",
      "16",
      "--decode-tokens",
      "0",
      "--targets",
      "0.5",
      "--modes",
      "predictor",
      "--json",
    ]);
    assert.equal(json.code, 0, json.stderr);
    const result = JSON.parse(json.stdout);
    assert.deepEqual(result.points.map((p: { mode: string }) => p.mode), ["dense", "predictor"]);
    assert.equal(result.points[1].target, 0.5);
    assert.ok(result.points[1].sparsity > 0.2, `predictor sparsity ${result.points[1].sparsity}`);

    const gen = await runCli([
      "generate",
      ...common,
      "--prompt",
      "a b c",
      "-n",
      "16",
      "--temperature",
      "0",
      "--sparse",
      "predictor",
      "--sparsity",
      "0.5",
      "--verify-every",
      "1",
    ]);
    assert.equal(gen.code, 0, gen.stderr);
    const lines = gen.stderr.trim().split("\n");
    assert.match(lines.at(-2)!, /decode \d+ tok in/);
    assert.match(
      lines.at(-1)!,
      /^sparrow: sparse predictor 0\.5 \| sparsity 0\.\d{3} \| recall (0\.\d{3}|1\.000) \| \d+\.\d\d candidates\/active \| FFN \d+\.\d\d MB\/token \| FFN time select \d+\.\d\d \+ rows \d+\.\d\d \+ down \d+\.\d\d ms\/token \(\+ \d+\.\d\d verifying recall\)$/,
    );
    const oracle = await runCli(["generate", ...common, "--prompt", "a b c", "-n", "4", "--sparse", "oracle"]);
    assert.equal(oracle.code, 0, oracle.stderr);
    assert.match(oracle.stderr, /sparse oracle \| sparsity 0\.\d{3} \| recall 1 \(oracle\)/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sparrow calibrate --objective subspace, pack and generate --bundles (flash offload)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const model = join(dir, "relu.gguf");
    synthesizeModel(model, { shape: "tiny", activation: "relu", seed: 5 });
    const common = ["--model", model, "--threads", "2"];
    const cal = await runCli(["calibrate", ...common, "--tokens", "256", "--objective", "subspace"]);
    assert.equal(cal.code, 0, cal.stderr);
    const sidecar = join(dir, "relu.sparsity.gguf");

    const pack = await runCli(["pack", "--model", model, "--sidecar", sidecar]);
    assert.equal(pack.code, 0, pack.stderr);
    assert.match(pack.stderr, /packed 2 layers, \d+ neurons .* into .*relu\.bundles/);
    const bundles = join(dir, "relu.bundles");

    const gen = ["generate", ...common, "--prompt", "a b c", "-n", "12", "--temperature", "0", "--sidecar", sidecar];
    // In memory with the prompt computed sparsely too, as offloaded FFNs always do.
    const inMemory = await runCli([...gen, "--sparse-prompt"]);
    assert.equal(inMemory.code, 0, inMemory.stderr);
    const offload = await runCli([...gen, "--bundles", bundles, "--memory", "1G"]);
    assert.equal(offload.code, 0, offload.stderr);
    // Offloading changes where the neurons live, not what is computed.
    assert.equal(offload.stdout, inMemory.stdout);
    assert.match(offload.stderr, /budget 1024(\.0)? MiB: fixed/);
    // The runtime's resident set is measured and planned for (it was 0 when read from /proc, which
    // Deno refuses without --allow-all).
    assert.match(offload.stderr, /fixed \d+ MiB \(runtime [1-9]\d* MiB/);
    assert.match(offload.stderr, /reading bundles with (io_uring|pread_pool|mmap)/);
    // Offloaded FFNs keep the file mapped (their budget holds only what they read); in memory,
    // "auto" copies a model this small.
    assert.match(offload.stderr, /load \d+ ms \(weights mapped\)/);
    assert.match(inMemory.stderr, /load \d+ ms \(weights copied\)/);
    assert.match(
      offload.stderr.trim().split("\n").at(-1)!,
      /cache hit rate (0\.\d{3}|1\.000) \(hot (0\.\d{3}|1\.000)\) \| read \d+\.\d\d MB\/token \| I\/O stall \d+\.\d ms\/token$/,
    );

    // Without --memory: 80% of the available memory.
    const byDefault = await runCli([...gen, "--bundles", bundles]);
    assert.equal(byDefault.code, 0, byDefault.stderr);
    assert.equal(byDefault.stdout, inMemory.stdout);
    assert.match(byDefault.stderr, /budget \d+ MiB: fixed/);

    const tooSmall = await runCli([...gen, "--bundles", bundles, "--memory", "1M"]);
    assert.equal(tooSmall.code, 1, tooSmall.stderr);
    assert.match(tooSmall.stderr, /budget/i);
    const copied = await runCli([...gen, "--bundles", bundles, "--weights", "copy"]);
    assert.equal(copied.code, 2, copied.stderr);
    assert.match(copied.stderr, /--weights copy does not go with --bundles/);
    const misuse = await runCli([...gen, "--memory", "1G"]);
    assert.equal(misuse.code, 2, misuse.stderr);
    assert.match(misuse.stderr, /--memory and --io need --bundles/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
