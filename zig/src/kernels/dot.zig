//! Row dot products: one weight row (any supported type) against one prepared activation vector.
//!
//! Numerics (stated here and in the tests' tolerances):
//! - f32/f16/bf16 weights: activations stay f32; products accumulate in f32 across vector lanes.
//! - q4_0/q8_0 weights: activations are quantized to q8_0 (per 32 elements, d = max|x|/127), so each
//!   activation carries a relative error of at most 1/254 of its block's max; integer products are
//!   exact and summed per block in i32, blocks accumulate in f32.
//! - q4_1 weights: activations in q8_1 (q8_0 plus s = d * sum(q)), the offset term is m * s.
//!
//! `dotReference` computes the same quantity by dequantizing both sides to f32 and summing in f64:
//! a SIMD kernel must agree with it to f32 accumulation error, not to quantization error.
const std = @import("std");
const DType = @import("dtype.zig").DType;
const quant = @import("quant.zig");

const qk = quant.qk;
/// f32 lanes per vector: 16 with AVX-512, 8 with AVX2/NEON (two registers), 4 otherwise.
const lanes = std.simd.suggestVectorLength(f32) orelse 4;
const F32V = @Vector(lanes, f32);

/// Format the activation vector must be in for weights of type `w`.
pub fn activationType(w: DType) DType {
    return switch (w) {
        .f32, .f16, .bf16 => .f32,
        .q4_0, .q8_0 => .q8_0,
        .q4_1 => .q8_1,
        else => unreachable,
    };
}

pub fn activationBytes(w: DType, n: usize) usize {
    return activationType(w).rowBytes(n).?;
}

/// Converts f32 inputs to the activation format for `w` (a plain copy for float weights).
pub fn prepareActivation(w: DType, x: []const f32, out: []u8) void {
    switch (activationType(w)) {
        .f32 => @memcpy(out[0 .. x.len * 4], std.mem.sliceAsBytes(x)),
        .q8_0 => {
            const blocks: [*]quant.BlockQ8_0 = @ptrCast(@alignCast(out.ptr));
            quant.quantizeRowQ8_0(x, blocks[0 .. x.len / qk]);
        },
        .q8_1 => {
            const blocks: [*]quant.BlockQ8_1 = @ptrCast(@alignCast(out.ptr));
            quant.quantizeRowQ8_1(x, blocks[0 .. x.len / qk]);
        },
        else => unreachable,
    }
}

/// dot(row, act) for `n` elements; `row` of type `w`, `act` prepared by `prepareActivation`.
pub fn dot(w: DType, row: [*]const u8, act: [*]const u8, n: usize) f32 {
    return switch (w) {
        .f32 => dotF32(@ptrCast(@alignCast(row)), @ptrCast(@alignCast(act)), n),
        .f16 => dotF16(row, @ptrCast(@alignCast(act)), n),
        .bf16 => dotBf16(row, @ptrCast(@alignCast(act)), n),
        .q8_0 => dotQ8_0(@ptrCast(row), @ptrCast(act), n / qk),
        .q4_0 => dotQ4_0(@ptrCast(row), @ptrCast(act), n / qk),
        .q4_1 => dotQ4_1(@ptrCast(row), @ptrCast(act), n / qk),
        else => unreachable,
    };
}

fn dotF32(a: [*]const f32, b: [*]const f32, n: usize) f32 {
    var acc0: F32V = @splat(0);
    var acc1: F32V = @splat(0);
    var i: usize = 0;
    while (i + 2 * lanes <= n) : (i += 2 * lanes) {
        acc0 += @as(F32V, a[i..][0..lanes].*) * @as(F32V, b[i..][0..lanes].*);
        acc1 += @as(F32V, a[i + lanes ..][0..lanes].*) * @as(F32V, b[i + lanes ..][0..lanes].*);
    }
    var sum = @reduce(.Add, acc0 + acc1);
    while (i < n) : (i += 1) sum += a[i] * b[i];
    return sum;
}

