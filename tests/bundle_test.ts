/**
 * Neuron-bundle files (core/bundle_format.ts, core/pack.ts, cli/pack.ts): packing small synthetic
 * ReLU models and reading every bundle back byte for byte (gate and up rows against the GGUF's,
 * down columns against the model's W_down and the native transposition, zero padding, hot-first
 * order), single- and two-phase, at several alignments; and every way a bundle file can be wrong
 * for a model is refused with a SparrowError naming what differs.
 *
 * Everything is exact: bundles are copies of bytes, so there is no tolerance.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { bundleKeys, type BundleLayout, bundleLayout, readBundleFile, roundUp } from "../core/bundle_format.ts";
import { calibrate } from "../core/calibrate.ts";
import { SparrowError, unwrap } from "../core/errors.ts";
import { core, lastError } from "../core/ffi.ts";
import { readGguf } from "../core/gguf.ts";
import { gv, writeGguf } from "../core/gguf_writer.ts";
import { loadModel, type Model } from "../core/model.ts";
import { modelFingerprint } from "../core/model_fingerprint.ts";
import { hotFirstOrder } from "../core/neuron_order.ts";
import { packBundles, type PackOptions } from "../core/pack.ts";
import { readSidecar } from "../core/sidecar.ts";
import { writeSidecar } from "../core/sidecar_writer.ts";
import { packCommand } from "../cli/pack.ts";
import { UsageError } from "../cli/args.ts";
import { synthesizeModel } from "../models/synth.ts";
import { preloadNativeLibraries, refuses } from "./_models.ts";

preloadNativeLibraries();

const shape = { dim: 64, ffnDim: 192, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 300, contextLength: 256 };
const calibrationText = "The sparrow sat on the fence and watched the rain fall over the quiet fields. ".repeat(30);

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "sparrow_bundle_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A sparse ReLU synthetic model of `weightType`, loaded. */
async function reluModel(dir: string, weightType: "q4_0" | "f16", seed = 3): Promise<Model> {
  const path = join(dir, `${weightType}-${seed}.gguf`);
  synthesizeModel(path, { shape, activation: "relu", weightType, sparseFfn: {}, seed });
  return await loadModel(path, { threads: 2, contextLength: 256, batchSize: 64 });
}

/** Neuron frequencies with many ties, so the order's tie-break (lower index first) matters. */
function madeUpFreq(layer: number, n: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => ((i * 37 + layer * 11) % 13) / 13);
}

/** A sidecar with zero predictors and {@link madeUpFreq} frequencies, for `model`. */
async function madeUpSidecar(model: Model, path: string): Promise<void> {
  const hp = model.info.hparams;
  const rank = 8;
  writeSidecar(path, {
    modelName: model.info.name,
    modelFingerprint: await model.fingerprint(),
    nLayers: hp.nLayers,
    dim: hp.dim,
    ffnDim: hp.ffnDim,
    activation: hp.activation,
    targets: [NaN],
    calibrationTokens: 0,
    layers: Array.from({ length: hp.nLayers }, (_, l) => ({
      fc1: new Float32Array(rank * hp.dim),
      fc2: new Float32Array(hp.ffnDim * rank),
      bias: new Float32Array(hp.ffnDim),
      rank,
      neuronFreq: madeUpFreq(l, hp.ffnDim),
      catsThresholds: Float32Array.of(0),
      scoreThresholds: Float32Array.of(0),
      recall: Float32Array.of(NaN),
      predictedRatio: Float32Array.of(NaN),
    })),
  });
}

/** A PowerInfer predictor file (magic PWRI): predictors, no neuron frequencies. */
function powerInferSidecar(path: string, hp: { nLayers: number; dim: number; ffnDim: number }): void {
  const rank = 16;
  const tensors = [];
  for (let l = 0; l < hp.nLayers; l++) {
    tensors.push({
      name: `blk.${l}.fc1.weight`,
      dims: [hp.dim, rank],
      type: 0,
      data: new Uint8Array(hp.dim * rank * 4),
    });
    tensors.push({
      name: `blk.${l}.fc2.weight`,
      dims: [rank, hp.ffnDim],
      type: 0,
      data: new Uint8Array(hp.ffnDim * rank * 4),
    });
  }
  writeGguf(path, [["powerinfer.sparse_threshold", gv.f32(0)]], tensors);
  const file = Deno.openSync(path, { write: true });
  try {
    file.writeSync(new TextEncoder().encode("PWRI"));
  } finally {
    file.close();
  }
}

