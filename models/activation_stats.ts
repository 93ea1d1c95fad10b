/**
 * Activation statistics of ReLU / dReLU FFNs, from observed pre-activations (the float64 oracle's
 * `onFfn`, models/reference_forward.ts): how many neurons are inactive per token, how skewed firing
 * is across neurons (hot and cold), and how much consecutive tokens' active sets overlap compared
 * with tokens further apart — the three properties sparse decoding lives on.
 *
 * A neuron is active when its output is not exactly zero: ReLU, relu(gate) * up, when gate > 0;
 * dReLU, relu(gate) * relu(up), when both are.
 *
 * @module
 */
import { SparrowError } from "../core/errors.ts";

/** Number of set bits of a 32-bit word. */
function popcount(v: number): number {
  v = v - ((v >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24);
}

/**
 * Records which neurons are active at every layer and position: pass {@link observe} as the
 * oracle's `onFfn`, or feed an engine's masks of active neurons to {@link observeMask}.
 *
 * @example
 * ```ts ignore
 * const rec = new ActivationRecorder(4, 704, "relu");
 * referenceForward(path, ids, { onFfn: rec.observe });
 * const stats = activationStats(rec);
 * ```
 */
export class ActivationRecorder {
  readonly nLayers: number;
  readonly ffnDim: number;
  readonly activation: "relu" | "drelu";
  /** sets[layer][position]: active neurons as a bitset (ffn bits). */
  readonly sets: Uint32Array[][];

  /**
   * @param nLayers Layers of the model.
   * @param ffnDim Neurons per layer.
   * @param activation "relu" or "drelu" (silu has no inactive neurons).
   */
  constructor(nLayers: number, ffnDim: number, activation: string) {
    if (activation !== "relu" && activation !== "drelu") {
      throw new SparrowError("invalid_argument", `activation statistics need relu or drelu, not '${activation}'`);
    }
    this.nLayers = nLayers;
    this.ffnDim = ffnDim;
    this.activation = activation;
    this.sets = Array.from({ length: nLayers }, () => []);
  }

  /** Records one layer at one position (positions of a layer in order, from 0). */
  observe = (layer: number, position: number, gate: ArrayLike<number>, up: ArrayLike<number>): void => {
    const sets = this.sets[layer];
    if (sets === undefined || position !== sets.length) {
      throw new SparrowError("invalid_argument", `layer ${layer} position ${position} observed out of order`);
    }
    const bits = new Uint32Array(Math.ceil(this.ffnDim / 32));
    const drelu = this.activation === "drelu";
    for (let i = 0; i < this.ffnDim; i++) {
      if (gate[i] > 0 && (!drelu || up[i] > 0)) bits[i >>> 5] |= 1 << (i & 31);
    }
    sets.push(bits);
  };

  /**
   * Records one layer at one position from a mask of active neurons (bit i of word i / 32, LSB
   * first), e.g. as an engine reports them; positions of a layer in order, from 0.
   */
  observeMask(layer: number, position: number, mask: Uint32Array): void {
    const sets = this.sets[layer];
    if (sets === undefined || position !== sets.length) {
      throw new SparrowError("invalid_argument", `layer ${layer} position ${position} observed out of order`);
    }
    const words = Math.ceil(this.ffnDim / 32);
    if (mask.length !== words) {
      throw new SparrowError("invalid_argument", `a mask of ${mask.length} words for ${this.ffnDim} neurons`);
    }
    const bits = mask.slice();
    if (this.ffnDim % 32 !== 0) bits[words - 1] &= (1 << (this.ffnDim % 32)) - 1;
    sets.push(bits);
  }

  /** Positions recorded (of layer 0). */
  get positions(): number {
    return this.sets[0]?.length ?? 0;
  }
}

/** Statistics of one layer. */
export interface LayerActivationStats {
  /** Fraction of (neuron, token) pairs inactive. */
  inactive: number;
  /** Per neuron, the fraction of tokens it fired on (ffn). */
  firing: Float64Array;
  /** Share of the layer's activations carried by its most active neurons, per fraction asked for. */
  topShare: number[];
  /** Mean Jaccard index of consecutive tokens' active sets. */
  jaccardConsecutive: number;
  /** Mean Jaccard index of token pairs at least 2 apart. */
  jaccardRandom: number;
}

/** What {@link activationStats} measures. */
export interface ActivationStats {
  /** Tokens (positions) measured per layer. */
  tokens: number;
  /** The fractions of neurons `topShare` is given for, e.g. [0.05, 0.2]. */
  topFractions: number[];
  /** Fraction inactive over all layers. */
  inactive: number;
  /** Share of all activations carried by each layer's top neurons, pooled over layers. */
  topShare: number[];
  /** Jaccard of consecutive tokens' active sets, mean over layers. */
  jaccardConsecutive: number;
  /** Jaccard of token pairs at least 2 apart (all such pairs), mean over layers. */
  jaccardRandom: number;
  /** Mean Jaccard at token distance 1, 2, 4, 8, ... (as many as the tokens allow), mean over layers. */
  jaccardByDistance: { distance: number; jaccard: number }[];
  layers: LayerActivationStats[];
}

function jaccard(a: Uint32Array, b: Uint32Array): number {
  let inter = 0;
  let union = 0;
  for (let w = 0; w < a.length; w++) {
    inter += popcount(a[w] & b[w]);
    union += popcount(a[w] | b[w]);
  }
  return union === 0 ? 1 : inter / union;
}

/** Mean Jaccard index over the position pairs `pairs` emits. */
function meanJaccard(sets: Uint32Array[], pairs: (emit: (s: number, t: number) => void) => void): number {
  let sum = 0;
  let n = 0;
  pairs((s, t) => {
    sum += jaccard(sets[s], sets[t]);
    n++;
  });
  return n === 0 ? NaN : sum / n;
}

/**
 * Measures the recorded activations.
 *
 * @param rec What was observed.
 * @param options `topFractions`: the fractions of neurons to give activation shares for (default
 * [0.05, 0.2]); `skip`: leading positions to leave out (e.g. 1 for BOS; default 0).
 * @returns Per-layer and overall statistics.
 * @throws {SparrowError} `invalid_argument` when fewer than 3 positions remain.
 */
export function activationStats(
  rec: ActivationRecorder,
  options: { topFractions?: number[]; skip?: number } = {},
): ActivationStats {
  const topFractions = options.topFractions ?? [0.05, 0.2];
  const skip = options.skip ?? 0;
  const tokens = rec.positions - skip;
  if (tokens < 3) throw new SparrowError("invalid_argument", `${tokens} positions are too few for statistics`);
  const F = rec.ffnDim;
  const distances: number[] = [];
  for (let d = 1; d < tokens; d *= 2) distances.push(d);
  const layers: LayerActivationStats[] = [];
  const byDistance = distances.map(() => 0);
  let active = 0;
  const topActive = topFractions.map(() => 0);
  for (const [l, all] of rec.sets.entries()) {
    if (all.length !== rec.positions) throw new SparrowError("invalid_argument", `layer ${l} has missing positions`);
    const sets = all.slice(skip);
    const counts = new Float64Array(F);
    for (const bits of sets) {
      for (let i = 0; i < F; i++) if (bits[i >>> 5] & (1 << (i & 31))) counts[i]++;
    }
    const total = counts.reduce((a, b) => a + b, 0);
    active += total;
    const sorted = counts.slice().sort().reverse();
    const topShare = topFractions.map((f, k) => {
      let top = 0;
      for (let i = 0; i < Math.round(f * F); i++) top += sorted[i];
      topActive[k] += top;
      return total === 0 ? 0 : top / total;
    });
    for (const [k, d] of distances.entries()) {
      byDistance[k] += meanJaccard(sets, (emit) => {
        for (let s = 0; s + d < tokens; s++) emit(s, s + d);
      });
    }
    layers.push({
      inactive: 1 - total / (tokens * F),
      firing: counts.map((c) => c / tokens),
      topShare,
      jaccardConsecutive: meanJaccard(sets, (emit) => {
        for (let s = 0; s + 1 < tokens; s++) emit(s, s + 1);
      }),
      jaccardRandom: meanJaccard(sets, (emit) => {
        for (let s = 0; s < tokens; s++) for (let t = s + 2; t < tokens; t++) emit(s, t);
      }),
    });
  }
  const mean = (f: (l: LayerActivationStats) => number) => layers.reduce((a, l) => a + f(l), 0) / layers.length;
  return {
    tokens,
    topFractions,
    inactive: 1 - active / (tokens * F * layers.length),
    topShare: topActive.map((t) => (active === 0 ? 0 : t / active)),
    jaccardConsecutive: mean((l) => l.jaccardConsecutive),
    jaccardRandom: mean((l) => l.jaccardRandom),
    jaccardByDistance: distances.map((distance, k) => ({ distance, jaccard: byDistance[k] / layers.length })),
    layers,
  };
}
