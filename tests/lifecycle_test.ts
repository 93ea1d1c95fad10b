/**
 * Lifecycles and misuse of models and sessions on a real tiny model (stories260K, converted into a
 * temp dir): closing while in use, using closed handles, concurrent calls, the context limit, bad
 * token ids and options, disposal, prefix reuse, aborting, stop strings and seeded sampling. Every
 * misuse must be a SparrowError with the documented code; none may crash or corrupt the session.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { SparrowError, type SparrowErrorCode } from "../core/errors.ts";
import { readGguf } from "../core/gguf.ts";
import { loadModel, type Model } from "../core/model.ts";
import type { GenerationStats, Session } from "../core/session.ts";
import { convertLlama2c } from "../models/convert_llama2c.ts";
import { mappingsOf, preloadNativeLibraries, sharedModelsDir, skip } from "./_models.ts";

preloadNativeLibraries();

const prompt = "Once upon a time";

/** An assert.throws / assert.rejects validator for a SparrowError of `code` matching `re`. */
const sparrowError = (code: SparrowErrorCode, re: RegExp = /./) => (e: unknown): boolean => {
  assert.ok(e instanceof SparrowError, `not a SparrowError: ${String(e)}`);
  assert.equal(e.code, code, e.message);
  assert.match(e.message, re);
  return true;
};