/** Layer `layer`'s W_down transposed by the core (type `type`), in the model's own neuron order. */
function transposedDown(model: Model, layer: number, type: number, rowBytes: number): Uint8Array {
  const hp = model.info.hparams;
  const identity = Uint32Array.from({ length: hp.ffnDim }, (_, i) => i);
  const out = new Uint8Array(rowBytes * hp.ffnDim);
  unwrap(
    core().sp_transpose_down(
      model.native.pointer,
      layer,
      type,
      new Uint8Array(identity.buffer),
      BigInt(hp.ffnDim),
      out,
      BigInt(out.length),
      1,
    ),
    () => lastError(null, null),
  );
  return out;
}

/** Column `n` of an F16 W_down ([ffn, dim]: dim rows of ffn elements) as dim F16 values. */
function f16Column(down: Uint8Array, ffn: number, dim: number, n: number): Uint8Array {
  const out = new Uint8Array(dim * 2);
  for (let j = 0; j < dim; j++) out.set(down.subarray((j * ffn + n) * 2, (j * ffn + n) * 2 + 2), j * 2);
  return out;
}

/**
 * Packs `model` with `options` and checks the file against the model byte for byte; `wantOrder`
 * gives each layer's expected order (position -> neuron).
 */
async function packAndCheck(
  model: Model,
  sidecar: string,
  out: string,
  options: PackOptions,
  wantOrder: (layer: number) => ArrayLike<number>,
): Promise<BundleLayout> {
  const hp = model.info.hparams;
  let reports = 0;
  const summary = await packBundles(model, sidecar, out, { ...options, threads: 2, onProgress: () => reports++ });
  assert.ok(reports >= hp.nLayers, `progress reported ${reports} times`);
  const b = readBundleFile(out, hp, { model: await model.fingerprint(), sidecar: await modelFingerprint(sidecar) });
  const layout = b.layout;
  const alignment = options.alignment ?? 4096;
  assert.equal(layout.alignment, alignment);
  assert.equal(layout.twoPhase, options.twoPhase ?? false);
  assert.equal(summary.fileBytes, Deno.statSync(out).size);
  assert.equal(b.fileSize, summary.fileBytes);
  assert.equal(summary.bundleBytes, layout.storedBytes * hp.ffnDim * hp.nLayers);
  assert.equal(summary.paddingBytes, (layout.storedBytes - layout.payloadBytes) * hp.ffnDim * hp.nLayers);
  assert.throws(() => Deno.statSync(`${out}.partial`), Deno.errors.NotFound);

  const gguf = model.gguf;
  const modelBytes = Deno.readFileSync(model.info.path);
  const bundleBytes = Deno.readFileSync(out);
  const tensorBytes = (name: string) => {
    const t = gguf.tensors.get(name)!;
    return modelBytes.subarray(t.offset, t.offset + t.nBytes);
  };
  for (let l = 0; l < hp.nLayers; l++) {
    const layer = b.layers[l];
    assert.deepEqual(Array.from(layer.order), Array.from(wantOrder(l)), `layer ${l} order`);
    const rows = {
      gate: tensorBytes(`blk.${l}.ffn_gate.weight`),
      up: tensorBytes(`blk.${l}.ffn_up.weight`),
    };
    const down = transposedDown(model, l, layout.down.type, layout.down.bytes);
    const sourceDown = gguf.tensors.get(`blk.${l}.ffn_down.weight`)!;
    const exactDown = sourceDown.type === 1 && layout.down.type === 1 ? tensorBytes(sourceDown.name) : undefined;
    for (const region of layer.regions) {
      assert.equal(region.offset % alignment, 0, `${region.tensor} offset ${region.offset}`);
      assert.equal(region.stride % alignment, 0);
      for (let k = 0; k < hp.ffnDim; k++) {
        const n = layer.order[k];
        const at = region.offset + k * region.stride;
        for (const part of region.parts) {
          const got = bundleBytes.subarray(at + part.offset, at + part.offset + part.bytes);
          const want = part.kind === "down"
            ? down.subarray(n * part.bytes, (n + 1) * part.bytes)
            : rows[part.kind].subarray(n * part.bytes, (n + 1) * part.bytes);
          assert.deepEqual(got, want, `${region.tensor} bundle ${k} (neuron ${n}) ${part.kind}`);
          // F16 models keep W_down exactly: the down column is the source's column n, element by element.
          if (part.kind === "down" && exactDown) {
            assert.deepEqual(got, f16Column(exactDown, hp.ffnDim, hp.dim, n), `${region.tensor} bundle ${k} column`);
          }
        }
        const padding = bundleBytes.subarray(at + region.payload, at + region.stride);
        assert.ok(padding.every((x) => x === 0), `${region.tensor} bundle ${k}: padding is not zero`);
      }
    }
  }
  return layout;
}