fn dotF16(row: [*]const u8, b: [*]const f32, n: usize) f32 {
    const a: [*]align(1) const f16 = @ptrCast(row);
    var acc: F32V = @splat(0);
    var i: usize = 0;
    while (i + lanes <= n) : (i += lanes) {
        const h: @Vector(lanes, f16) = a[i..][0..lanes].*;
        acc += @as(F32V, @floatCast(h)) * @as(F32V, b[i..][0..lanes].*);
    }
    var sum = @reduce(.Add, acc);
    while (i < n) : (i += 1) sum += @as(f32, @floatCast(a[i])) * b[i];
    return sum;
}

fn dotBf16(row: [*]const u8, b: [*]const f32, n: usize) f32 {
    const a: [*]align(1) const u16 = @ptrCast(row);
    var acc: F32V = @splat(0);
    var i: usize = 0;
    while (i + lanes <= n) : (i += lanes) {
        const h: @Vector(lanes, u16) = a[i..][0..lanes].*;
        const widened: @Vector(lanes, u32) = @as(@Vector(lanes, u32), h) << @splat(16);
        acc += @as(F32V, @bitCast(widened)) * @as(F32V, b[i..][0..lanes].*);
    }
    var sum = @reduce(.Add, acc);
    while (i < n) : (i += 1) sum += quant.bf16ToF32(a[i]) * b[i];
    return sum;
}

/// Exact integer dot of 32 int8 pairs.
inline fn dotI8x32(a: @Vector(32, i8), b: @Vector(32, i8)) i32 {
    const prod = @as(@Vector(32, i16), a) * @as(@Vector(32, i16), b);
    return @reduce(.Add, @as(@Vector(32, i32), prod));
}

/// The 32 weights of a 4-bit block as unsigned nibbles, in element order (low nibbles first).
inline fn unpackNibbles(qs: *const [16]u8) @Vector(32, u8) {
    const bytes: @Vector(16, u8) = qs.*;
    const lo = bytes & @as(@Vector(16, u8), @splat(0x0f));
    const hi = bytes >> @splat(4);
    return std.simd.join(lo, hi);
}

fn dotQ8_0(w: [*]const quant.BlockQ8_0, x: [*]const quant.BlockQ8_0, n_blocks: usize) f32 {
    var sum: f32 = 0;
    for (0..n_blocks) |b| {
        const isum = dotI8x32(w[b].qs, x[b].qs);
        sum += @as(f32, @floatFromInt(isum)) * @as(f32, @floatCast(w[b].d)) * @as(f32, @floatCast(x[b].d));
    }
    return sum;
}

fn dotQ4_0(w: [*]const quant.BlockQ4_0, x: [*]const quant.BlockQ8_0, n_blocks: usize) f32 {
    var sum: f32 = 0;
    for (0..n_blocks) |b| {
        const q: @Vector(32, i8) = @bitCast(unpackNibbles(&w[b].qs) -% @as(@Vector(32, u8), @splat(8)));
        const isum = dotI8x32(q, x[b].qs);
        sum += @as(f32, @floatFromInt(isum)) * @as(f32, @floatCast(w[b].d)) * @as(f32, @floatCast(x[b].d));
    }
    return sum;
}

fn dotQ4_1(w: [*]const quant.BlockQ4_1, x: [*]const quant.BlockQ8_1, n_blocks: usize) f32 {
    var sum: f32 = 0;
    for (0..n_blocks) |b| {
        const q: @Vector(32, i8) = @bitCast(unpackNibbles(&w[b].qs));
        const isum = dotI8x32(q, x[b].qs);
        sum += @as(f32, @floatFromInt(isum)) * @as(f32, @floatCast(w[b].d)) * @as(f32, @floatCast(x[b].d)) +
            @as(f32, @floatCast(w[b].m)) * @as(f32, @floatCast(x[b].s));
    }
    return sum;
}

