/**
 * Offloaded sparse FFNs (neurons read from a bundle file into a budgeted cache through the I/O
 * ring) against the in-memory sparse path on the same model, sidecar and tokens: the logits must
 * be the same bits (the bundles hold the very bytes the in-memory store computes with, and both
 * paths sum the down columns in one fixed order), whatever the bundle layout, budget and I/O
 * method; and every failure (a read error, a truncated file,
 * io_uring unavailable, a budget too small) ends in a clear error or the fallback.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadModel, type Model } from "../core/model.ts";
import { synthesizeModel } from "../models/synth.ts";
import { calibrate } from "../core/calibrate.ts";
import { packBundles } from "../core/pack.ts";
import { core } from "../core/ffi.ts";
import { SparrowError } from "../core/errors.ts";
import type { IoMethod } from "../core/io_ring.ts";
import { maxRelDiff, preloadNativeLibraries } from "./_models.ts";

preloadNativeLibraries();

const shape = { dim: 256, ffnDim: 768, nLayers: 12, nHeads: 8, nKvHeads: 4, vocabSize: 1000, contextLength: 256 };
const tokens = [1, 17, 300, 42, 99, 5, 611, 8, 250, 77, 3, 500];
const text = "The sparrow is a small bird. It lives in cities and fields, and it sings in the morning. ".repeat(40);
const EIO = 5;
const EPERM = 1;

interface Fixture {
  dir: string;
  model: string;
  sidecar: string;
  bundles: string;
  /** The same neurons packed two-phase (gate parts apart from up/down parts). */
  twoPhase: string;
  /** In-memory sparse logits (predictor mode, prompts sparse too) at every position. */
  want: Float32Array[];
}

async function makeFixture(): Promise<Fixture> {
  const dir = await Deno.makeTempDir();
  const model = join(dir, "m.gguf");
  const sidecar = join(dir, "m.sparsity.gguf");
  const bundles = join(dir, "m.bundles");
  const twoPhase = join(dir, "m.two.bundles");
  synthesizeModel(model, { shape, weightType: "q4_0", activation: "relu", sparseFfn: { sparsity: 0.8 }, seed: 3 });
  using m = await loadModel(model, { threads: 2, contextLength: 256, batchSize: 32 });
  await calibrate(m, sidecar, { text, tokens: 400, rank: 32, objective: "subspace" });
  await packBundles(m, sidecar, bundles);
  await packBundles(m, sidecar, twoPhase, { twoPhase: true });
  await m.prepareSparse({ sidecar });
  using s = m.createSession({ allLogits: true, sparse: { mode: "predictor", sidecar, batches: true } });
  const want = await s.evaluate(tokens);
  return { dir, model, sidecar, bundles, twoPhase, want };
}

/**
 * The runtime's share of every plan here: a fixed figure, not the resident set, which moves by tens
 * of MiB between two plans in one process (GC, the JIT): with it measured, "the smallest cache"
 * once held the whole FFN, so everything was pinned and no read could fail.
 */
const runtimeBytes = 256 << 20;

async function offloaded(
  f: Fixture,
  memoryOf: (fixedTotal: number, stride: number) => number,
  ioMethod: IoMethod | "auto" = "auto",
  bundles = f.bundles,
  hotShare?: number,
) {
  // Offloaded FFNs need the weights mapped, not copied ("auto" would copy this small model).
  const model = await loadModel(f.model, { threads: 2, contextLength: 256, batchSize: 32, weights: "map" });
  // A first plan with a generous budget gives the fixed region's size; then the real one.
  const probe = await loadModel(f.model, { threads: 2, contextLength: 256, batchSize: 32, weights: "map" });
  let fixed = 0;
  let stride = 0;
  try {
    const r = await probe.prepareOffload({ sidecar: f.sidecar, bundles, memory: 2 ** 34, ioMethod, runtimeBytes });
    fixed = r.plan.fixed.total;
    stride = r.plan.cacheBytes / (r.plan.hotPerLayer * shape.nLayers + r.plan.coldSlots);
  } finally {
    probe.close();
  }
  const report = await model.prepareOffload({
    sidecar: f.sidecar,
    bundles,
    memory: memoryOf(fixed, stride),
    ioMethod,
    hotShare,
    runtimeBytes,
  });
  return { model, report };
}

function faults(failRead = 0n, errno = 0, shortRead = 0n, shortEof = false, uringOff = 0) {
  core().sp_io_set_faults(failRead, errno, shortRead, shortEof, uringOff, 0);
}