/** Overwrites the u32 value of metadata key `key` in a GGUF header. */
function patchU32(path: string, key: string, value: number): void {
  const bytes = Deno.readFileSync(path);
  const keyBytes = new TextEncoder().encode(key);
  const needle = new Uint8Array(8 + keyBytes.length);
  new DataView(needle.buffer).setBigUint64(0, BigInt(keyBytes.length), true);
  needle.set(keyBytes, 8);
  let at = -1;
  for (let i = 0; i + needle.length <= 1 << 16 && at < 0; i++) {
    if (needle.every((b, j) => bytes[i + j] === b)) at = i;
  }
  assert.ok(at >= 0, `key ${key} not found in ${path}`);
  const valueAt = at + needle.length + 4; // after the key and its u32 value type
  assert.equal(new DataView(bytes.buffer).getUint32(at + needle.length, true), 4, `${key} is a u32`);
  new DataView(bytes.buffer).setUint32(valueAt, value, true);
  Deno.writeFileSync(path, bytes);
}

Deno.test("bundle layout: part offsets and strides as the format says", () => {
  // A 7B Q4_0 model: gate and up rows of 2304 bytes, Q8_0 down columns of 4352 bytes.
  const single = bundleLayout({ dim: 4096, gateType: 2, upType: 2, downType: 8 });
  assert.deepEqual(single.regions.map((r) => [r.name, r.stride, r.payload]), [["bundles", 12288, 8960]]);
  assert.deepEqual(single.regions[0].parts.map((p) => [p.kind, p.offset, p.bytes]), [
    ["gate", 0, 2304],
    ["up", 2304, 2304],
    ["down", 4608, 4352],
  ]);
  const two = bundleLayout({ dim: 4096, gateType: 2, upType: 2, downType: 8, twoPhase: true, alignment: 512 });
  assert.deepEqual(two.regions.map((r) => [r.name, r.stride]), [["gate_bundles", 2560], ["updown_bundles", 6656]]);
  assert.deepEqual(two.regions[1].parts.map((p) => [p.kind, p.offset]), [["up", 0], ["down", 2304]]);
  assert.equal(two.storedBytes, 2560 + 6656);
  for (const alignment of [256, 1000, 131072]) {
    assert.throws(
      () => bundleLayout({ dim: 4096, gateType: 2, upType: 2, downType: 8, alignment }),
      (e: unknown) => e instanceof SparrowError && e.code === "invalid_argument" && /power of two/.test(e.message),
    );
  }
  assert.throws(
    () => bundleLayout({ dim: 48, gateType: 2, upType: 2, downType: 8 }),
    (e: unknown) => e instanceof SparrowError && /48 elements.*Q4_0/.test(e.message),
  );
});

Deno.test("pack round trip: Q4_0 ReLU model, calibrated sidecar, single- and two-phase", async () => {
  await withDir(async (dir) => {
    using model = await reluModel(dir, "q4_0");
    const sidecar = join(dir, "m.sparsity.gguf");
    await calibrate(model, sidecar, { text: calibrationText, tokens: 128, rank: 16, epochs: 1 });
    const hp = model.info.hparams;
    const hot = hotFirstOrder(readSidecar(sidecar, hp, await model.fingerprint()), hp);
    const order = (l: number) => hot.subarray(l * hp.ffnDim, (l + 1) * hp.ffnDim);
    // A calibrated order that were the identity would not show a bundle taken from the wrong neuron.
    assert.ok(order(0).some((n, k) => n !== k), "the hot-first order differs from the model's");
    const single = await packAndCheck(model, sidecar, join(dir, "a.bundles"), {}, order);
    assert.deepEqual([single.gate.bytes, single.up.bytes, single.down.bytes, single.down.type], [36, 36, 68, 8]);
    assert.equal(single.regions[0].stride, 4096);
    const two = await packAndCheck(
      model,
      sidecar,
      join(dir, "b.bundles"),
      { twoPhase: true, alignment: 512, chunkBytes: 5 * 512 + 1 },
      order,
    );
    assert.deepEqual(two.regions.map((r) => r.stride), [512, 512]);
    const q4down = await packAndCheck(
      model,
      sidecar,
      join(dir, "c.bundles"),
      { alignment: 512, downType: "q4_0", chunkBytes: 7 * 512 },
      order,
    );
    assert.deepEqual([q4down.down.type, q4down.down.bytes], [2, 36]);
  });
});

