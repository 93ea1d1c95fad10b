/**
 * Mutation fuzzing of the whole load path with a real model file. stories260K is converted to GGUF,
 * then thousands of seeded mutations of it are fed through readGguf → loadModel → createSession →
 * evaluate → tokenize + a short greedy completion. Mutations target where parsing and validation
 * happen: bit flips in the metadata prefix (hyperparameters), in the tensor infos and anywhere in
 * the header, a few anywhere in the file (weights), truncations, u64 counts/lengths/dims/offsets
 * overwritten with huge or edge values, u32 type fields and scalar metadata values replaced.
 *
 * Every failure must be a SparrowError with a message; any other exception fails the test with the
 * seed and the mutation printed. A native crash kills the process, which fails the run too.
 *
 * Reproduce one case with SPARROW_FUZZ_SEED=<seed> SPARROW_FUZZ_ONLY=<index>; run longer with
 * SPARROW_FUZZ_COUNT=<n>.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { SparrowError } from "../core/errors.ts";
import { readGguf } from "../core/gguf.ts";
import { GgufValueType as T, scalarValueBytes } from "../core/gguf_types.ts";
import { loadModel } from "../core/model.ts";
import { Rng } from "../core/rng.ts";
import { convertLlama2c } from "../models/convert_llama2c.ts";
import { preloadNativeLibraries, sharedModelsDir, skip } from "./_models.ts";

preloadNativeLibraries();

const seed = Number(Deno.env.get("SPARROW_FUZZ_SEED") ?? 20251124);
const count = Number(Deno.env.get("SPARROW_FUZZ_COUNT") ?? 3200);
const only = Deno.env.get("SPARROW_FUZZ_ONLY");

// ------------------------------------------------------------------------------------------------
// Where the fields of the original file are, found by walking its header.

interface Field {
  at: number;
  what: string;
}
interface ScalarField extends Field {
  type: number;
}
interface Layout {
  /** u64 fields: counts, string and array lengths, dimensions, offsets. */
  u64s: Field[];
  /** u32 fields: version, value types, array element types, dimension counts, tensor types. */
  u32s: Field[];
  /** Scalar metadata values (hyperparameters, token ids, flags). */
  scalars: ScalarField[];
  /** Where each tensor info keeps its type and its data offset. */
  tensors: { name: string; typeAt: number; offsetAt: number }[];
  /** End of the metadata before the big tokenizer arrays: where the hyperparameters live. */
  prefixEnd: number;
  tensorInfoStart: number;
  headerEnd: number;
}

function walkHeader(bytes: Uint8Array): Layout {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const layout: Layout = {
    u64s: [],
    u32s: [],
    scalars: [],
    tensors: [],
    prefixEnd: 0,
    tensorInfoStart: 0,
    headerEnd: 0,
  };
  let pos = 4;
  const u32 = (what: string) => {
    layout.u32s.push({ at: pos, what });
    pos += 4;
    return view.getUint32(pos - 4, true);
  };
  const u64 = (what: string) => {
    layout.u64s.push({ at: pos, what });
    pos += 8;
    return Number(view.getBigUint64(pos - 8, true));
  };
  const str = (what: string) => {
    const n = u64(`length of ${what}`);
    const s = new TextDecoder().decode(bytes.subarray(pos, pos + n));
    pos += n;
    return s;
  };
  u32("version");
  const nTensors = u64("tensor count");
  const nKv = u64("metadata count");
  for (let i = 0; i < nKv; i++) {
    const key = str(`key ${i}`);
    if (key.startsWith("tokenizer.ggml.tokens")) layout.prefixEnd ||= pos;
    const type = u32(`type of ${key}`);
    if (type === T.STRING) str(key);
    else if (type === T.ARRAY) {
      const elemType = u32(`element type of ${key}`);
      const n = u64(`count of ${key}`);
      if (elemType === T.STRING) { for (let j = 0; j < n; j++) str(`${key}[${j}]`); }
      else pos += n * scalarValueBytes[elemType];
    } else {
      layout.scalars.push({ at: pos, what: key, type });
      pos += scalarValueBytes[type];
    }
  }
  layout.tensorInfoStart = pos;
  for (let i = 0; i < nTensors; i++) {
    const name = str(`name of tensor ${i}`);
    const nDims = u32(`n_dims of ${name}`);
    for (let d = 0; d < nDims; d++) u64(`dim ${d} of ${name}`);
    const typeAt = pos;
    u32(`type of ${name}`);
    layout.tensors.push({ name, typeAt, offsetAt: pos });
    u64(`offset of ${name}`);
  }
  layout.headerEnd = pos;
  return layout;
}

