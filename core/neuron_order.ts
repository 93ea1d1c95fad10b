/**
 * The hot-first neuron order of sparse FFNs: per layer, neurons by calibrated activation frequency,
 * most frequent first. The in-memory neuron store and the bundle file on disk both lay neurons out
 * in this order, so clusters of consecutive positions group neurons that fire alike.
 *
 * @module
 */
import type { LlamaHparams } from "./model_desc.ts";
import type { Sidecar } from "./sidecar.ts";

/**
 * Neurons sorted by activation frequency, most frequent first (ties by index), per layer: position
 * k of layer l at [l * ffn + k]. Empty when the sidecar has no frequencies (use the model's order).
 */
export function hotFirstOrder(sidecar: Sidecar, hp: LlamaHparams): Uint32Array<ArrayBuffer> {
  if (sidecar.neuronFreq.some((t) => t === undefined)) return new Uint32Array(0);
  const perms = new Uint32Array(hp.nLayers * hp.ffnDim);
  const file = Deno.openSync(sidecar.path);
  try {
    sidecar.neuronFreq.forEach((t, l) => {
      const buf = new Uint8Array(t!.nBytes);
      file.seekSync(t!.offset, Deno.SeekMode.Start);
      let got = 0;
      while (got < buf.length) got += file.readSync(buf.subarray(got)) ?? Infinity;
      const freq = new Float32Array(buf.buffer);
      const order = Array.from({ length: hp.ffnDim }, (_, i) => i).sort((a, b) => freq[b] - freq[a] || a - b);
      perms.set(order, l * hp.ffnDim);
    });
  } finally {
    file.close();
  }
  return perms;
}
