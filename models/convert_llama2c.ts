/**
 * Converts a llama2.c checkpoint (`.bin`, the "legacy" fp32 export) and its tokenizer (`.bin`) into a
 * GGUF file that sparrow and llama.cpp both load: architecture `llama`, F32 tensors with GGUF names,
 * and a SentencePiece-style (`llama`) tokenizer in the metadata.
 *
 * The checkpoint: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
 * seq_len; a negative vocab_size means the classifier is stored separately), then fp32 tensors in
 * this order: token embedding (vocab, dim), attention norms (layer, dim), wq (layer, dim, dim),
 * wk and wv (layer, kv_dim, dim), wo (layer, dim, dim), FFN norms (layer, dim), w1 (layer, hidden,
 * dim), w2 (layer, dim, hidden), w3 (layer, hidden, dim), final norm (dim), two unused RoPE tables
 * (seq_len, head_size / 2) each, and the classifier (vocab, dim) when not shared. Matrices are
 * (out, in) row-major, which is GGUF's [in, out]. llama2.c rotates interleaved pairs, as llama.cpp
 * does for `llama`, so Q and K need no permutation.
 *
 * @module
 */
import { SparrowError } from "../core/errors.ts";
import { gv, type TensorToWrite, type TypedValue, writeGguf } from "../core/gguf_writer.ts";
import { llama2cTokenizerMetadata, readLlama2cTokenizer } from "./llama2c_tokenizer.ts";

/** Header of a llama2.c checkpoint. */
export interface Llama2cConfig {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  vocabSize: number;
  seqLen: number;
  sharedClassifier: boolean;
}

const f32 = 0; // GGML type id

/**
 * Reads and checks the header of a llama2.c checkpoint, including that the file has exactly the
 * bytes the header implies.
 *
 * @param path Checkpoint path.
 * @returns The configuration.
 * @throws {SparrowError} `io` if unreadable, `bad_model` if the header or size is inconsistent.
 */
export function readLlama2cConfig(path: string): Llama2cConfig {
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path);
  } catch (e) {
    throw new SparrowError("io", `cannot open llama2.c checkpoint '${path}': ${(e as Error).message}`, { cause: e });
  }
  try {
    const head = new Uint8Array(28);
    const n = file.readSync(head) ?? 0;
    if (n < 28) throw new SparrowError("bad_model", `${path}: ${n} bytes, too short for a llama2.c header (28 bytes)`);
    const v = new DataView(head.buffer);
    const h = Array.from({ length: 7 }, (_, i) => v.getInt32(4 * i, true));
    const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabRaw, seqLen] = h;
    const cfg: Llama2cConfig = {
      dim,
      hiddenDim,
      nLayers,
      nHeads,
      nKvHeads,
      vocabSize: Math.abs(vocabRaw),
      seqLen,
      sharedClassifier: vocabRaw > 0,
    };
    const bad = Object.entries({ dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize: cfg.vocabSize, seqLen })
      .find(([, x]) => !(x > 0 && x < 1 << 24));
    if (bad) throw new SparrowError("bad_model", `${path}: header field ${bad[0]} = ${bad[1]} is not a plausible size`);
    if (dim % nHeads !== 0 || nHeads % nKvHeads !== 0) {
      throw new SparrowError(
        "bad_model",
        `${path}: dim ${dim}, n_heads ${nHeads}, n_kv_heads ${nKvHeads} do not divide evenly`,
      );
    }
    const size = file.statSync().size;
    const want = 28 + 4 * layoutOf(cfg).total;
    if (size !== want) {
      throw new SparrowError("bad_model", `${path}: ${size} bytes, but its header (${h.join(", ")}) implies ${want}`);
    }
    return cfg;
  } finally {
    file.close();
  }
}

interface Slot {
  name: string;
  dims: number[];
  /** Offset in floats from the start of the weights. */
  at: number;
}

/** Where each GGUF tensor's floats lie in the checkpoint. */
function layoutOf(c: Llama2cConfig): { slots: Slot[]; total: number } {
  const headSize = c.dim / c.nHeads;
  const kvDim = (c.dim * c.nKvHeads) / c.nHeads;
  const slots: Slot[] = [];
  let at = 0;
  const block = (perLayer: number, name: (l: number) => string, dims: number[]) => {
    for (let l = 0; l < c.nLayers; l++) slots.push({ name: name(l), dims, at: at + l * perLayer });
    at += c.nLayers * perLayer;
  };
  slots.push({ name: "token_embd.weight", dims: [c.dim, c.vocabSize], at });
  at += c.vocabSize * c.dim;
  block(c.dim, (l) => `blk.${l}.attn_norm.weight`, [c.dim]);
  block(c.dim * c.dim, (l) => `blk.${l}.attn_q.weight`, [c.dim, c.dim]);
  block(kvDim * c.dim, (l) => `blk.${l}.attn_k.weight`, [c.dim, kvDim]);
  block(kvDim * c.dim, (l) => `blk.${l}.attn_v.weight`, [c.dim, kvDim]);
  block(c.dim * c.dim, (l) => `blk.${l}.attn_output.weight`, [c.dim, c.dim]);
  block(c.dim, (l) => `blk.${l}.ffn_norm.weight`, [c.dim]);
  block(c.hiddenDim * c.dim, (l) => `blk.${l}.ffn_gate.weight`, [c.dim, c.hiddenDim]);
  block(c.dim * c.hiddenDim, (l) => `blk.${l}.ffn_down.weight`, [c.hiddenDim, c.dim]);
  block(c.hiddenDim * c.dim, (l) => `blk.${l}.ffn_up.weight`, [c.dim, c.hiddenDim]);
  slots.push({ name: "output_norm.weight", dims: [c.dim], at });
  at += c.dim;
  at += c.seqLen * headSize; // freq_cis_real and freq_cis_imag, unused: RoPE is computed
  if (!c.sharedClassifier) {
    slots.push({ name: "output.weight", dims: [c.dim, c.vocabSize], at });
    at += c.vocabSize * c.dim;
  }
  return { slots, total: at };
}

