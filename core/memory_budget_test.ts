/** The memory plan's rule (core/memory_budget.ts), on made-up sizes: no model, no process measured. */
import assert from "node:assert/strict";
import { planMemory } from "./memory_budget.ts";
import { SparrowError } from "./errors.ts";

const mib = 2 ** 20;
// 4 layers of 1000 neurons, 10 KiB bundles; a fixed region of 100 MiB (plus the headroom).
const base = {
  runtimeBytes: 40 * mib,
  fixedWeightBytes: 50 * mib,
  predictorBytes: 2 * mib,
  kvBytes: 4 * mib,
  scratchBytes: 4 * mib,
  stride: 10 * 1024,
  nLayers: 4,
  ffnDim: 1000,
};
const fixed = 100 * mib + (64 * mib + 2 * mib); // the regions plus the headroom (64 MiB + the predictors)
const slots = (n: number) => fixed + n * base.stride;

Deno.test("a budget that holds every neuron pins them all", () => {
  const p = planMemory({ ...base, budget: slots(4000 + 64) });
  assert.equal(p.fixed.total, fixed);
  assert.deepEqual([p.hotPerLayer, p.coldSlots, p.offloadedShare], [1000, 64, 0]);
  assert.match(p.explanation, /hot 1000 of 1000 neurons per layer \(all of them\)/);
});

Deno.test("the hot region takes its share of the cache when the cold region keeps a layer's other neurons", () => {
  // 2400 slots: 3/4 is 1800, 450 per layer; the cold 600 hold the 550 that are not hot.
  const p = planMemory({ ...base, budget: slots(2400) });
  assert.deepEqual([p.hotPerLayer, p.coldSlots], [450, 600]);
  assert.equal(p.offloadedShare, 1 - 1800 / 4000);
  assert.match(p.explanation, /\(75% of the cache\)/);
});

Deno.test("a small cache gives the hot region less, so a layer's neurons that are not hot fit the cold region", () => {
  // 1300 slots: 3/4 would be 243 per layer, leaving 328 cold for 757; hot h needs 1300 - 4h >= 1000 - h: h <= 100.
  const p = planMemory({ ...base, budget: slots(1300) });
  assert.deepEqual([p.hotPerLayer, p.coldSlots], [100, 900]);
  assert.ok(p.coldSlots >= base.ffnDim - p.hotPerLayer);
  assert.match(p.explanation, /less than 75% of the cache: the cold region keeps room for a layer's 900 neurons/);
});

Deno.test("the smallest cache is a layer's neurons, all cold; a byte less is refused with the minimum", () => {
  const p = planMemory({ ...base, budget: slots(1000) });
  assert.deepEqual([p.hotPerLayer, p.coldSlots, p.offloadedShare], [0, 1000, 1]);
  assert.throws(
    () => planMemory({ ...base, budget: slots(1000) - 1 }),
    (e: unknown) =>
      e instanceof SparrowError && e.code === "invalid_argument" &&
      e.message.includes("at least 1000 bundles") &&
      e.message.includes(`give at least ${(slots(1000) / mib).toFixed(0)} MiB`),
  );
});

Deno.test("a layer smaller than the I/O queue's minimum still keeps the minimum of cold slots", () => {
  const p = planMemory({ ...base, ffnDim: 32, budget: slots(64) });
  assert.deepEqual([p.hotPerLayer, p.coldSlots], [0, 64]);
  assert.throws(() => planMemory({ ...base, ffnDim: 32, budget: slots(63) }), SparrowError);
});
