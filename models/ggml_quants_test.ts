import assert from "node:assert/strict";
import { SparrowError } from "../core/errors.ts";
import {
  bf16BitsToF32,
  dequantize,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  quantize,
  quantizedBytes,
  QuantType,
} from "./ggml_quants.ts";

/** Deterministic N(0, 1) samples (Box–Muller over a small LCG) for round-trip tests. */
function gaussians(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const u = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) + 0.5) / 4294967296;
  return Float32Array.from({ length: n }, () => Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u()));
}

Deno.test("ggml quants: f16 conversion rounds to nearest even and keeps subnormals and infinities", () => {
  assert.equal(f32ToF16Bits(1), 0x3c00);
  assert.equal(f32ToF16Bits(-2), 0xc000);
  assert.equal(f32ToF16Bits(65504), 0x7bff); // largest finite half
  assert.equal(f32ToF16Bits(65520), 0x7c00); // halfway to the next binade rounds to infinity
  assert.equal(f32ToF16Bits(2 ** -24), 0x0001); // smallest subnormal
  assert.equal(f32ToF16Bits(-0), 0x8000);
  assert.equal(f32ToF16Bits(1 + 2 ** -11), 0x3c00); // tie between 1 and 1 + 2^-10 goes to the even one
  assert.equal(f32ToF16Bits(1 + 3 * 2 ** -11), 0x3c02);
  assert.equal(f16BitsToF32(0x3555), 0.333251953125);
  assert.equal(f16BitsToF32(0x0001), 2 ** -24);
  assert.ok(Number.isNaN(f16BitsToF32(0x7e00)));
});

Deno.test("ggml quants: bf16 conversion rounds to nearest even and keeps NaN quiet", () => {
  assert.equal(f32ToBf16Bits(1), 0x3f80);
  assert.equal(f32ToBf16Bits(1 + 2 ** -8), 0x3f80); // tie: 1.0 has the even mantissa
  assert.equal(f32ToBf16Bits(1 + 3 * 2 ** -8), 0x3f82); // tie: rounds up to the even one
  assert.equal(f32ToBf16Bits(1 + 2 ** -8 + 2 ** -20), 0x3f81); // above the tie
  assert.equal(f32ToBf16Bits(-Infinity), 0xff80);
  assert.equal(f32ToBf16Bits(NaN) & 0x7fc0, 0x7fc0);
  assert.equal(bf16BitsToF32(0xc0a0), -5);
});

Deno.test("ggml quants: hand-made blocks dequantize per the ggml layouts", () => {
  // Q4_0: d = 0.5; byte j holds element j (low nibble) and element j + 16 (high nibble).
  const q40 = new Uint8Array(18);
  new DataView(q40.buffer).setUint16(0, 0x3800, true); // 0.5
  for (let j = 0; j < 16; j++) q40[2 + j] = j | ((15 - j) << 4);
  const a = dequantize(QuantType.Q4_0, q40, 32);
  assert.equal(a[0], -4); // (0 - 8) * 0.5
  assert.equal(a[15], 3.5); // (15 - 8) * 0.5
  assert.equal(a[16], 3.5); // high nibble of byte 0 = 15
  assert.equal(a[31], -4); // high nibble of byte 15 = 0

  // Q4_1: d = 0.25, m = -1; x = q * d + m.
  const q41 = new Uint8Array(20);
  const v41 = new DataView(q41.buffer);
  v41.setUint16(0, 0x3400, true); // 0.25
  v41.setUint16(2, 0xbc00, true); // -1
  q41[4] = 0x3a; // element 0: q = 10, element 16: q = 3
  const b = dequantize(QuantType.Q4_1, q41, 32, new Float64Array(32));
  assert.equal(b[0], 1.5);
  assert.equal(b[16], -0.25);
  assert.equal(b[1], -1);

  // Q8_0: d = 1/16, signed bytes.
  const q80 = new Uint8Array(34);
  new DataView(q80.buffer).setUint16(0, 0x2c00, true); // 0.0625
  q80[2] = 0x81; // -127
  q80[3] = 0x7f; // 127
  q80[33] = 0xff; // -1
  const c = dequantize(QuantType.Q8_0, q80, 32);
  assert.deepEqual([c[0], c[1], c[2], c[31]], [-127 / 16, 127 / 16, 0, -1 / 16]);

  // Q5_0: d = 0.5; qh (u32 LE at byte 2) bit j is bit 4 of element j's code.
  const q50 = new Uint8Array(22);
  const v50 = new DataView(q50.buffer);
  v50.setUint16(0, 0x3800, true); // 0.5
  v50.setUint32(2, (1 << 0) | (1 << 16) | (1 << 31), true);
  q50[6] = 0x3a; // element 0: low nibble 10 (+16 from qh) = 26, element 16: 3 (+16) = 19
  q50[21] = 0xf0; // element 15: 0 (no qh bit), element 31: 15 (+16) = 31
  const e = dequantize(QuantType.Q5_0, q50, 32);
  assert.deepEqual([e[0], e[16], e[15], e[31], e[1]], [5, 1.5, -8, 7.5, -8]); // (q - 16) * 0.5

  // Q5_1: d = 0.25, m = -1, qh at byte 4.
  const q51 = new Uint8Array(24);
  const v51 = new DataView(q51.buffer);
  v51.setUint16(0, 0x3400, true); // 0.25
  v51.setUint16(2, 0xbc00, true); // -1
  v51.setUint32(4, 1 << 17, true); // element 17 gets bit 4
  q51[8] = 0x3a; // element 0: 10, element 16: 3
  q51[9] = 0x21; // element 1: 1, element 17: 2 + 16 = 18
  const f = dequantize(QuantType.Q5_1, q51, 32, new Float64Array(32));
  assert.deepEqual([f[0], f[16], f[1], f[17], f[2]], [1.5, -0.25, -0.75, 3.5, -1]);
});