/** Converts stories260K into a temp dir and passes its path; skips when the shared models are absent. */
async function withStories(fn: (path: string, dir: string) => Promise<void>): Promise<void> {
  const shared = sharedModelsDir();
  if (!shared) return void skip("../shared/models is absent (stories260K)");
  const src = join(shared, "stories260K");
  const dir = await Deno.makeTempDir({ prefix: "sparrow_lifecycle_" });
  try {
    const path = join(dir, "stories260K.gguf");
    convertLlama2c(join(src, "stories260K.bin"), join(src, "tok512.bin"), path);
    await fn(path, dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function withModel(fn: (model: Model, path: string) => Promise<void>): Promise<void> {
  await withStories(async (path) => {
    const model = await loadModel(path, { threads: 1, contextLength: 64 });
    try {
      await fn(model, path);
    } finally {
      model.close();
    }
  });
}

/** Drains a generation, returning its text, tokens and stats. */
async function drain(
  gen: AsyncGenerator<
    { type: "token"; token: number; text: string } | { type: "done"; text: string; stats: GenerationStats }
  >,
  text = "",
): Promise<{ text: string; tokens: number[]; stats: GenerationStats }> {
  const tokens: number[] = [];
  for await (const ev of gen) {
    text += ev.text;
    if (ev.type === "token") tokens.push(ev.token);
    else return { text, tokens, stats: ev.stats };
  }
  throw new Error("no done event");
}

Deno.test("lifecycle: close order — model busy while a session is open; double closes are safe", async () => {
  await withStories(async (path) => {
    const model = await loadModel(path, { threads: 1, contextLength: 32 });
    const a = model.createSession();
    const b = model.createSession();
    assert.throws(() => model.close(), sparrowError("busy", /2 open session/));
    a.close();
    a.close(); // safe twice
    assert.throws(() => model.close(), sparrowError("busy", /1 open session/));
    await b.evaluate([1, 2, 3]); // the model still works after a refused close
    b.close();
    model.close();
    model.close(); // safe twice
    assert.throws(() => model.createSession(), sparrowError("closed", /is closed/));
    b.close(); // a session closed before its model: still safe
  });
});

Deno.test("lifecycle: a closed session refuses evaluate, generate and complete with 'closed'", async () => {
  await withModel(async (model) => {
    const session = model.createSession();
    await session.evaluate([1, 2]);
    session.close();
    await assert.rejects(() => session.evaluate([1, 2, 3]), sparrowError("closed"));
    await assert.rejects(() => session.complete(prompt, { maxTokens: 2 }), sparrowError("closed"));
    await assert.rejects(() => session.generate(prompt).next(), sparrowError("closed"));
    // The same prompt as the cached one: reuse must not skip the check.
    await assert.rejects(() => session.evaluate([1, 2]), sparrowError("closed"));
  });
});

Deno.test("lifecycle: concurrent use of one session is 'busy'; closing during a generation is refused and it goes on", async () => {
  await withModel(async (model) => {
    const reference = await drain(model.generate(prompt, { temperature: 0, maxTokens: 12 }));
    const session = model.createSession();
    const gen = session.generate(prompt, { temperature: 0, maxTokens: 12 });
    const first = await gen.next();
    assert.ok(!first.done && first.value.type === "token");
    await assert.rejects(() => session.generate("Hello").next(), sparrowError("busy", /already generating/));
    await assert.rejects(() => session.complete("Hello"), sparrowError("busy"));
    await assert.rejects(() => session.evaluate([1, 2]), sparrowError("busy"));
    assert.throws(() => session.close(), sparrowError("busy", /while it is generating/));
    assert.throws(() => model.close(), sparrowError("busy"));
    const rest = await drain(gen, first.value.text);
    assert.equal(rest.text, reference.text, "the generation continued undisturbed");
    assert.equal(rest.stats.stopReason, "max_tokens");
    // Two completions started together: exactly one runs, the other is refused.
    const [x, y] = await Promise.allSettled([
      session.complete(prompt, { temperature: 0, maxTokens: 4 }),
      session.complete(prompt, { temperature: 0, maxTokens: 4 }),
    ]);
    assert.equal(x.status, "fulfilled");
    assert.equal(y.status, "rejected");
    sparrowError("busy")((y as PromiseRejectedResult).reason);
    session.close();
  });
});

Deno.test("lifecycle: the context limit — context_full errors, and a generation that reaches it stops", async () => {
  await withModel(async (model) => {
    using session = model.createSession({ contextLength: 8 });
    await assert.rejects(
      () => session.evaluate([1, 2, 3, 4, 5, 6, 7, 8, 9]),
      sparrowError("context_full", /context of 8 tokens/),
    );
    await assert.rejects(
      () => session.complete("Once upon a time there was a big dog who liked to run", { maxTokens: 1 }),
      sparrowError("context_full", /the prompt has \d+ tokens; the context holds 8/),
    );
    // Refused calls leave the session usable.
    const [logits] = await session.evaluate([1, 2, 3, 4, 5, 6, 7, 8]);
    assert.ok(logits.every(Number.isFinite));
    // Evaluating a sequence exactly as long as the context is fine; one more token is not.
    await assert.rejects(() => session.evaluate([1, 2, 3, 4, 5, 6, 7, 8, 9]), sparrowError("context_full"));
    session.reset();
    const ids = model.tokenize(prompt);
    const out = await session.complete(prompt, { temperature: 0, maxTokens: 100 });
    assert.equal(out.stats.stopReason, "context_full");
    assert.ok(out.stats.generatedTokens >= 1);
    assert.ok(ids.length + out.stats.generatedTokens <= 8 + 1, "at most one token past the last cached position");
  });
});

Deno.test("lifecycle: token ids outside the vocabulary and empty inputs are invalid_argument", async () => {
  await withModel(async (model) => {
    using session = model.createSession();
    const vocab = model.info.hparams.vocabSize;
    for (const bad of [vocab, vocab + 1000, -1, 1.5, NaN, 2 ** 32]) {
      await assert.rejects(() => session.evaluate([1, bad]), sparrowError("invalid_argument", /token id/), `id ${bad}`);
      await assert.rejects(
        () => session.complete([1, bad], { maxTokens: 1 }),
        sparrowError("invalid_argument", /token id/),
        `id ${bad}`,
      );
    }
    await assert.rejects(() => session.evaluate([]), sparrowError("invalid_argument", /no token ids/));
    await assert.rejects(() => session.complete([]), sparrowError("invalid_argument", /prompt is empty/));
    await assert.rejects(() => session.complete("", { addBos: false }), sparrowError("invalid_argument", /empty/));
    // Still usable.
    assert.equal((await session.evaluate([1, vocab - 1]))[0].length, vocab);
  });
});

Deno.test("lifecycle: threads, batchSize, contextLength and generation options out of range are invalid_argument", async () => {
  await withStories(async (path) => {
    const badLoads = [
      { threads: 0 },
      { threads: 257 },
      { threads: 1.5 },
      { threads: NaN },
      { contextLength: 0 },
      { contextLength: (1 << 20) + 1 },
      { contextLength: -5 },
      { batchSize: 0 },
      { batchSize: 4097 },
      { batchSize: 0.5 },
    ];
    for (const options of badLoads) {
      await assert.rejects(
        () => loadModel(path, options),
        sparrowError("invalid_argument", new RegExp(Object.keys(options)[0])),
        JSON.stringify(options),
      );
    }
    await assert.rejects(
      () => loadModel(path, { backend: "tpu" }).then((m) => m.createSession()),
      sparrowError("invalid_argument", /unknown backend 'tpu'/),
    );
    using model = await loadModel(path, { threads: 1, contextLength: 32 });
    for (const options of badLoads) {
      assert.throws(
        () => model.createSession(options),
        sparrowError("invalid_argument", new RegExp(Object.keys(options)[0])),
        JSON.stringify(options),
      );
    }
    using session = model.createSession();
    const badGenerate = [
      [{ maxTokens: -1 }, /maxTokens/],
      [{ maxTokens: 1.5 }, /maxTokens/],
      [{ temperature: NaN }, /temperature/],
      [{ temperature: 1000 }, /temperature/],
      [{ topP: 2 }, /topP/],
      [{ minP: -0.1 }, /minP/],
      [{ topK: -1 }, /topK/],
      [{ repeatPenalty: 0 }, /repeatPenalty/],
    ] as const;
    for (const [options, re] of badGenerate) {
      await assert.rejects(
        () => session.complete(prompt, options),
        sparrowError("invalid_argument", re),
        JSON.stringify(options),
      );
    }
    assert.equal((await session.complete(prompt, { maxTokens: 0 })).stats.generatedTokens, 0);
  });
});

Deno.test({
  name: "lifecycle: loadModel refusing its options leaves no mapping of the file behind",
  // Regression (was a bug): loadModel opens the native model (maps the file) before the Model constructor checks
  // threads/contextLength/batchSize, and the NativeModel is not closed when that check throws: the
  // mapping stays until the FinalizationRegistry happens to run. Check the options first, or close
  // the native model on failure.
  fn: async () => {
    if (Deno.build.os !== "linux") return void skip("needs /proc/self/maps (Linux)");
    await withStories(async (path) => {
      await assert.rejects(() => loadModel(path, { threads: 0 }), sparrowError("invalid_argument"));
      assert.equal(mappingsOf(path).length, 0, "the refused model's file is still mapped");
    });
  },
});

Deno.test("lifecycle: `using` closes sessions and models at the end of their scope", async () => {
  await withStories(async (path) => {
    let outerModel: Model;
    let outerSession: Session;
    {
      using model = await loadModel(path, { threads: 1, contextLength: 32 });
      outerModel = model;
      {
        using session = model.createSession();
        outerSession = session;
        await session.evaluate([1, 2]);
      }
      await assert.rejects(() => outerSession.evaluate([1, 2]), sparrowError("closed"));
      // The session is gone, so the model can close (the `using` below would throw busy otherwise).
      using again = model.createSession();
      await again.evaluate([1]);
    }
    assert.throws(() => outerModel.createSession(), sparrowError("closed"));
    // Model.generate closes its own session, also when the caller stops early.
    using model = await loadModel(path, { threads: 1, contextLength: 32 });
    for await (const ev of model.generate(prompt, { temperature: 0, maxTokens: 5 })) {
      if (ev.type === "token") break;
    }
    await drain(model.generate(prompt, { temperature: 0, maxTokens: 3 }));
  });
});

Deno.test("lifecycle: a repeated or extended prompt reuses the cached prefix and gives the same greedy text", async () => {
  await withModel(async (model) => {
    using session = model.createSession();
    const ids = model.tokenize(prompt);
    const a = await session.complete(prompt, { temperature: 0, maxTokens: 12 });
    const b = await session.complete(prompt, { temperature: 0, maxTokens: 12 });
    assert.equal(a.stats.cachedTokens, 0);
    assert.equal(b.stats.cachedTokens, ids.length - 1, "all but the last prompt token come from the cache");
    assert.deepEqual(b.tokens, a.tokens);
    assert.equal(b.text, a.text);
    // A conversation re-sending everything: only the new part is evaluated, and the continuation is
    // the one a fresh session computes from scratch.
    const extended = [...ids, ...a.tokens];
    const c = await session.complete(extended, { temperature: 0, maxTokens: 10 });
    assert.ok(c.stats.cachedTokens >= ids.length, `cached ${c.stats.cachedTokens}`);
    using fresh = model.createSession();
    const d = await fresh.complete(extended, { temperature: 0, maxTokens: 10 });
    assert.equal(d.stats.cachedTokens, 0);
    assert.deepEqual(c.tokens, d.tokens);
    // A different prompt shares only BOS.
    const e = await session.complete("The dog", { temperature: 0, maxTokens: 3 });
    assert.equal(e.stats.cachedTokens, 1);
  });
});

Deno.test("lifecycle: an AbortSignal stops a generation with stopReason 'aborted'", async () => {
  await withModel(async (model) => {
    using session = model.createSession();
    const controller = new AbortController();
    let seen = 0;
    let stats: GenerationStats | undefined;
    for await (const ev of session.generate(prompt, { temperature: 0, maxTokens: 40, signal: controller.signal })) {
      if (ev.type === "token" && ++seen === 3) controller.abort();
      if (ev.type === "done") stats = ev.stats;
    }
    assert.equal(stats?.stopReason, "aborted");
    assert.equal(stats?.generatedTokens, 3);
    // Already aborted: nothing is generated.
    const out = await session.complete(prompt, { temperature: 0, maxTokens: 40, signal: AbortSignal.abort() });
    assert.equal(out.stats.stopReason, "aborted");
    assert.equal(out.stats.generatedTokens, 0);
    assert.equal(out.text, "");
    // And the session still generates normally afterwards.
    assert.equal((await session.complete(prompt, { temperature: 0, maxTokens: 4 })).stats.stopReason, "max_tokens");
  });
});

Deno.test("lifecycle: stop strings cut the output before the first match and set stopReason 'stop_string'", async () => {
  await withModel(async (model) => {
    using session = model.createSession();
    const full = await session.complete(prompt, { temperature: 0, maxTokens: 30 });
    assert.ok(full.text.length > 20, `greedy text: ${JSON.stringify(full.text)}`);
    // Stops that start and end mid-token, a whole later word, and a stop that never occurs.
    const stops = [full.text.slice(8, 13), full.text.slice(15, 19)];
    for (const stop of stops) {
      const out = await session.complete(prompt, { temperature: 0, maxTokens: 30, stop: [stop] });
      assert.equal(out.text, full.text.slice(0, full.text.indexOf(stop)), `stop ${JSON.stringify(stop)}`);
      assert.equal(out.stats.stopReason, "stop_string");
    }
    const both = await session.complete(prompt, { temperature: 0, maxTokens: 30, stop: [stops[1], stops[0]] });
    assert.equal(both.text, full.text.slice(0, Math.min(full.text.indexOf(stops[0]), full.text.indexOf(stops[1]))));
    const never = await session.complete(prompt, { temperature: 0, maxTokens: 30, stop: ["\u0000never\u0000"] });
    assert.equal(never.text, full.text, "held-back text is flushed at the end");
    assert.equal(never.stats.stopReason, "max_tokens");
  });
});

Deno.test("lifecycle: a seeded sampled generation is reproducible, and other seeds give other texts", async () => {
  await withModel(async (model) => {
    using session = model.createSession();
    const options = { temperature: 1, maxTokens: 24 };
    const a = await session.complete(prompt, { ...options, seed: 1234 });
    const b = await session.complete(prompt, { ...options, seed: 1234 });
    assert.equal(a.stats.seed, 1234);
    assert.equal(b.text, a.text);
    assert.deepEqual(b.tokens, a.tokens);
    // Fresh session, same seed: same text (the cache plays no part).
    using other = model.createSession();
    assert.equal((await other.complete(prompt, { ...options, seed: 1234 })).text, a.text);
    // An unseeded run reports the seed that reproduces it.
    const r = await session.complete(prompt, options);
    assert.equal((await session.complete(prompt, { ...options, seed: r.stats.seed })).text, r.text);
    // Six seeds at temperature 1 over 24 tokens of a 512-token model: all six texts equal would need
    // the same draw at every one of 24 steps; require at least two distinct texts.
    const texts = new Set<string>();
    for (let seed = 1; seed <= 6; seed++) texts.add((await session.complete(prompt, { ...options, seed })).text);
    assert.ok(texts.size >= 2, `only ${texts.size} distinct text(s)`);
  });
});

Deno.test({
  name: "lifecycle: sampling from a model whose logits are NaN gives valid ids or a clear error",
  // Regression (was a bug): with a NaN logit, Sampler.sample (default minP 0.05) computes a NaN floor, keeps no
  // candidate and returns `undefined`; the session then fails with "token id undefined is outside the
  // vocabulary (0..511)", blaming a token id the caller never gave. Corrupt weights (or an overflow)
  // should give a message about non-finite logits, or NaN entries should be skipped.
  fn: async () => {
    await withStories(async (path) => {
      // Overwrite the final norm with NaN: every logit becomes NaN.
      const norm = readGguf(path).tensors.get("output_norm.weight")!;
      const file = await Deno.open(path, { write: true });
      try {
        await file.seek(norm.offset, Deno.SeekMode.Start);
        const nan = new Float32Array(norm.nElements).fill(NaN);
        await file.write(new Uint8Array(nan.buffer));
      } finally {
        file.close();
      }
      using model = await loadModel(path, { threads: 1, contextLength: 32 });
      using session = model.createSession();
      try {
        const out = await session.complete(prompt, { seed: 1, maxTokens: 3 });
        for (const t of out.tokens) assert.ok(Number.isInteger(t) && t >= 0 && t < 512, `token ${t}`);
      } catch (e) {
        assert.ok(e instanceof SparrowError, String(e));
        assert.doesNotMatch(e.message, /undefined/);
        assert.match(e.message, /NaN|finite/i);
      }
    });
  },
});
