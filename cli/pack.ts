/**
 * `sparrow pack`: write a model's neuron-bundle file (core/bundle_format.ts), the FFN neurons in
 * the hot-first order of its calibration sidecar, from which sparse inference streams the cold ones.
 * Progress and the summary go to stderr.
 *
 * @module
 */
import { choice, int, parse, required, str, UsageError } from "./args.ts";
import { note } from "./common.ts";
import { Progress } from "./progress.ts";
import { defaultBundleAlignment, maxBundleAlignment, minBundleAlignment } from "../core/bundle_format.ts";
import { ggmlTypeName } from "../core/gguf_types.ts";
import { loadModel } from "../core/model.ts";
import { packBundles, type PackSummary } from "../core/pack.ts";

/** Usage text. */
export const packHelp = `sparrow pack: write the neuron-bundle file sparse inference streams cold neurons from

Usage: sparrow pack --model MODEL.gguf --sidecar MODEL.sparsity.gguf [options]

  -m, --model PATH        GGUF model
      --sidecar PATH      its calibration sidecar (sparrow calibrate): the hot-first neuron order
  -o, --out PATH          bundle file to write (default: MODEL.bundles beside the model)
      --align N           alignment of every bundle in bytes, a power of two from ${minBundleAlignment} to ${maxBundleAlignment}
                          (default ${defaultBundleAlignment}, the page and O_DIRECT block size)
      --two-phase         store gate rows apart from up rows and down columns: a missing neuron's
                          up/down part is then read only if its gate fires (fewer bytes, one more
                          read in sequence: see the README)
      --down TYPE         type of the down columns: auto (default: exact for float models, q8_0 for
                          quantized ones, as the in-memory sparse engine), q8_0, q4_0, f16 or f32
  -t, --threads N         threads transposing the down projection (default: all logical CPUs)

Attention, embeddings, norms and predictors are not copied: they stay in the model and the
sidecar, which must be kept beside the bundle file (it records both files' fingerprints).`;

/** `x.gguf` -> `x.bundles`. */
function defaultOutPath(modelPath: string): string {
  return modelPath.replace(/\.gguf$/i, "") + ".bundles";
}

/**
 * The summary line: what was packed, how big, what alignment costs, how fast.
 *
 * @param s What packBundles wrote.
 * @returns One line.
 */
export function packSummaryLine(s: PackSummary): string {
  const mb = (n: number) => (n / 1e6).toFixed(1);
  const l = s.layout;
  const phase = l.twoPhase
    ? `two-phase, strides ${l.regions.map((r) => r.stride).join(" + ")}`
    : `stride ${l.regions[0].stride}`;
  return `sparrow: packed ${s.layers} layers, ${s.neurons} neurons (${s.order} order) into ${s.path}: ` +
    `bundles ${mb(s.bundleBytes)} MB (${phase} B for ${l.payloadBytes} B of ${ggmlTypeName(l.gate.type)} gate/up + ` +
    `${ggmlTypeName(l.down.type)} down, aligned to ${l.alignment}), padding overhead ${
      (s.paddingOverhead * 100).toFixed(1)
    }%, file ${mb(s.fileBytes)} MB in ${s.seconds.toFixed(1)} s (${mb(s.fileBytes / s.seconds)} MB/s)`;
}

/** Runs the command. */
export async function packCommand(args: string[]): Promise<void> {
  const p = parse(args, {
    model: { type: "string", short: "m" },
    sidecar: { type: "string" },
    out: { type: "string", short: "o" },
    align: { type: "string" },
    "two-phase": { type: "boolean" },
    down: { type: "string" },
    threads: { type: "string", short: "t" },
  });
  if (p.values.help) return void console.log(packHelp);
  if (p.positionals.length > 0) throw new UsageError(`unexpected argument '${p.positionals[0]}'`);
  const modelPath = required(p, "model");
  const sidecar = required(p, "sidecar");
  const alignment = int(p, "align", minBundleAlignment, maxBundleAlignment);
  if (alignment !== undefined && (alignment & (alignment - 1)) !== 0) {
    throw new UsageError(`--align ${alignment}: expected a power of two`);
  }
  const downType = choice(p, "down", ["auto", "q8_0", "q4_0", "f16", "f32"] as const);
  const threads = int(p, "threads", 1, 256);
  const out = str(p, "out") ?? defaultOutPath(modelPath);

  using model = await loadModel(modelPath, { threads });
  const hp = model.info.hparams;
  note(
    `sparrow: packing ${model.info.name} (${hp.nLayers} layers, ffn ${hp.ffnDim}, dim ${hp.dim}) with ${model.defaults.threads} threads`,
  );
  // Created on the first report, which knows the total.
  let bar: Progress | undefined;
  const summary = await packBundles(model, sidecar, out, {
    alignment,
    twoPhase: p.values["two-phase"] === true,
    downType,
    threads,
    onProgress: (s) => {
      bar ??= new Progress("packing", s.totalBytes, "bytes");
      bar.update(s.bytes, `layer ${s.layer + 1}/${s.layers}`);
    },
  });
  bar?.finish();
  note(packSummaryLine(summary));
}
