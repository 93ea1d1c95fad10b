import assert from "node:assert/strict";
import { Rng } from "../core/rng.ts";
import { f16BitsToF32, f16CeilBits } from "./ggml_half.ts";
import { dequantize, quantize, quantizedBytes, QuantType } from "./ggml_quants.ts";
import { packScalesMinsK4, unpackScaleMinK4 } from "./ggml_quants_k.ts";

// Scales and mins with values above 15 in sub-blocks 4..7, so their top two bits (kept in bytes 0..7)
// matter, and their packed bytes worked out by hand from the layout.
const sc = [1, 2, 3, 4, 17, 34, 51, 63];
const mins = [5, 6, 7, 8, 20, 40, 60, 33];
const packed = [0x41, 0x82, 0xc3, 0xc4, 0x45, 0x86, 0xc7, 0x88, 0x41, 0x82, 0xc3, 0x1f];

Deno.test("ggml K-quants: 6-bit scales and mins pack as ggml's get_scale_min_k4 reads them", () => {
  const s = new Uint8Array(14);
  packScalesMinsK4(sc, mins, s, 2);
  assert.deepEqual(Array.from(s.subarray(2)), packed);
  for (let j = 0; j < 8; j++) assert.deepEqual(unpackScaleMinK4(s, 2, j), { sc: sc[j], m: mins[j] }, `sub-block ${j}`);
});

Deno.test("ggml K-quants: hand-made Q4_K and Q5_K blocks dequantize per the layout", () => {
  // d = 1, dmin = 0.5; x = d * sc * q - dmin * m.
  const q4 = new Uint8Array(144);
  q4.set([0x00, 0x3c, 0x00, 0x38], 0);
  q4.set(packed, 4);
  q4[16 + 0] = 0x3a; // element 0 (sub-block 0): q = 10; element 32 (sub-block 1): q = 3
  q4[16 + 96 + 31] = 0xf0; // element 223 (sub-block 6): q = 0; element 255 (sub-block 7): q = 15
  const a = dequantize(QuantType.Q4_K, q4, 256, new Float64Array(256));
  assert.equal(a[0], 1 * 10 - 0.5 * 5);
  assert.equal(a[1], -0.5 * 5);
  assert.equal(a[32], 2 * 3 - 0.5 * 6);
  assert.equal(a[223], 51 * 0 - 0.5 * 60);
  assert.equal(a[255], 63 * 15 - 0.5 * 33);

  // Q5_K: the same, qh (32 bytes at 16) before qs (at 48); bit j of qh[l] is bit 4 of element 32j + l.
  const q5 = new Uint8Array(176);
  q5.set(q4.subarray(0, 16), 0);
  q5.set(q4.subarray(16), 48);
  q5[16 + 0] = 0b0000_0011; // elements 0 and 32
  q5[16 + 31] = 0b1100_0000; // elements 223 and 255
  const b = dequantize(QuantType.Q5_K, q5, 256, new Float64Array(256));
  assert.equal(b[0], 1 * 26 - 0.5 * 5);
  assert.equal(b[1], -0.5 * 5);
  assert.equal(b[32], 2 * 19 - 0.5 * 6);
  assert.equal(b[223], 51 * 16 - 0.5 * 60);
  assert.equal(b[255], 63 * 31 - 0.5 * 33);
});

Deno.test("ggml K-quants: a hand-made Q6_K block dequantizes per the layout, scales signed", () => {
  const q6 = new Uint8Array(210);
  q6.set([0x00, 0x38], 208); // d = 0.5
  const scales = [-128, -1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 127];
  q6.set(scales.map((v) => v & 255), 192);
  q6[0] = 0x5f; // element 0: low 4 bits 15; element 64: 5
  q6[128] = 0b10_01_00_11; // high 2 bits of elements 0 (3), 32 (0), 64 (1), 96 (2)
  q6[64 + 32 + 1] = 0x07; // second half, element 128 + 32 + 1: low 4 bits 7
  q6[128 + 32 + 1] = 0b1100; // ... and high bits 3: q = 55
  const y = dequantize(QuantType.Q6_K, q6, 256, new Float64Array(256));
  assert.equal(y[0], 0.5 * -128 * (63 - 32));
  assert.equal(y[1], 0.5 * -128 * -32);
  assert.equal(y[32], 0.5 * 2 * -32); // element 32 is in group 2
  assert.equal(y[64], 0.5 * 4 * (21 - 32));
  assert.equal(y[96], 0); // q = 32
  assert.equal(y[161], 0.5 * 10 * (55 - 32));
  assert.equal(y[255], 0.5 * 127 * -32);
});

