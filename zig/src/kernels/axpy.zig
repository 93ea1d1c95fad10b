//! Row axpy: y += c * row, for the transposed down projection of sparse FFNs, where each active
//! neuron adds its (scaled) column of W_down to the output. The row is dequantized on the fly in
//! f32 lanes; `axpyReference` is the scalar reference.
const std = @import("std");
const DType = @import("dtype.zig").DType;
const quant = @import("quant.zig");

const lanes = 8;
const F32x8 = @Vector(lanes, f32);

/// Types a row of the transposed down projection may have (see sparse/neuron_store.zig).
pub fn supported(t: DType) bool {
    return switch (t) {
        .f32, .f16, .q8_0 => true,
        else => false,
    };
}

/// y[0..n] += c * row, `row` of type `t` with `n` elements.
pub fn axpy(t: DType, row: [*]const u8, c: f32, y: [*]f32, n: usize) void {
    switch (t) {
        .f32 => {
            const r: [*]align(1) const f32 = @ptrCast(row);
            var i: usize = 0;
            while (i + lanes <= n) : (i += lanes) {
                y[i..][0..lanes].* = @mulAdd(F32x8, @splat(c), r[i..][0..lanes].*, y[i..][0..lanes].*);
            }
            while (i < n) : (i += 1) y[i] += c * r[i];
        },
        .f16 => {
            const r: [*]align(1) const f16 = @ptrCast(row);
            var i: usize = 0;
            while (i + lanes <= n) : (i += lanes) {
                const h: @Vector(lanes, f16) = r[i..][0..lanes].*;
                y[i..][0..lanes].* = @mulAdd(F32x8, @splat(c), @floatCast(h), y[i..][0..lanes].*);
            }
            while (i < n) : (i += 1) y[i] += c * @as(f32, @floatCast(r[i]));
        },
        .q8_0 => {
            const blocks: [*]align(1) const quant.BlockQ8_0 = @ptrCast(row);
            for (0..n / quant.qk) |b| {
                const cd: F32x8 = @splat(c * @as(f32, @floatCast(blocks[b].d)));
                const q: @Vector(32, i8) = blocks[b].qs;
                const f: @Vector(32, f32) = @floatFromInt(q);
                const out = y[b * quant.qk ..][0..quant.qk];
                inline for (0..4) |k| {
                    const part: F32x8 = @as([4]F32x8, @bitCast(f))[k];
                    out[k * lanes ..][0..lanes].* = @mulAdd(F32x8, cd, part, out[k * lanes ..][0..lanes].*);
                }
            }
        },
        else => unreachable, // checked when the neuron store is built
    }
}

/// Scalar reference: dequantize, then add in f64.
pub fn axpyReference(t: DType, row: [*]const u8, c: f32, y: []f64, scratch: []f32) void {
    quant.dequantizeRow(t, row, scratch[0..y.len]);
    for (y, scratch[0..y.len]) |*o, v| o.* += @as(f64, c) * v;
}

test "axpy matches its scalar reference for every supported type" {
    const gpa = std.testing.allocator;
    var prng = std.Random.DefaultPrng.init(5);
    const rng = prng.random();
    const dot = @import("dot.zig");
    for ([_]DType{ .f32, .f16, .q8_0 }) |t| {
        for ([_]usize{ 32, 96, 576, 4096 }) |n| {
            const row = try gpa.alloc(u8, t.rowBytes(n).?);
            defer gpa.free(row);
            dot.fillRandomRow(rng, t, n, row);
            const y = try gpa.alloc(f32, n);
            defer gpa.free(y);
            const want = try gpa.alloc(f64, n);
            defer gpa.free(want);
            const scratch = try gpa.alloc(f32, n);
            defer gpa.free(scratch);
            for (y, want) |*a, *b| {
                a.* = rng.floatNorm(f32);
                b.* = a.*;
            }
            const c: f32 = -1.75;
            axpy(t, row.ptr, c, y.ptr, n);
            axpyReference(t, row.ptr, c, want, scratch);
            for (y, want) |got, w| try std.testing.expectApproxEqAbs(w, @as(f64, got), 1e-5 * (@abs(w) + 1));
        }
    }
}