// ------------------------------------------------------------------------------------------------
// Mutations: each is a list of byte patches, or a truncation.

interface Mutation {
  kind: string;
  what: string;
  patches: { at: number; bytes: Uint8Array }[];
  truncateTo?: number;
}

const pick = <X>(rng: Rng, xs: readonly X[]): X => xs[rng.nextU32() % xs.length];
const below = (rng: Rng, n: number) => rng.nextU32() % Math.max(1, n);

function u64Bytes(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, v), true);
  return b;
}
function u32Bytes(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
}

/** 1..max byte changes in [lo, hi): single bit flips mostly, sometimes a random byte. */
function flips(rng: Rng, original: Uint8Array, lo: number, hi: number, max: number): Mutation["patches"] {
  const n = 1 + below(rng, max);
  return Array.from({ length: n }, () => {
    const at = lo + below(rng, hi - lo);
    const v = rng.nextFloat() < 0.7 ? original[at] ^ (1 << below(rng, 8)) : rng.nextU32() & 0xff;
    return { at, bytes: Uint8Array.of(v) };
  });
}

function mutate(rng: Rng, original: Uint8Array, layout: Layout): Mutation {
  const size = original.length;
  const view = new DataView(original.buffer, original.byteOffset, original.byteLength);
  const r = rng.nextFloat();
  const describe = (p: Mutation["patches"]) =>
    p.map((x) => `@${x.at}=${Array.from(x.bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`).join(" ");
  if (r < 0.13) {
    const patches = flips(rng, original, 0, layout.prefixEnd, 3);
    return { kind: "flip-prefix", what: describe(patches), patches };
  }
  if (r < 0.26) {
    const patches = flips(rng, original, layout.tensorInfoStart, layout.headerEnd, 3);
    return { kind: "flip-tensor-infos", what: describe(patches), patches };
  }
  if (r < 0.35) {
    const patches = flips(rng, original, 0, layout.headerEnd, 4);
    return { kind: "flip-header", what: describe(patches), patches };
  }
  if (r < 0.43) {
    const patches = flips(rng, original, 0, size, 8);
    return { kind: "flip-anywhere", what: describe(patches), patches };
  }
  if (r < 0.52) {
    const cut = rng.nextFloat() < 0.7 ? below(rng, layout.headerEnd + 64) : below(rng, size);
    return { kind: "truncate", what: `to ${cut} of ${size} bytes`, patches: [], truncateTo: cut };
  }
  if (r < 0.62) {
    // A tensor that still parses but points at other bytes, or reads them as another computable
    // type: the kernels then see arbitrary floats and quant blocks (NaN/Inf scales included).
    const t = pick(rng, layout.tensors);
    const dataStart = Math.ceil(layout.headerEnd / 32) * 32;
    const patches: Mutation["patches"] = [];
    if (rng.nextFloat() < 0.5) patches.push({ at: t.typeAt, bytes: u32Bytes(pick(rng, [0, 1, 2, 3, 6, 7, 8, 30])) });
    if (patches.length === 0 || rng.nextFloat() < 0.5) {
      patches.push({ at: t.offsetAt, bytes: u64Bytes(BigInt(32 * below(rng, (size - dataStart) / 32))) });
    }
    return { kind: "tensor-retarget", what: `${t.name}: ${describe(patches)}`, patches };
  }
  if (r < 0.76) {
    const f = pick(rng, layout.u64s);
    const orig = view.getBigUint64(f.at, true);
    const v = pick(rng, [
      (1n << 64n) - 1n,
      1n << 63n,
      1n << 60n,
      1n << 53n,
      (1n << 53n) + 1n,
      1n << 40n,
      1n << 32n,
      (1n << 32n) - 1n,
      BigInt(size),
      BigInt(size - 1),
      orig + 1n,
      orig * 2n,
      orig - 1n,
      0n,
      1n,
      BigInt(rng.nextU32()) << 32n | BigInt(rng.nextU32()),
    ]);
    return {
      kind: "u64-field",
      what: `${f.what} ${orig} -> ${BigInt.asUintN(64, v)}`,
      patches: [{ at: f.at, bytes: u64Bytes(v) }],
    };
  }
  if (r < 0.86) {
    const f = pick(rng, layout.u32s);
    const v = pick(rng, [below(rng, 14), 14, 16, 24, 28, 30, 39, 77, 0xffffffff, 0x80000000, rng.nextU32()]);
    return { kind: "u32-field", what: `${f.what} -> ${v}`, patches: [{ at: f.at, bytes: u32Bytes(v) }] };
  }
  // A scalar metadata value replaced by an edge value of its type.
  const f = pick(rng, layout.scalars);
  let bytes: Uint8Array;
  let shown: string;
  switch (f.type) {
    case T.FLOAT32: {
      const v = pick(rng, [0, -0, -1, 1, 0.5, NaN, Infinity, -Infinity, 1e-45, 1e-38, 1e30, 3.4e38]);
      bytes = new Uint8Array(new Float32Array([v]).buffer);
      shown = String(v);
      break;
    }
    case T.BOOL:
    case T.UINT8:
    case T.INT8: {
      const v = pick(rng, [0, 1, 2, 127, 128, 255]);
      bytes = Uint8Array.of(v);
      shown = String(v);
      break;
    }
    default: {
      const n = scalarValueBytes[f.type];
      const v = pick(rng, [0, 1, 2, 3, 4, 7, 8, 16, 63, 64, 65, 511, 512, 513, 1024, 65535, 0x7fffffff, 0xffffffff]);
      bytes = new Uint8Array(n);
      if (n === 8) bytes.set(u64Bytes(BigInt(v)));
      else if (n === 4) bytes.set(u32Bytes(v));
      else bytes.set(u32Bytes(v).subarray(0, n));
      shown = String(v);
    }
  }
  return { kind: "metadata-value", what: `${f.what} -> ${shown}`, patches: [{ at: f.at, bytes }] };
}

