/**
 * How a memory budget (`--memory`) is split when FFN neurons are offloaded, following PowerInfer-2's
 * three regions:
 *
 * - fixed: what every token needs whatever neurons fire, so it must stay resident: the non-FFN
 *   weights (attention, norms, classifier; mapped from the model file), the predictors (mapped from
 *   the sidecar), the KV cache, the sessions' scratch, and the runtime itself (Deno, measured);
 * - hot: the top-ranked neurons of every layer, read once and pinned;
 * - cold: an LRU of recently read neurons.
 *
 * The rule, until a planner chooses from a hardware profile: what the fixed region leaves is the
 * neuron cache; `hotShare` of it goes to the hot region, as the same number of top-ranked neurons
 * in every layer (whole bundles), and the rest to the cold region. The default share, 3/4, was the
 * fastest of 1/2, 3/4 and 9/10 on the 7B-shape synthetic model with half of the neurons' bytes
 * cached (2 threads, two runs each: 9.9/9.5, 10.2/9.9 and 8.3/9.0 tok/s, reading 12.2, 12.0 and
 * 18.1 MB per token): the LRU follows the text, the hot region the calibration. The cold region
 * never gets fewer slots than a layer has neurons that are not hot (a token keeps every neuron it
 * uses in a layer cached until the layer's down columns are summed, in a fixed order), nor fewer
 * than `minColdSlots` (enough to keep the I/O queue full); so the smallest neuron cache is one layer's
 * neurons, all cold. A budget that cannot hold the fixed region and that cache is refused, naming the
 * minimum.
 *
 * @module
 */
import { SparrowError } from "./errors.ts";
import { core } from "./ffi.ts";

/** What the split is computed from (bytes unless said otherwise). */
export interface MemoryPlanInput {
  /** The whole process's budget. */
  budget: number;
  /** Resident now, before any weight is read: the runtime (measured: {@link residentBytes}). */
  runtimeBytes: number;
  /** Non-FFN weights read every token. */
  fixedWeightBytes: number;
  /** Predictor matrices read every token. */
  predictorBytes: number;
  /** KV cache of the session(s). */
  kvBytes: number;
  /** Session scratch and the sparse path's buffers. */
  scratchBytes: number;
  /** Bytes of one cached neuron (a bundle). */
  stride: number;
  nLayers: number;
  ffnDim: number;
  /** Share of the neuron cache given to the hot region; default 0.75. */
  hotShare?: number;
  /** Fewest cold slots; default 64. */
  minColdSlots?: number;
}

/** The split. */
export interface MemoryPlan {
  /** The budget the plan was made for. */
  budget: number;
  /** Fixed region, itemised. */
  fixed: {
    runtime: number;
    weights: number;
    predictors: number;
    kv: number;
    scratch: number;
    headroom: number;
    total: number;
  };
  /** Top-ranked neurons pinned per layer. */
  hotPerLayer: number;
  /** LRU slots shared by all layers. */
  coldSlots: number;
  /** Bytes of the neuron cache (hot + cold slots). */
  cacheBytes: number;
  /** Share of all FFN neurons that is not pinned in memory (read from disk when needed). */
  offloadedShare: number;
  /** The rule, in words, with the figures. */
  explanation: string;
}

/**
 * The fixed region's headroom (see {@link planMemory}): 64 MiB for the runtime's growth after the
 * plan, plus the sidecar's page cache, as large as the predictors.
 */
export function headroomBytes(predictorBytes: number): number {
  return 64 * 2 ** 20 + predictorBytes;
}

const mib = (n: number) => `${(n / 2 ** 20).toFixed(0)} MiB`;

/**
 * Splits a memory budget into the fixed, hot and cold regions.
 *
 * @throws {SparrowError} `invalid_argument` when the budget cannot hold the fixed region plus the
 * smallest neuron cache; the message gives the minimum budget and what the fixed region holds.
 */