async function evaluate(model: Model, sidecar: string, bundles: string): Promise<Float32Array[]> {
  using s = model.createSession({ allLogits: true, sparse: { mode: "predictor", sidecar, bundles } });
  return await s.evaluate(tokens);
}

function assertEqualToInMemory(f: Fixture, got: Float32Array[]): void {
  for (let p = 0; p < tokens.length; p++) {
    const same = got[p].every((v, i) => Object.is(v, f.want[p][i]));
    assert.ok(same, `position ${p}: logits differ, max relative difference ${maxRelDiff(got[p], f.want[p])}`);
  }
}

/** The smallest neuron cache the plan allows: a layer's neurons, all in the cold region. */
const smallest = (fixed: number, stride: number) => fixed + shape.ffnDim * stride;
/** For the steps that need reads: nothing hot, so the cold region starts empty and the first token reads. */
const noHot = 0;

Deno.test("offloaded sparse FFNs", async (t) => {
  const f = await makeFixture();
  try {
    // Each budget with the share of FFN neurons its plan leaves on disk: none, some, all.
    const budgets: [
      string,
      (fixed: number, stride: number) => number,
      number | undefined,
      (share: number) => boolean,
    ][] = [
      ["everything pinned", () => 2 ** 34, undefined, (share) => share === 0],
      [
        "half of the FFN on disk",
        (fixed, stride) => fixed + Math.ceil(0.5 * shape.nLayers * shape.ffnDim) * stride,
        undefined,
        (share) => share > 0.4 && share < 1,
      ],
      ["the smallest cache, nothing hot", smallest, noHot, (share) => share === 1],
    ];
    for (const [layout, bundles] of [["single-phase", f.bundles], ["two-phase", f.twoPhase]]) {
      for (const [name, memoryOf, hotShare, onDisk] of budgets) {
        for (const method of ["io_uring", "pread_pool", "mmap"] as const) {
          await t.step(`equal to in-memory sparse logits: ${layout}, ${name}, ${method}`, async () => {
            const { model, report } = await offloaded(f, memoryOf, method, bundles, hotShare);
            try {
              assert.equal(report.io.method, method, report.io.note);
              assert.ok(onDisk(report.plan.offloadedShare), report.plan.explanation);
              assertEqualToInMemory(f, await evaluate(model, f.sidecar, bundles));
            } finally {
              model.close();
            }
          });
        }
      }
    }

    await t.step("in-memory sparse logits are the same bits with 1 and 2 threads", async () => {
      using m = await loadModel(f.model, { threads: 1, contextLength: 256, batchSize: 32 });
      await m.prepareSparse({ sidecar: f.sidecar });
      using s = m.createSession({ allLogits: true, sparse: { mode: "predictor", sidecar: f.sidecar, batches: true } });
      assertEqualToInMemory(f, await s.evaluate(tokens));
    });

    await t.step("the cache is used: hits and misses are counted, and a full cache reads nothing", async () => {
      const small = await offloaded(f, smallest, "auto", f.bundles, noHot);
      try {
        using s = small.model.createSession({ sparse: { mode: "predictor", sidecar: f.sidecar, bundles: f.bundles } });
        await s.evaluate(tokens);
        const st = s.sparseStats();
        assert.ok(st.readBytesPerToken > 0, "a small cache reads from disk");
        assert.ok(st.hitRate > 0 && st.hitRate < 1, `hit rate ${st.hitRate}`);
        // Offloaded, the down columns are summed inside the pipeline: its time counts as rows.
        assert.ok(st.msPerToken.select > 0 && st.msPerToken.rows > 0, JSON.stringify(st.msPerToken));
        assert.equal(st.msPerToken.down, 0);
      } finally {
        small.model.close();
      }
      const big = await offloaded(f, () => 2 ** 34);
      try {
        using s = big.model.createSession({ sparse: { mode: "predictor", sidecar: f.sidecar, bundles: f.bundles } });
        await s.evaluate(tokens);
        const st = s.sparseStats();
        assert.equal(st.readBytesPerToken, 0);
        assert.equal(st.hotHitRate, 1);
      } finally {
        big.model.close();
      }
    });

    // Two-phase: the first reads are gate parts; up/down parts are queued (ahead of gate parts) as
    // gates fire, in an order the disk's timing decides: the failing read moves on until it is one.
    for (
      const [layout, bundles, part] of [
        ["single-phase", f.bundles, /bundle/],
        ["two-phase, a gate part", f.twoPhase, /gate bundle/],
        ["two-phase, an up/down part", f.twoPhase, /up\/down bundle/],
      ] as const
    ) {
      await t.step(`a read error reaches the caller, and the session recovers: ${layout}`, async () => {
        const { model } = await offloaded(f, smallest, "auto", bundles, noHot);
        try {
          using s = model.createSession({
            allLogits: true,
            sparse: { mode: "predictor", sidecar: f.sidecar, bundles },
          });
          let message = "";
          for (let read = 3n; read < 300n && !part.test(message); read += 7n) {
            faults(read, EIO);
            await assert.rejects(s.evaluate(tokens), (e: unknown) => {
              assert.ok(e instanceof SparrowError && e.code === "io", String(e));
              assert.match(e.message, /bundle of layer \d+ neuron position \d+ \(offset \d+\)/);
              message = e.message;
              return true;
            });
            faults();
            s.reset();
          }
          assert.match(message, part);
          assertEqualToInMemory(f, await s.evaluate(tokens));
        } finally {
          faults();
          model.close();
        }
      });
    }

    await t.step("a short read at the end of the file is a truncation error", async () => {
      const { model } = await offloaded(f, smallest, "auto", f.bundles, noHot);
      try {
        using s = model.createSession({ sparse: { mode: "predictor", sidecar: f.sidecar, bundles: f.bundles } });
        faults(0n, 0, 2n, true);
        await assert.rejects(
          s.evaluate(tokens),
          (e: unknown) => e instanceof SparrowError && e.code === "io" && /truncated/.test(e.message),
        );
      } finally {
        faults();
        model.close();
      }
    });

    await t.step("io_uring unavailable: the pread pool takes over and says why", async () => {
      faults(0n, 0, 0n, false, EPERM);
      try {
        const { model, report } = await offloaded(f, smallest, "auto", f.bundles, noHot);
        try {
          assert.equal(report.io.method, "pread_pool");
          assert.match(report.io.note, /io_uring/);
          assertEqualToInMemory(f, await evaluate(model, f.sidecar, f.bundles));
        } finally {
          model.close();
        }
      } finally {
        faults();
      }
    });

    await t.step("a truncated bundle file is refused when opened", async () => {
      const cut = join(f.dir, "cut.bundles");
      const bytes = await Deno.readFile(f.bundles);
      await Deno.writeFile(cut, bytes.subarray(0, bytes.length - 5000));
      using m = await loadModel(f.model, { threads: 2, weights: "map" });
      await assert.rejects(
        m.prepareOffload({ sidecar: f.sidecar, bundles: cut, memory: 2 ** 34 }),
        (e: unknown) => e instanceof SparrowError && e.code === "bad_model" && e.message.includes(cut),
      );
    });

    await t.step("a budget too small names the minimum; a negative runtime size is refused", async () => {
      using m = await loadModel(f.model, { threads: 2, weights: "map" });
      await assert.rejects(
        m.prepareOffload({ sidecar: f.sidecar, bundles: f.bundles, memory: 1 << 20 }),
        (e: unknown) =>
          e instanceof SparrowError && e.code === "invalid_argument" && /give at least \d+ MiB/.test(e.message),
      );
      await assert.rejects(
        m.prepareOffload({ sidecar: f.sidecar, bundles: f.bundles, memory: 2 ** 34, runtimeBytes: -1 }),
        (e: unknown) => e instanceof SparrowError && e.code === "invalid_argument" && /runtime size -1/.test(e.message),
      );
    });

    await t.step("offloaded FFNs refuse oracle mode and a second session", async () => {
      const { model } = await offloaded(f, () => 2 ** 34);
      try {
        assert.throws(
          () => model.createSession({ sparse: { mode: "oracle", sidecar: f.sidecar, bundles: f.bundles } }),
          (e: unknown) => e instanceof SparrowError && /predictor mode only/.test(e.message),
        );
        using first = model.createSession({ sparse: { mode: "predictor", sidecar: f.sidecar, bundles: f.bundles } });
        assert.throws(
          () => model.createSession({ sparse: { mode: "predictor", sidecar: f.sidecar, bundles: f.bundles } }),
          (e: unknown) => e instanceof SparrowError && e.code === "busy",
        );
        void first;
      } finally {
        model.close();
      }
    });
  } finally {
    faults();
    await Deno.remove(f.dir, { recursive: true });
  }
});