/// Scalar reference: dequantize both sides to f32, sum in f64. For q4_1 the offset term uses the
/// stored s (rounded to f16), exactly the quantity the kernel computes.
pub fn dotReference(w: DType, row: [*]const u8, act: [*]const u8, n: usize, scratch: []f32) f64 {
    const wf = scratch[0..n];
    const xf = scratch[n .. 2 * n];
    quant.dequantizeRow(w, row, wf);
    quant.dequantizeRow(activationType(w), act, xf);
    if (w == .q4_1) {
        // Split x = d*q; the m*sum(x) term is taken from the stored s, as the format defines it.
        const wq: [*]const quant.BlockQ4_1 = @ptrCast(row);
        const xq: [*]const quant.BlockQ8_1 = @ptrCast(act);
        var sum: f64 = 0;
        for (0..n / qk) |b| {
            const d: f64 = @floatCast(wq[b].d);
            const dx: f64 = @floatCast(xq[b].d);
            var isum: i64 = 0;
            for (0..qk) |j| {
                const nib: i64 = if (j < 16) wq[b].qs[j] & 0x0f else wq[b].qs[j - 16] >> 4;
                isum += nib * xq[b].qs[j];
            }
            sum += d * dx * @as(f64, @floatFromInt(isum)) + @as(f64, @floatCast(wq[b].m)) * @as(f64, @floatCast(xq[b].s));
        }
        return sum;
    }
    var sum: f64 = 0;
    for (wf, xf) |a, b| sum += @as(f64, a) * @as(f64, b);
    return sum;
}

// ---------------------------------------------------------------------------------------------
// Tests: every kernel against its scalar reference, on random rows of several lengths.

fn fillRandomRow(rng: std.Random, w: DType, n: usize, bytes: []u8) void {
    switch (w) {
        .f32 => for (std.mem.bytesAsSlice(f32, bytes[0 .. n * 4])) |*v| {
            v.* = rng.floatNorm(f32);
        },
        .f16 => for (0..n) |i| {
            const h: f16 = @floatCast(rng.floatNorm(f32));
            std.mem.writeInt(u16, bytes[i * 2 ..][0..2], @bitCast(h), .little);
        },
        .bf16 => for (0..n) |i| {
            std.mem.writeInt(u16, bytes[i * 2 ..][0..2], quant.f32ToBf16(rng.floatNorm(f32)), .little);
        },
        else => {
            rng.bytes(bytes[0..w.rowBytes(n).?]);
            // Keep the f16 scales finite and realistic: random bits could be NaN or huge.
            const bb = w.blockBytes().?;
            var off: usize = 0;
            while (off < w.rowBytes(n).?) : (off += bb) {
                const d: f16 = @floatCast(0.001 + rng.float(f32) * 0.05);
                std.mem.writeInt(u16, bytes[off..][0..2], @bitCast(d), .little);
                if (w == .q4_1) {
                    const m: f16 = @floatCast(-0.4 + rng.float(f32) * 0.1);
                    std.mem.writeInt(u16, bytes[off + 2 ..][0..2], @bitCast(m), .little);
                }
            }
        },
    }
}

test "every dot kernel matches its scalar reference" {
    const gpa = std.testing.allocator;
    var prng = std.Random.DefaultPrng.init(1234);
    const rng = prng.random();
    const types = [_]DType{ .f32, .f16, .bf16, .q8_0, .q4_0, .q4_1 };
    const lengths = [_]usize{ 32, 64, 96, 288, 576, 4096 };
    for (types) |w| {
        for (lengths) |n| {
            const row = try gpa.alloc(u8, w.rowBytes(n).?);
            defer gpa.free(row);
            const x = try gpa.alloc(f32, n);
            defer gpa.free(x);
            const act = try gpa.alignedAlloc(u8, 64, activationBytes(w, n));
            defer gpa.free(act);
            const scratch = try gpa.alloc(f32, 2 * n);
            defer gpa.free(scratch);
            fillRandomRow(rng, w, n, row);
            for (x) |*v| v.* = rng.floatNorm(f32);
            prepareActivation(w, x, act);
            const got = dot(w, row.ptr, act.ptr, n);
            const want = dotReference(w, row.ptr, act.ptr, n, scratch);
            // f32 accumulation over n terms: relative error ~ sqrt(n) * 2^-24 of the sum of |terms|;
            // bound it by 1e-5 of the magnitude scale sqrt(n) * |w| * |x| plus an absolute floor.
            var mag: f64 = 0;
            for (0..n) |i| mag += @abs(@as(f64, scratch[i]) * scratch[n + i]);
            const tol = 1e-5 * mag + 1e-6;
            if (@abs(@as(f64, got) - want) > tol) {
                std.debug.print("dtype {s} n {d}: got {d} want {d} (tol {d})\n", .{ w.name(), n, got, want, tol });
                return error.TestUnexpectedResult;
            }
        }
    }
}