export function planMemory(i: MemoryPlanInput): MemoryPlan {
  const hotShare = i.hotShare ?? 0.75;
  const minCold = i.minColdSlots ?? 64;
  if (!(hotShare >= 0 && hotShare <= 1)) {
    throw new SparrowError("invalid_argument", `hot share ${hotShare} is outside [0, 1]`);
  }
  // Headroom: memory the process is charged for that no region accounts for: the page cache of the
  // sidecar (read once at load; as large as the predictors) and of the model's header, and the
  // runtime's growth after it was measured (JIT code, thread stacks, the ring). Without it the
  // memory group sits at its limit and reclaims the only clean pages it can, the mapped non-FFN
  // weights, which every token then reads again from disk (measured: 2 s per token instead of 0.1
  // on a 7B shape).
  const headroom = headroomBytes(i.predictorBytes);
  const fixedTotal = i.runtimeBytes + i.fixedWeightBytes + i.predictorBytes + i.kvBytes + i.scratchBytes + headroom;
  const fixed = {
    runtime: i.runtimeBytes,
    weights: i.fixedWeightBytes,
    predictors: i.predictorBytes,
    kv: i.kvBytes,
    scratch: i.scratchBytes,
    headroom,
    total: fixedTotal,
  };
  // The smallest cache: no hot neurons, a cold slot for each neuron of a layer (every hot neuron per
  // layer costs nLayers slots and saves one cold slot).
  const minSlots = Math.max(minCold, i.ffnDim);
  const minimum = fixedTotal + minSlots * i.stride;
  if (!(i.budget >= minimum)) {
    throw new SparrowError(
      "invalid_argument",
      `memory budget ${mib(i.budget)} is too small: the fixed region needs ${mib(fixedTotal)} (runtime ${
        mib(i.runtimeBytes)
      }, non-FFN weights ${mib(i.fixedWeightBytes)}, predictors ${mib(i.predictorBytes)}, KV cache ${
        mib(i.kvBytes)
      }, scratch ${mib(i.scratchBytes)}, headroom ${
        mib(headroom)
      }) and the neuron cache at least ${minSlots} bundles (${
        mib(minSlots * i.stride)
      }: a layer's neurons, all cold); give at least ${mib(minimum)}`,
    );
  }
  const cacheSlots = Math.floor((i.budget - fixedTotal) / i.stride);
  const allSlots = i.nLayers * i.ffnDim;
  let hotPerLayer: number;
  let byShare = i.ffnDim;
  if (cacheSlots >= allSlots + minCold) {
    hotPerLayer = i.ffnDim; // everything fits: pin it all
  } else {
    byShare = Math.min(i.ffnDim, Math.floor((cacheSlots * hotShare) / i.nLayers));
    // The cold region keeps minCold slots and a layer's neurons that are not hot (ffnDim - hot).
    hotPerLayer = Math.min(byShare, Math.floor((cacheSlots - minCold) / i.nLayers));
    if (i.nLayers > 1) hotPerLayer = Math.min(hotPerLayer, Math.floor((cacheSlots - i.ffnDim) / (i.nLayers - 1)));
    hotPerLayer = Math.max(0, hotPerLayer);
  }
  const coldSlots = hotPerLayer === i.ffnDim ? minCold : cacheSlots - hotPerLayer * i.nLayers;
  const cacheBytes = (hotPerLayer * i.nLayers + coldSlots) * i.stride;
  const offloadedShare = 1 - (hotPerLayer * i.nLayers) / allSlots;
  const explanation = `budget ${mib(i.budget)}: fixed ${mib(fixedTotal)} (runtime ${mib(i.runtimeBytes)}, weights ${
    mib(i.fixedWeightBytes)
  }, predictors ${mib(i.predictorBytes)}, KV ${mib(i.kvBytes)}, scratch ${mib(i.scratchBytes)}, headroom ${
    mib(headroom)
  }); neuron cache ${mib(cacheBytes)}: hot ${hotPerLayer} of ${i.ffnDim} neurons per layer (${
    hotPerLayer === i.ffnDim
      ? "all of them"
      : hotPerLayer < byShare
      ? `less than ${(hotShare * 100).toFixed(0)}% of the cache: the cold region keeps room for a layer's ${
        i.ffnDim - hotPerLayer
      } neurons that are not hot`
      : `${(hotShare * 100).toFixed(0)}% of the cache`
  }), cold LRU ${coldSlots} bundles of ${(i.stride / 1024).toFixed(1)} KiB; ${
    (offloadedShare * 100).toFixed(1)
  }% of FFN neurons on disk`;
  return { budget: i.budget, fixed, hotPerLayer, coldSlots, cacheBytes, offloadedShare, explanation };
}

/**
 * The memory this process may still take, bytes, or undefined where it cannot be read: the kernel's
 * MemAvailable, lowered to the room left under the limits of the process's memory cgroups (v1 or v2,
 * usage page cache included), so that inside a container the container's limit counts, not the
 * host's memory. Read by the native core (zig/src/engine/memory_info.zig): Deno reads /sys and
 * /proc/self only with `--allow-all`.
 */
export function availableMemoryBytes(): number | undefined {
  const bytes = Number(core().sp_memory_available());
  return bytes > 0 ? bytes : undefined;
}

/**
 * Resident bytes of this process now (VmRSS), or undefined where the runtime cannot say. Read with
 * `Deno.memoryUsage()`, which needs no permission: Deno refuses /proc/self/status without
 * `--allow-all`, and the CLI runs without it (the runtime was then left out of the plan).
 */
export function residentBytes(): number | undefined {
  try {
    const rss = Deno.memoryUsage().rss;
    return rss > 0 ? rss : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Parses a size: bytes, or a number with a K, M, G or T suffix (powers of 1024; "B"/"iB" optional).
 *
 * @throws {SparrowError} `invalid_argument` for anything else.
 */
export function parseBytes(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) throw new SparrowError("invalid_argument", `'${text}' is not a size (e.g. 4G, 512M, 1073741824)`);
  const scale = { "": 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2].toLowerCase() as "" | "k"]!;
  return Math.floor(Number(m[1]) * scale);
}