Deno.test("pack round trip: F16 ReLU model, down columns equal W_down's, tied frequencies", async () => {
  await withDir(async (dir) => {
    using model = await reluModel(dir, "f16");
    const sidecar = join(dir, "m.sparsity.gguf");
    await madeUpSidecar(model, sidecar);
    const hp = model.info.hparams;
    // Computed here, not by hotFirstOrder: most frequent first, ties by lower index.
    const order = (l: number) => {
      const f = madeUpFreq(l, hp.ffnDim);
      return Array.from({ length: hp.ffnDim }, (_, i) => i).sort((a, b) => f[b] - f[a] || a - b);
    };
    const hot = hotFirstOrder(readSidecar(sidecar, hp, await model.fingerprint()), hp);
    assert.deepEqual(Array.from(hot.subarray(0, hp.ffnDim)), order(0), "hotFirstOrder agrees with the test's order");
    for (const twoPhase of [false, true]) {
      const layout = await packAndCheck(
        model,
        sidecar,
        join(dir, `m${twoPhase}.bundles`),
        { twoPhase, alignment: 1024, chunkBytes: 3 * 1024 },
        order,
      );
      assert.deepEqual([layout.gate.type, layout.down.type, layout.down.bytes], [1, 1, 128]);
    }
  });
});

Deno.test("pack with a PowerInfer predictor file keeps the model's neuron order", async () => {
  await withDir(async (dir) => {
    using model = await reluModel(dir, "q4_0");
    const sidecar = join(dir, "m.pwri");
    powerInferSidecar(sidecar, model.info.hparams);
    const identity = (_: number) => Array.from({ length: shape.ffnDim }, (_, i) => i);
    await packAndCheck(model, sidecar, join(dir, "m.bundles"), { alignment: 512 }, identity);
    const s = await packBundles(model, sidecar, join(dir, "m.bundles"), { alignment: 512 });
    assert.equal(s.order, "model");
  });
});

Deno.test("bundle files that do not fit the model are refused, naming what differs", async () => {
  await withDir(async (dir) => {
    using model = await reluModel(dir, "q4_0");
    using other = await reluModel(dir, "q4_0", 4);
    const sidecar = join(dir, "m.sparsity.gguf");
    const otherSidecar = join(dir, "other.sparsity.gguf");
    await madeUpSidecar(model, sidecar);
    await madeUpSidecar(other, otherSidecar);
    const hp = model.info.hparams;
    const good = join(dir, "good.bundles");
    await packBundles(model, sidecar, good, { alignment: 512 });
    const fp = await model.fingerprint();
    const sfp = await modelFingerprint(sidecar);
    readBundleFile(good, hp, { model: fp, sidecar: sfp });
    const copy = (name: string) => {
      const path = join(dir, name);
      Deno.copyFileSync(good, path);
      return path;
    };

    // Packed from another model, or with another sidecar.
    await refuses(
      () => readBundleFile(good, hp, { model: "sha256:0" }),
      "bad_model",
      /another model file/,
      /sha256:0/,
    );
    await refuses(() => readBundleFile(good, hp, { model: fp, sidecar: "sha256:1" }), "bad_model", /another sidecar/);
    const theirs = join(dir, "theirs.bundles");
    await packBundles(other, otherSidecar, theirs, { alignment: 512 });
    await refuses(() => readBundleFile(theirs, hp, { model: fp }), "bad_model", /theirs\.bundles/, /another model/);
    // A sidecar calibrated for another model is refused before anything is written.
    await refuses(() => packBundles(model, otherSidecar, join(dir, "x.bundles")), "bad_model", /another model/);
    assert.throws(() => Deno.statSync(join(dir, "x.bundles.partial")), Deno.errors.NotFound);

    // Another version.
    const v2 = copy("v2.bundles");
    patchU32(v2, bundleKeys.version, 2);
    await refuses(() => readBundleFile(v2, hp), "bad_model", /v2\.bundles/, /version 2/, /reads version 1/);

    // Another shape.
    await refuses(() => readBundleFile(good, { ...hp, ffnDim: 256 }), "bad_model", /ffnDim = 192/, /has 256/);
    await refuses(() => readBundleFile(good, { ...hp, nLayers: 3 }), "bad_model", /nLayers = 2/, /has 3/);
    const dims = copy("dims.bundles");
    patchU32(dims, bundleKeys.dim, 128);
    await refuses(() => readBundleFile(dims, hp), "bad_model", /dim = 128/, /has 64/);

    // Truncated: the last region no longer fits.
    const cut = copy("cut.bundles");
    await Deno.truncate(cut, Deno.statSync(cut).size - 100);
    await refuses(() => readBundleFile(cut, hp), "bad_model", /blk\.1\.bundles/, /past the end of the file/);

    // Alignment: not a power of two, out of range, or not the container's.
    for (const [value, pattern] of [[1000, /1000 is not a power of two/], [256, /256 is not/]] as const) {
      const bad = copy(`align${value}.bundles`);
      patchU32(bad, bundleKeys.alignment, value);
      await refuses(() => readBundleFile(bad, hp), "bad_model", pattern);
    }
    const mismatch = copy("mismatch.bundles");
    patchU32(mismatch, bundleKeys.alignment, 1024);
    await refuses(() => readBundleFile(mismatch, hp), "bad_model", /general\.alignment is 512/, /is 1024/);
    const general = copy("general.bundles");
    patchU32(general, "general.alignment", 64);
    await refuses(() => readBundleFile(general, hp), "bad_model", /general\.alignment is 64/);
    await refuses(() => packBundles(model, sidecar, join(dir, "y.bundles"), { alignment: 3000 }), "invalid_argument");

    // Recorded sizes that contradict the types.
    const stride = copy("stride.bundles");
    patchU32(stride, bundleKeys.stride, 1024);
    await refuses(() => readBundleFile(stride, hp), "bad_model", /stride = 1024/, /make it 512/);

    // An order that is not a permutation.
    const dup = copy("dup.bundles");
    const orderAt = readGguf(dup).tensors.get("blk.1.neuron_order")!.offset;
    const file = Deno.openSync(dup, { read: true, write: true });
    try {
      const first = new Uint8Array(4);
      file.seekSync(orderAt, Deno.SeekMode.Start);
      file.readSync(first);
      file.seekSync(orderAt + 4 * 5, Deno.SeekMode.Start);
      file.writeSync(first);
    } finally {
      file.close();
    }
    await refuses(() => readBundleFile(dup, hp), "bad_model", /blk\.1\.neuron_order/, /position 5/);

    // Not a bundle file at all.
    await refuses(() => readBundleFile(model.info.path, hp), "bad_model", /not a neuron bundle file/, /llama/);
  });
});

