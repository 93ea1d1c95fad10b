import assert from "node:assert/strict";
import { SparrowError } from "../core/errors.ts";
import { ActivationRecorder, activationStats } from "./activation_stats.ts";

/** Observes one layer of `ffn` neurons where `active(t)` lists the neurons firing at position t. */
function record(ffn: number, positions: number, active: (t: number) => number[], activation = "relu") {
  const rec = new ActivationRecorder(1, ffn, activation);
  for (let t = 0; t < positions; t++) {
    const gate = new Float64Array(ffn).fill(-1);
    for (const i of active(t)) gate[i] = 1;
    rec.observe(0, t, gate, new Float64Array(ffn).fill(1));
  }
  return rec;
}

Deno.test("activation stats: inactive fraction, top shares and Jaccard on hand-made sets", () => {
  // 40 neurons, 6 positions. Neuron 0 fires always, neuron 1 at even positions, and position t fires
  // neurons 2 + t and 3 + t, so consecutive positions share 0 and one of the pair: sets of sizes 3-4.
  const sets = (t: number) => [0, ...(t % 2 === 0 ? [1] : []), 2 + t, 3 + t];
  const s = activationStats(record(40, 6, sets), { topFractions: [0.025, 0.05] });
  const total = [0, 1, 2, 3, 4, 5].reduce((a, t) => a + sets(t).length, 0); // 21
  assert.equal(s.tokens, 6);
  assert.ok(Math.abs(s.inactive - (1 - total / 240)) < 1e-12);
  // Top 2.5% = 1 neuron (neuron 0, 6 activations); top 5% = 2 (and neuron 1, 3 activations).
  assert.deepEqual(s.topShare.map((v) => Math.round(v * total)), [6, 9]);
  assert.deepEqual(Array.from(s.layers[0].firing.subarray(0, 3)), [1, 0.5, 1 / 6]);
  // Consecutive t, t+1: {0, 3+t} shared; union {0, 1, 2+t, 3+t, 4+t}: 2/5 for every t.
  assert.ok(Math.abs(s.jaccardConsecutive - 2 / 5) < 1e-12);
  // Distance 2: from even t, {0, 1} of a union of 6; from odd t, {0} of a union of 5.
  const j2 = s.jaccardByDistance.find((d) => d.distance === 2)!.jaccard;
  assert.ok(Math.abs(j2 - (2 / 6 + 1 / 5 + 2 / 6 + 1 / 5) / 4) < 1e-12);
  assert.ok(s.jaccardRandom < s.jaccardConsecutive);
});

Deno.test("activation stats: dReLU needs gate and up positive; misuse is refused", () => {
  const rec = new ActivationRecorder(1, 4, "drelu");
  for (let t = 0; t < 4; t++) rec.observe(0, t, [1, 1, -1, 1], [1, -1, 1, 1]);
  const s = activationStats(rec);
  assert.deepEqual(Array.from(s.layers[0].firing), [1, 0, 0, 1]);
  assert.equal(s.jaccardConsecutive, 1);
  const refuses = (fn: () => unknown, re: RegExp) =>
    assert.throws(fn, (e: unknown) => e instanceof SparrowError && e.code === "invalid_argument" && re.test(e.message));
  refuses(() => new ActivationRecorder(1, 4, "swiglu"), /relu or drelu, not 'swiglu'/);
  refuses(() => rec.observe(0, 7, [1, 1, 1, 1], [1, 1, 1, 1]), /position 7 observed out of order/);
  refuses(() => activationStats(rec, { skip: 2 }), /2 positions are too few/);
  // Masks (as an engine would report them) give the same statistics as pre-activations.
  const masks = new ActivationRecorder(1, 4, "drelu");
  for (let t = 0; t < 4; t++) masks.observeMask(0, t, Uint32Array.of(0b1001 | 0xf0));
  assert.deepEqual(activationStats(masks), s);
  refuses(() => masks.observeMask(0, 4, new Uint32Array(2)), /a mask of 2 words for 4 neurons/);
});