Deno.test("ggml K-quants: f16 scales round up, never down", () => {
  assert.equal(f16CeilBits(1), 0x3c00);
  assert.equal(f16BitsToF32(f16CeilBits(1 + 2 ** -12)), 1 + 2 ** -10);
  assert.equal(f16CeilBits(0), 0);
  assert.equal(f16CeilBits(1e-9), 1); // the smallest subnormal
  const rng = new Rng(3);
  for (let i = 0; i < 1000; i++) {
    const x = 2 ** (28 * rng.nextFloat() - 14); // normal halves: relative spacing 2^-10
    const up = f16BitsToF32(f16CeilBits(x));
    assert.ok(up >= x && up <= x * (1 + 2 ** -10), `${x} -> ${up}`);
  }
});

/** Rows that stress the scale choice: Gaussians, then special super-blocks. */
function testRows(): Float32Array {
  const rng = new Rng(11);
  const x = Float32Array.from({ length: 256 * 24 }, () => rng.normal());
  const block = (k: number) => x.subarray(256 * k, 256 * (k + 1));
  block(16).fill(0);
  block(17).forEach((v, i, a) => a[i] = Math.abs(v) + 1); // all positive: every min is 0
  block(18).forEach((v, i, a) => a[i] = -Math.abs(v) - 1); // all negative
  block(19).fill(-0.75);
  block(20).forEach((v, i, a) => a[i] = v * 1e-3 + (i === 77 ? 40 : 0)); // one outlier
  block(21).forEach((v, i, a) => a[i] = v * (1 + (i >> 5) * 3)); // sub-block spreads 1..22
  block(22).forEach((v, i, a) => a[i] = v * 1e-4); // scales in f16's subnormal range
  block(23).forEach((v, i, a) => a[i] = 3 + v * 0.01); // offset far from zero
  return x;
}

Deno.test("ggml K-quants: round trips stay within half a step of every element", () => {
  const x = testRows();
  const n = x.length;
  for (const type of [QuantType.Q4_K, QuantType.Q5_K, QuantType.Q6_K]) {
    const bytes = quantize(type, x);
    assert.equal(bytes.length, quantizedBytes(type, n));
    const y = dequantize(type, bytes, n, new Float64Array(n));
    const view = new DataView(bytes.buffer);
    let ssErr = 0;
    let ss = 0;
    for (let b = 0; b < n / 256; b++) {
      for (let e = 0; e < 256; e++) {
        const i = 256 * b + e;
        let step: number;
        let clamped = false;
        if (type === QuantType.Q6_K) {
          const at = 210 * b;
          step = Math.abs(f16BitsToF32(view.getUint16(at + 208, true)) * view.getInt8(at + 192 + (e >> 4)));
          // An element of the opposite sign to its group's extreme, within half a step of it, clips to 31.
          clamped = Math.abs(x[i]) > 31.5 * step;
        } else {
          const at = (type === QuantType.Q4_K ? 144 : 176) * b;
          step = f16BitsToF32(view.getUint16(at, true)) * unpackScaleMinK4(bytes, at + 4, e >> 5).sc;
        }
        const err = Math.abs(y[i] - x[i]);
        // 1e-6 relative: float64 rounding of (x + offset) / step next to a tie.
        assert.ok(
          err <= (clamped ? step : step / 2) * (1 + 1e-6) + 1e-12,
          `type ${type} block ${b} element ${e}: |${y[i]} - ${x[i]}| = ${err} > half step ${step / 2}`,
        );
        if (b < 16) ssErr += err * err, ss += x[i] * x[i];
      }
    }
    // The Gaussian blocks' relative rms error against what the bits allow: a uniform quantizer over
    // the expected range of 32 Gaussians (~4.1 sigma) with 16 or 32 levels gives 4.1 / 15 / sqrt(12)
    // = 0.079 and 0.038; over 16 Gaussians' ±max|x| (~2 x 1.95 sigma) with 64 levels, 0.018.
    // Measured: Q4_K 0.0798, Q5_K 0.0390, Q6_K 0.0187. The bounds (about 1.15x) catch a scale choice
    // that wastes levels, which the half-step check above cannot see.
    const rel = Math.sqrt(ssErr / ss);
    console.log(`    type ${type}: relative rms error ${rel.toFixed(4)}`);
    const limit = { [QuantType.Q4_K]: 0.09, [QuantType.Q5_K]: 0.045, [QuantType.Q6_K]: 0.022 }[type];
    assert.ok(rel <= limit, `type ${type}: relative rms error ${rel} > ${limit}`);
  }
});

Deno.test("ggml K-quants: a zero super-block has zero scales and dequantizes to zeros", () => {
  for (const type of [QuantType.Q4_K, QuantType.Q5_K, QuantType.Q6_K]) {
    const bytes = quantize(type, new Float32Array(256));
    assert.ok(bytes.every((v, i) => v === 0 || (type === QuantType.Q6_K && i < 192)), `type ${type}`);
    assert.ok(dequantize(type, bytes, 256).every((v) => v === 0), `type ${type}`);
  }
});