Deno.test("ggml quants: hand-made rows quantize as ggml's reference quantizers do", () => {
  // Q4_0, largest magnitude negative (-16): d = -16 / -8 = 2, q = min(15, floor(x / 2 + 8.5)).
  const x = Float32Array.from({ length: 32 }, (_, i) => i - 16);
  const q = quantize(QuantType.Q4_0, x);
  const view = new DataView(q.buffer);
  assert.equal(view.getUint16(0, true), 0x4000); // d = 2
  assert.equal(q[2] & 15, 0); // x = -16 -> q 0
  assert.equal(q[3] & 15, 1); // x = -15 -> -7.5 + 8.5 = 1
  assert.equal(q[2] >> 4, 8); // x = 0 -> 8
  assert.equal(q[17] >> 4, 15); // x = 15 -> 16, clamped to 15

  // Largest magnitude positive: d is negative, so that element still maps to code 0.
  const y = Float32Array.from({ length: 32 }, (_, i) => 16 - i);
  const qy = quantize(QuantType.Q4_0, y);
  assert.equal(f16BitsToF32(new DataView(qy.buffer).getUint16(0, true)), -2);
  assert.equal(qy[2] & 15, 0);
  assert.equal(dequantize(QuantType.Q4_0, qy, 32)[0], 16);

  // Q8_0 rounds halves away from zero (C's roundf), unlike Math.round.
  const z = new Float32Array(32);
  z[0] = 127, z[1] = 2.5, z[2] = -2.5, z[3] = -0.5;
  const qz = quantize(QuantType.Q8_0, z);
  assert.equal(new DataView(qz.buffer).getUint16(0, true), 0x3c00); // d = 127 / 127 = 1
  assert.deepEqual(Array.from(new Int8Array(qz.buffer, 2, 4)), [127, 3, -3, -1]);

  // Q4_1: min 0, max 30 gives d = 2 and m = 0; x = 2k quantizes exactly, 2k + 1 rounds up.
  const w = Float32Array.from({ length: 32 }, (_, i) => Math.min(i, 30));
  const qw = quantize(QuantType.Q4_1, w);
  const vw = new DataView(qw.buffer);
  assert.equal(f16BitsToF32(vw.getUint16(0, true)), 2);
  assert.equal(f16BitsToF32(vw.getUint16(2, true)), 0);
  assert.equal(qw[4] & 15, 0); // x = 0
  assert.equal(qw[5] & 15, 1); // x = 1 -> 0.5 + 0.5 = 1
  assert.equal(qw[6] & 15, 1); // x = 2
  assert.equal(qw[4 + 15] >> 4, 15); // x = 30 (element 31)

  // Q5_0: x = i - 16 has its largest magnitude at -16, so d = 1 and every code is i: exact.
  const qa = quantize(QuantType.Q5_0, x);
  assert.equal(new DataView(qa.buffer).getUint16(0, true), 0x3c00);
  assert.equal(new DataView(qa.buffer).getUint32(2, true), 0xffff0000); // codes 16..31 have bit 4 set
  assert.deepEqual(Array.from(dequantize(QuantType.Q5_0, qa, 32)), Array.from(x));

  // Q5_1: x = 2i: min 0, max 62, so d = 2 and m = 0: exact.
  const xb = Float32Array.from({ length: 32 }, (_, i) => 2 * i);
  const qb = quantize(QuantType.Q5_1, xb);
  assert.equal(f16BitsToF32(new DataView(qb.buffer).getUint16(0, true)), 2);
  assert.equal(qb[4 + 4 + 15] >> 4, 15); // element 31: code 31, low nibble 15 (fifth bit in qh)
  assert.deepEqual(Array.from(dequantize(QuantType.Q5_1, qb, 32)), Array.from(xb));
});

