/**
 * The models the generation benchmarks run, made available on demand: the default model (fetched)
 * and synthetic 7B-shape models (generated once into the model cache). Figures from a synthetic
 * model are labelled synthetic wherever they are printed.
 *
 * @module
 */
import { join } from "node:path";
import { defaultModel, ensureDefaultModel, modelCacheDir } from "../core/default_model.ts";
import { synthesizeModel, type SynthOptions } from "../models/synth.ts";

/** A model a benchmark can run. */
export interface BenchModel {
  /** Short id used in SPARROW_BENCH_MODELS. */
  id: string;
  /** How figures are labelled. */
  label: string;
  /** Path once available. */
  path: string;
}

const synthetic: Record<string, { label: string; options: SynthOptions }> = {
  "llama2-7b-q4_0": {
    label: "synthetic Llama-2-7B shape, Q4_0",
    options: { shape: "llama2-7b", weightType: "q4_0", seed: 1, vocab: "llama2" },
  },
  "llama2-7b-q4_k_m": {
    label: "synthetic Llama-2-7B shape, Q4_K_M",
    options: { shape: "llama2-7b", weightType: "q4_k_m" as SynthOptions["weightType"], seed: 1, vocab: "llama2" },
  },
  "mistral-7b-relu-q4_0": {
    label: "synthetic Mistral-7B shape, ReLU FFN at ~90% sparsity, Q4_0",
    options: {
      shape: "mistral-7b",
      weightType: "q4_0",
      activation: "relu",
      sparseFfn: { sparsity: 0.9 },
      seed: 1,
      vocab: "llama2",
    },
  },
};

/** Ids of every model the benchmarks know. */
export const benchModelIds: readonly string[] = ["smollm2", ...Object.keys(synthetic)];

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/**
 * Makes model `id` available: fetches the default model or generates a synthetic one (seconds for
 * a 7B shape) when missing.
 */
export async function benchModel(id: string, log: (line: string) => void): Promise<BenchModel> {
  if (id === "smollm2") {
    const path = await ensureDefaultModel({ quiet: true, onProgress: (p) => log(p.message) });
    return { id, label: `${defaultModel.name} (real)`, path };
  }
  const spec = synthetic[id];
  if (!spec) throw new Error(`unknown bench model '${id}' (known: ${benchModelIds.join(", ")})`);
  const path = join(modelCacheDir(), "synthetic", `${id}.gguf`);
  if (!exists(path)) {
    await Deno.mkdir(join(modelCacheDir(), "synthetic"), { recursive: true });
    log(`generating ${spec.label} into ${path}`);
    const tmp = `${path}.partial`;
    synthesizeModel(tmp, spec.options);
    await Deno.rename(tmp, path);
  }
  return { id, label: spec.label, path };
}