Deno.test("pack never overwrites its inputs, and removes its partial file on failure", async () => {
  await withDir(async (dir) => {
    using model = await reluModel(dir, "q4_0");
    const sidecar = join(dir, "m.sparsity.gguf");
    await madeUpSidecar(model, sidecar);
    const size = Deno.statSync(model.info.path).size;
    await refuses(() => packBundles(model, sidecar, model.info.path), "invalid_argument", /overwrite the model/);
    await refuses(() => packBundles(model, sidecar, sidecar), "invalid_argument", /overwrite the sidecar/);
    assert.equal(Deno.statSync(model.info.path).size, size);
    // A model closed before packing fails once the partial file exists (at its first layer).
    const out = join(dir, "m.bundles");
    await model.fingerprint();
    model.close();
    await refuses(() => packBundles(model, sidecar, out), "closed");
    assert.throws(() => Deno.statSync(`${out}.partial`), Deno.errors.NotFound);
    assert.throws(() => Deno.statSync(out), Deno.errors.NotFound);
  });
});

Deno.test("sparrow pack: writes a bundle file, refuses bad options", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "m.gguf");
    synthesizeModel(path, { shape, activation: "relu", weightType: "q4_0", sparseFfn: {}, seed: 5 });
    const sidecar = join(dir, "m.sparsity.gguf");
    {
      using model = await loadModel(path, { threads: 1 });
      await madeUpSidecar(model, sidecar);
    }
    await packCommand(["--model", path, "--sidecar", sidecar, "--align", "1024", "--two-phase", "-t", "1"]);
    const b = readBundleFile(join(dir, "m.bundles"), shape);
    assert.deepEqual([b.layout.alignment, b.layout.twoPhase], [1024, true]);
    assert.equal(b.layers[1].regions[1].offset % 1024, 0);
    assert.equal(b.layers[0].regions[0].stride, roundUp(36, 1024));
    for (
      const args of [
        ["--model", path, "--sidecar", sidecar, "--align", "1000"],
        ["--model", path, "--sidecar", sidecar, "--align", "131072"],
        ["--model", path, "--sidecar", sidecar, "--down", "q5_0"],
        ["--model", path],
      ]
    ) {
      await assert.rejects(() => packCommand(args), UsageError, args.join(" "));
    }
  });
});
