/**
 * Weight types of synthetic models (models/synth.ts): one type for every matrix, llama.cpp's Q4_K_M /
 * Q5_K_M mixtures, and per-tensor overrides.
 *
 * @module
 */
import { SparrowError } from "../core/errors.ts";
import { ggmlType } from "../core/gguf_types.ts";
import { QuantType } from "./ggml_quants.ts";
import type { TensorPlan } from "./synth_weights.ts";

/**
 * Weight types a synthetic model's matrices can have (norms are always F32), each with the type of
 * most matrices: all of them, except in the mixtures "q4_k_m" and "q5_k_m" (see {@link synthTensorType}).
 */
export const synthWeightTypes = {
  f32: QuantType.F32,
  f16: QuantType.F16,
  bf16: QuantType.BF16,
  q8_0: QuantType.Q8_0,
  q4_0: QuantType.Q4_0,
  q4_1: QuantType.Q4_1,
  q5_0: QuantType.Q5_0,
  q5_1: QuantType.Q5_1,
  q4_k: QuantType.Q4_K,
  q5_k: QuantType.Q5_K,
  q6_k: QuantType.Q6_K,
  q4_k_m: QuantType.Q4_K,
  q5_k_m: QuantType.Q5_K,
} as const;

/** A weight type name. */
export type SynthWeightType = keyof typeof synthWeightTypes;

/** A single tensor type (a weight type that is not a mixture). */
export type SynthTensorType = Exclude<SynthWeightType, "q4_k_m" | "q5_k_m">;

/**
 * llama.cpp's `general.file_type` (its `llama_ftype`) for each weight type. It has no "all Q4_K" or
 * "all Q5_K" type: those are written as its nearest, Q4_K_S (14) and Q5_K_S (16).
 */
export const synthFileTypes: Readonly<Record<SynthWeightType, number>> = {
  f32: 0,
  f16: 1,
  q4_0: 2,
  q4_1: 3,
  q8_0: 7,
  q5_0: 8,
  q5_1: 9,
  q4_k: 14,
  q4_k_m: 15,
  q5_k: 16,
  q5_k_m: 17,
  q6_k: 18,
  bf16: 32,
};

/**
 * llama.cpp's `use_more_bits`: the layers its _M mixtures give more bits, the first and last eighth
 * and every third layer between (half of them for 32 layers: 0-3, 6, 9, ..., 27, 28-31).
 */
function usesMoreBits(layer: number, nLayers: number): boolean {
  const eighth = Math.floor(nLayers / 8);
  return layer < eighth || layer >= Math.floor((7 * nLayers) / 8) || (layer - eighth) % 3 === 2;
}

/**
 * The type of matrix `tensorName` in a model of weight type `weightType`. The mixtures follow
 * llama.cpp's `llama_tensor_get_type` for Q4_K_M / Q5_K_M on Llama models: Q4_K (Q5_K) everywhere
 * except Q6_K for output.weight (or token_embd.weight when it doubles as the classifier), and for
 * attn_v and ffn_down in the layers `use_more_bits` picks (see above). Left out: its exceptions for
 * other architectures and for 70B GQA models, and its fallbacks for rows that are not
 * whole 256-element blocks (here an error).
 *
 * @param weightType The model's weight type.
 * @param tensorName A matrix name, e.g. "blk.3.attn_v.weight".
 * @param nLayers The model's layer count.
 * @param tied Whether token_embd.weight is also the classifier. Default false.
 * @returns The GGML type id.
 * @example
 * ```ts
 * import { synthTensorType } from "./synth_types.ts";
 * synthTensorType("q4_k_m", "blk.0.ffn_down.weight", 32); // 14 (Q6_K)
 * synthTensorType("q4_k_m", "blk.4.ffn_down.weight", 32); // 12 (Q4_K)
 * ```
 */
export function synthTensorType(
  weightType: SynthWeightType,
  tensorName: string,
  nLayers: number,
  tied = false,
): number {
  const base = synthWeightTypes[weightType];
  if (weightType !== "q4_k_m" && weightType !== "q5_k_m") return base;
  if (tensorName === "output.weight" || (tied && tensorName === "token_embd.weight")) return QuantType.Q6_K;
  const m = /^blk\.(\d+)\.(attn_v|ffn_down)\.weight$/.exec(tensorName);
  return m && usesMoreBits(Number(m[1]), nLayers) ? QuantType.Q6_K : base;
}

/**
 * The type of every tensor: F32 for norms, else the weight type's (synthTensorType), overridden by
 * `overrides`; checks every matrix's rows are whole blocks of its type.
 */
export function tensorTypesOf(
  plan: readonly TensorPlan[],
  weightType: SynthWeightType,
  nLayers: number,
  tied: boolean,
  overrides: Readonly<Record<string, SynthTensorType>>,
): Map<string, number> {
  const used = new Set<string>();
  const types = new Map<string, number>();
  for (const t of plan) {
    if (t.norm) {
      types.set(t.name, QuantType.F32);
      continue;
    }
    const full = t.name.replace(/\.weight$/, "");
    const key = full in overrides ? full : full.replace(/^blk\.\d+\./, "");
    let type = synthTensorType(weightType, t.name, nLayers, tied);
    if (key in overrides) {
      const o = overrides[key];
      if (!(o in synthWeightTypes) || o.endsWith("_m")) {
        throw new SparrowError("invalid_argument", `tensorTypes['${key}'] = '${o}' is not a single tensor type`);
      }
      type = synthWeightTypes[o];
      used.add(key);
    }
    const info = ggmlType(type)!;
    if (t.cols % info.blockElems !== 0) {
      throw new SparrowError(
        "invalid_argument",
        `tensor '${t.name}' has rows of ${t.cols}, not a whole number of ${info.blockElems}-element ${info.name} blocks`,
      );
    }
    types.set(t.name, type);
  }
  const unused = Object.keys(overrides).filter((k) => !used.has(k));
  if (unused.length > 0) {
    throw new SparrowError("invalid_argument", `tensorTypes names no tensor of this model: ${unused.join(", ")}`);
  }
  return types;
}
