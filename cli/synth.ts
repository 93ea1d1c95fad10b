/**
 * `sparrow synth`: write a synthetic Llama GGUF (models/synth.ts) of a preset or explicit shape, any
 * weight type, optionally with sparse ReLU/dReLU FFN activations, for tests and benchmarks at real
 * shapes when real weights cannot be had. Progress and the summary go to stderr.
 *
 * @module
 */
import { choice, int, num, parse, required, str, UsageError } from "./args.ts";
import { note } from "./common.ts";
import { Progress } from "./progress.ts";
import { synthesizeModel, synthPresets, type SynthShape } from "../models/synth.ts";
import { synthWeightTypes } from "../models/synth_types.ts";

const presetNames = Object.keys(synthPresets) as (keyof typeof synthPresets)[];
const weightTypes = Object.keys(synthWeightTypes) as (keyof typeof synthWeightTypes)[];

/** Usage text. */
export const synthHelp = `sparrow synth: write a synthetic Llama model (seeded random weights, a real shape)

Usage: sparrow synth --out PATH [options]

  -o, --out PATH          GGUF to write
      --shape NAME        ${presetNames.join(", ")} (default tiny); or give every size below
      --dim N --ffn N --layers N --heads N --kv-heads N --vocab N --ctx N
                          explicit sizes (override the preset's)
      --type T            weight type of every matrix: ${weightTypes.join(", ")} (default f32)
      --activation A      swiglu (default), relu or drelu
      --sparsity S        ReLU/dReLU: build in sparse activations, about S of the neurons inactive per
                          token (e.g. 0.9, TurboSparse-Mistral's figure), with hot/cold neurons
      --tied              reuse the token embedding as the classifier
      --llama2-vocab      the real Llama-2 32k vocabulary (from ../shared/models) instead of a generated one
      --seed N            seed (default 1): the same seed and options give the same file

Every figure measured on such a model is synthetic: its name says so ("synthetic ...").
Example: sparrow synth --shape mistral-7b --type q4_0 --activation relu --sparsity 0.9 -o m.gguf`;

/** Runs the command. */
export function synthCommand(args: string[]): void {
  const p = parse(args, {
    out: { type: "string", short: "o" },
    shape: { type: "string" },
    dim: { type: "string" },
    ffn: { type: "string" },
    layers: { type: "string" },
    heads: { type: "string" },
    "kv-heads": { type: "string" },
    vocab: { type: "string" },
    ctx: { type: "string" },
    type: { type: "string" },
    activation: { type: "string" },
    sparsity: { type: "string" },
    tied: { type: "boolean" },
    "llama2-vocab": { type: "boolean" },
    seed: { type: "string" },
  });
  if (p.values.help) return void console.log(synthHelp);
  if (p.positionals.length > 0) throw new UsageError(`unexpected argument '${p.positionals[0]}'`);
  const out = required(p, "out");
  const preset = choice(p, "shape", presetNames) ?? "tiny";
  const size = (name: string) => int(p, name, 1, 1 << 24);
  const base: SynthShape = synthPresets[preset];
  const shape: SynthShape = {
    dim: size("dim") ?? base.dim,
    ffnDim: size("ffn") ?? base.ffnDim,
    nLayers: size("layers") ?? base.nLayers,
    nHeads: size("heads") ?? base.nHeads,
    nKvHeads: size("kv-heads") ?? base.nKvHeads,
    vocabSize: size("vocab") ?? base.vocabSize,
    contextLength: size("ctx") ?? base.contextLength,
  };
  const custom = ["dim", "ffn", "layers", "heads", "kv-heads", "vocab", "ctx"].some((k) => str(p, k) !== undefined);
  const activation = choice(p, "activation", ["swiglu", "relu", "drelu"] as const);
  const sparsity = num(p, "sparsity", 0.01, 0.99);
  if (sparsity !== undefined && activation !== "relu" && activation !== "drelu") {
    throw new UsageError("--sparsity needs --activation relu or drelu (SwiGLU gates are never exactly zero)");
  }
  let bar: Progress | undefined;
  const r = synthesizeModel(
    out,
    {
      shape: custom ? shape : preset,
      weightType: choice(p, "type", weightTypes),
      activation,
      tiedEmbeddings: p.values.tied === true,
      vocab: p.values["llama2-vocab"] ? "llama2" : "generated",
      seed: int(p, "seed", 0, 2 ** 32 - 1),
      sparseFfn: sparsity === undefined ? undefined : { sparsity },
    },
    (done, total, _bytes, tensor) => {
      bar ??= new Progress("writing", total);
      bar.update(done, tensor);
    },
  );
  bar?.finish();
  const s = r.shape;
  note(
    `sparrow: wrote ${r.path}: ${r.name} (dim ${s.dim}, ffn ${s.ffnDim}, ${s.nLayers} layers, ${s.nHeads}/${s.nKvHeads} heads, ` +
      `vocab ${s.vocabSize}), ${r.tensors} tensors, ${(r.bytes / 1e6).toFixed(1)} MB in ${r.seconds.toFixed(1)} s`,
  );
}