// ------------------------------------------------------------------------------------------------
// The pipeline one mutated file goes through.

type Stage = "parse" | "load" | "session" | "evaluate" | "generate" | "done";

/** Runs every stage; `at.stage` says where it stopped (the stage that threw, or "done"). */
async function exercise(path: string, at: { stage: Stage }): Promise<void> {
  at.stage = "parse";
  readGguf(path);
  at.stage = "load";
  const model = await loadModel(path, { threads: 1, contextLength: 16 });
  try {
    at.stage = "session";
    const session = model.createSession();
    try {
      at.stage = "evaluate";
      const vocab = model.info.hparams.vocabSize;
      const [logits] = await session.evaluate([0, vocab - 1]);
      assert.equal(logits.length, vocab);
      await session.evaluate([0, vocab - 1, 1 % vocab]); // one more token: the single-token path
      at.stage = "generate";
      const ids = model.tokenize("Once upon a time").slice(0, 8);
      if (ids.length > 0) {
        session.reset();
        await session.complete(ids, { temperature: 0, maxTokens: 2 });
        model.detokenize(ids);
      }
      at.stage = "done";
    } finally {
      session.close();
    }
  } finally {
    model.close();
  }
}

Deno.test("fuzz: thousands of mutated stories260K GGUFs fail only with SparrowErrors", async () => {
  const shared = sharedModelsDir();
  if (!shared) return void skip("../shared/models is absent (stories260K)");
  const dir = await Deno.makeTempDir({ prefix: "sparrow_fuzz_" });
  const path = join(dir, "mutated.gguf");
  try {
    const src = join(shared, "stories260K");
    convertLlama2c(join(src, "stories260K.bin"), join(src, "tok512.bin"), path);
    const original = Deno.readFileSync(path);
    const layout = walkHeader(original);
    assert.ok(layout.prefixEnd > 0 && layout.headerEnd > layout.tensorInfoStart);
    assert.ok(layout.u64s.length > 500 && layout.scalars.length > 10);
    // The control: the unmutated file goes all the way through.
    const control = { stage: "parse" as Stage };
    await exercise(path, control);
    assert.equal(control.stage, "done");

    const file = Deno.openSync(path, { read: true, write: true });
    const reached: Record<string, number> = {};
    const codes: Record<string, number> = {};
    const byKind: Record<string, number> = {};
    const failures: string[] = [];
    let parsed = 0;
    let loaded = 0;
    let evaluated = 0;
    let generated = 0;
    const writeAt = (at: number, bytes: Uint8Array) => {
      file.seekSync(at, Deno.SeekMode.Start);
      let off = 0;
      while (off < bytes.length) off += file.writeSync(bytes.subarray(off));
    };
    const indices = only !== undefined ? [Number(only)] : Array.from({ length: count }, (_, i) => i);
    try {
      for (const i of indices) {
        const rng = new Rng((seed ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0);
        const m = mutate(rng, original, layout);
        byKind[m.kind] = (byKind[m.kind] ?? 0) + 1;
        for (const p of m.patches) writeAt(p.at, p.bytes);
        if (m.truncateTo !== undefined) file.truncateSync(m.truncateTo);
        const at = { stage: "parse" as Stage };
        try {
          await exercise(path, at);
        } catch (e) {
          const where = `seed ${seed} index ${i} (${m.kind}: ${m.what}), at ${at.stage}`;
          if (!(e instanceof SparrowError)) failures.push(`${where}: ${(e as Error)?.stack ?? String(e)}`);
          else {
            codes[e.code] = (codes[e.code] ?? 0) + 1;
            if (!e.message) failures.push(`${where}: empty ${e.code} message`);
          }
        }
        const stage = at.stage;
        reached[stage] = (reached[stage] ?? 0) + 1;
        if (stage !== "parse") parsed++;
        if (stage !== "parse" && stage !== "load") loaded++;
        if (stage === "generate" || stage === "done") evaluated++;
        if (stage === "done") generated++;
        // Undo the mutation.
        if (m.truncateTo !== undefined) writeAt(m.truncateTo, original.subarray(m.truncateTo));
        for (const p of m.patches) writeAt(p.at, original.subarray(p.at, p.at + p.bytes.length));
      }
    } finally {
      file.close();
    }
    assert.deepEqual(Deno.readFileSync(path), original, "every mutation was undone");
    console.log(
      `  fuzz: ${indices.length} mutations (seed ${seed}): ${parsed} parsed, ${loaded} loaded, ` +
        `${evaluated} evaluated, ${generated} also tokenized and generated; ` +
        `stopped at ${JSON.stringify(reached)}; errors by code ${JSON.stringify(codes)}; mutations by kind ${
          JSON.stringify(byKind)
        }`,
    );
    assert.deepEqual(failures, [], `${failures.length} mutation(s) escaped as non-SparrowErrors`);
    if (only === undefined) {
      // The fuzzer must reach every stage often enough to test it.
      assert.ok(indices.length >= 3000);
      assert.ok(parsed >= 0.3 * indices.length, `only ${parsed} parsed`);
      assert.ok(evaluated >= 0.15 * indices.length, `only ${evaluated} evaluated`);
      assert.ok(indices.length - parsed >= 0.3 * indices.length, "most header mutations must be refused");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