Deno.test("ggml quants: round trips stay within each format's step", () => {
  const n = 32 * 64;
  const x = gaussians(n, 7);
  // f16 and bf16: relative half-ulp (2^-11, 2^-8) for normal numbers.
  const h = dequantize(QuantType.F16, quantize(QuantType.F16, x), n);
  const bf = dequantize(QuantType.BF16, quantize(QuantType.BF16, x), n);
  const f = dequantize(QuantType.F32, quantize(QuantType.F32, x), n);
  for (let i = 0; i < n; i++) {
    assert.ok(Math.abs(h[i] - x[i]) <= Math.abs(x[i]) * 2 ** -11 + 2 ** -25, `f16 element ${i}`);
    assert.ok(Math.abs(bf[i] - x[i]) <= Math.abs(x[i]) * 2 ** -8, `bf16 element ${i}`);
    assert.equal(f[i], x[i]);
  }
  // Block formats: error at most half a step, plus the scale's f16 rounding times the code, except
  // Q4_0's and Q5_0's clamped top code (an element equal to -max lands on 7 rather than 8, or 15
  // rather than 16: one full step).
  const types = [QuantType.Q8_0, QuantType.Q4_0, QuantType.Q4_1, QuantType.Q5_0, QuantType.Q5_1];
  for (const type of types) {
    const bytes = quantize(type, x);
    assert.equal(bytes.length, quantizedBytes(type, n));
    const y = dequantize(type, bytes, n, new Float64Array(n));
    const blockBytes = bytes.length / (n / 32);
    const view = new DataView(bytes.buffer);
    for (let b = 0; b < n / 32; b++) {
      const d = Math.abs(f16BitsToF32(view.getUint16(b * blockBytes, true)));
      const hasMin = type === QuantType.Q4_1 || type === QuantType.Q5_1;
      const m = hasMin ? Math.abs(f16BitsToF32(view.getUint16(b * blockBytes + 2, true))) : 0;
      const maxCodes: Record<number, number> = { [QuantType.Q8_0]: 127, [QuantType.Q4_0]: 8, [QuantType.Q5_0]: 16 };
      const maxCode = maxCodes[type] ?? (type === QuantType.Q5_1 ? 31 : 15);
      const f16Slack = (maxCode * d + m) * 2 ** -10;
      for (let j = 0; j < 32; j++) {
        const i = b * 32 + j;
        const clamped = (type === QuantType.Q4_0 || type === QuantType.Q5_0) && Math.abs(x[i]) > (maxCode - 0.5) * d;
        const step = clamped ? d : d / 2;
        const err = Math.abs(y[i] - x[i]);
        assert.ok(err <= step + f16Slack, `type ${type} element ${i}: |${y[i]} - ${x[i]}| = ${err} > ${step}`);
      }
    }
  }
});

Deno.test("ggml quants: a zero block has d = 0 and dequantizes to zeros", () => {
  for (const type of [QuantType.Q8_0, QuantType.Q4_0, QuantType.Q4_1, QuantType.Q5_0, QuantType.Q5_1]) {
    const y = dequantize(type, quantize(type, new Float32Array(32)), 32);
    assert.ok(y.every((v) => v === 0), `type ${type}: ${y}`); // Q4_0 gives d = 0 / -8 = -0: values are ±0
  }
});

Deno.test("ggml quants: bad sizes and types are named", () => {
  assert.throws(() => quantize(QuantType.Q4_0, new Float32Array(40)), (e: unknown) => {
    return e instanceof SparrowError && e.code === "invalid_argument" && /40 elements.*Q4_0/.test(e.message);
  });
  assert.throws(() => quantizedBytes(10, 256), (e: unknown) => {
    return e instanceof SparrowError && e.code === "unsupported" && /Q2_K/.test(e.message);
  });
  assert.throws(() => quantize(QuantType.Q4_K, new Float32Array(32)), (e: unknown) => {
    return e instanceof SparrowError && e.code === "invalid_argument" &&
      /32 elements.*Q4_K blocks of 256/.test(e.message);
  });
  assert.throws(() => dequantize(QuantType.Q8_0, new Uint8Array(33), 32), (e: unknown) => {
    return e instanceof SparrowError && /33 bytes/.test(e.message);
  });
  assert.throws(() => quantize(QuantType.F16, new Float32Array(4), new Uint8Array(4)), (e: unknown) => {
    return e instanceof SparrowError && /4 bytes cannot hold 8/.test(e.message);
  });
});