/** Options of {@link convertLlama2c}. */
export interface ConvertLlama2cOptions {
  /** `general.name`; default: the checkpoint's file name without extension. */
  name?: string;
  /** Progress callback: (tensors done, total). */
  onProgress?: (done: number, total: number) => void;
}

/**
 * Converts a llama2.c checkpoint plus tokenizer into a GGUF file.
 *
 * @param checkpoint The `.bin` model.
 * @param tokenizer The llama2.c `tokenizer.bin` for it.
 * @param out Output `.gguf` path.
 * @param options Name and progress.
 * @returns The checkpoint's configuration.
 *
 * @example
 * ```ts ignore
 * import { convertLlama2c } from "./convert_llama2c.ts";
 * convertLlama2c("stories260K.bin", "tok512.bin", "stories260K.gguf");
 * ```
 */
export function convertLlama2c(
  checkpoint: string,
  tokenizer: string,
  out: string,
  options: ConvertLlama2cOptions = {},
): Llama2cConfig {
  const cfg = readLlama2cConfig(checkpoint);
  // The tokenizer must have exactly the model's vocabulary (checked by the reader).
  const tok = llama2cTokenizerMetadata(readLlama2cTokenizer(tokenizer, cfg.vocabSize), tokenizer);
  const name = options.name ?? checkpoint.split("/").pop()!.replace(/\.bin$/, "");
  const metadata: [string, TypedValue][] = [
    ["general.architecture", gv.str("llama")],
    ["general.name", gv.str(name)],
    ["general.file_type", gv.u32(0)],
    ["general.source", gv.str("llama2.c checkpoint, converted by sparrow convert-llama2c")],
    ["llama.context_length", gv.u32(cfg.seqLen)],
    ["llama.embedding_length", gv.u32(cfg.dim)],
    ["llama.feed_forward_length", gv.u32(cfg.hiddenDim)],
    ["llama.block_count", gv.u32(cfg.nLayers)],
    ["llama.attention.head_count", gv.u32(cfg.nHeads)],
    ["llama.attention.head_count_kv", gv.u32(cfg.nKvHeads)],
    ["llama.rope.dimension_count", gv.u32(cfg.dim / cfg.nHeads)],
    ["llama.rope.freq_base", gv.f32(10000)],
    ["llama.attention.layer_norm_rms_epsilon", gv.f32(1e-5)],
    ["llama.vocab_size", gv.u32(cfg.vocabSize)],
    ["tokenizer.ggml.model", gv.str(tok.get("tokenizer.ggml.model") as string)],
    ["tokenizer.ggml.tokens", gv.strings(tok.get("tokenizer.ggml.tokens") as string[])],
    ["tokenizer.ggml.scores", gv.f32s(tok.get("tokenizer.ggml.scores") as Float32Array)],
    ["tokenizer.ggml.token_type", gv.i32s(tok.get("tokenizer.ggml.token_type") as Int32Array)],
    ["tokenizer.ggml.unknown_token_id", gv.u32(tok.get("tokenizer.ggml.unknown_token_id") as number)],
    ["tokenizer.ggml.bos_token_id", gv.u32(tok.get("tokenizer.ggml.bos_token_id") as number)],
    ["tokenizer.ggml.eos_token_id", gv.u32(tok.get("tokenizer.ggml.eos_token_id") as number)],
    ["tokenizer.ggml.add_bos_token", gv.bool(tok.get("tokenizer.ggml.add_bos_token") as boolean)],
    ["tokenizer.ggml.add_eos_token", gv.bool(false)],
    ["tokenizer.ggml.add_space_prefix", gv.bool(tok.get("tokenizer.ggml.add_space_prefix") as boolean)],
  ];
  const { slots } = layoutOf(cfg);
  // Write in GGUF's customary order: embeddings, then each block's tensors, then the head.
  const order = (
    s: Slot,
  ) => (s.name.startsWith("blk.") ? Number(s.name.split(".")[1]) + 1 : s.name === "token_embd.weight" ? 0 : 1e9);
  const sorted = [...slots].sort((a, b) => order(a) - order(b));
  const src = Deno.openSync(checkpoint);
  try {
    const tensors: TensorToWrite[] = sorted.map((s) => ({
      name: s.name,
      dims: s.dims,
      type: f32,
      data: (emit) => {
        const bytes = s.dims.reduce((a, b) => a * b, 1) * 4;
        src.seekSync(28 + s.at * 4, Deno.SeekMode.Start);
        const buf = new Uint8Array(bytes);
        let got = 0;
        while (got < bytes) {
          const n = src.readSync(buf.subarray(got));
          if (!n) throw new SparrowError("io", `${checkpoint}: unexpected end of file reading ${s.name}`);
          got += n;
        }
        emit(buf);
      },
    }));
    writeGguf(out, metadata, tensors, { onProgress: (done, total) => options.onProgress?.(done, total) });
  } finally {
    src.close();
  }
  return cfg;
}
