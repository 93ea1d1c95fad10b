//! Row axpy: y += c * row, for the transposed down projection of sparse FFNs, where each active
//! neuron adds its (scaled) column of W_down to the output. Rows are dequantized on the fly in f32
//! lanes. `axpyRows` takes several rows per pass over y, so each 32-element piece of y is loaded and
//! stored once per group of rows rather than once per row; `axpyReference` is the scalar reference.
//!
//! Every element of y gets one fused multiply-add per row, in the order of the row list, and nothing
//! else: so splitting the list into consecutive calls, or y into 32-element-aligned column ranges,
//! gives bitwise the same y. The sparse FFN relies on it (sparse/down_order.zig): its in-memory and
//! offloaded paths hand the same rows over in differently sized runs and must agree exactly.
const std = @import("std");
const DType = @import("dtype.zig").DType;
const quant = @import("quant.zig");
const simd = @import("simd.zig");

/// f32 lanes per vector: a 32-element block is two vectors. Sixteen lanes are one AVX-512 register
/// (two AVX2 ones, four NEON ones): unpacking a Q4_0 block took twice the instructions in 8-lane
/// pieces, and its axpy was compute-bound there (13.5 GB/s on 2 threads, against 22.8 for Q8_0).
/// Every element still gets the same single multiply-add per row, so y does not depend on the width.
const lanes = 16;
const F32V = @Vector(lanes, f32);
const qk = quant.qk;

/// Rows per pass over y. Each row's 4 value vectors are consumed before the next row's are loaded,
/// so 8 rows need no more registers than 4 (4 accumulators + 4 values + the scale, of AVX2's 16),
/// and y is loaded and stored half as often: bench/kernels_bench.ts, Q8_0 rows, every 8th of
/// 229376 x 4096, 2 threads: 13.0-17.9 GB/s with 4 rows, 19.7-21.0 with 8.
const group = 8;

/// Types a row of the transposed down projection may have (see sparse/neuron_store.zig).
pub fn supported(t: DType) bool {
    return switch (t) {
        .f32, .f16, .q8_0, .q4_0 => true,
        else => false,
    };
}

/// One 32-element block of a row: a scale and the values it multiplies.
const Block = struct { d: f32, v: [2]F32V };

inline fn blockAt(comptime t: DType, row: [*]const u8, b: usize) Block {
    var out: Block = undefined;
    switch (t) {
        .f32 => {
            const r: [*]align(1) const f32 = @ptrCast(row);
            out.d = 1;
            inline for (0..2) |k| out.v[k] = r[b * qk + k * lanes ..][0..lanes].*;
        },
        .f16 => {
            const r: [*]align(1) const f16 = @ptrCast(row);
            out.d = 1;
            inline for (0..2) |k| {
                const h: @Vector(lanes, f16) = r[b * qk + k * lanes ..][0..lanes].*;
                out.v[k] = @floatCast(h);
            }
        },
        .q8_0 => {
            const blk: *align(1) const quant.BlockQ8_0 = @ptrCast(row + b * @sizeOf(quant.BlockQ8_0));
            out.d = @floatCast(blk.d);
            const q: @Vector(32, i8) = blk.qs;
            const f: @Vector(32, f32) = @floatFromInt(q);
            out.v = @bitCast(f);
        },
        .q4_0 => {
            // The 16 bytes widened at once (one zero-extending load) and split by mask and shift:
            // element k < 16 is byte k's low nibble, element k + 16 its high one. The -8 is taken
            // in integers, per row: folding it into one add per group of rows would make y depend
            // on how the rows are grouped (see the module comment).
            const blk: *align(1) const quant.BlockQ4_0 = @ptrCast(row + b * @sizeOf(quant.BlockQ4_0));
            out.d = @floatCast(blk.d);
            const eight: @Vector(lanes, i32) = @splat(8);
            const bytes: @Vector(lanes, u8) = blk.qs;
            const w: @Vector(lanes, i32) = @intCast(bytes);
            out.v[0] = @floatFromInt((w & @as(@Vector(lanes, i32), @splat(0x0f))) - eight);
            out.v[1] = @floatFromInt((w >> @splat(4)) - eight);
        },
        else => unreachable,
    }
    return out;
}

/// y[0..n] += sum_k coeffs[k] * row(rows[k]), rows `row_bytes` apart from `data`, of type `t`, with
/// `n` (a multiple of 32) elements each.
pub fn axpyRows(t: DType, data: [*]const u8, row_bytes: usize, rows: []const u32, coeffs: [*]const f32, y: [*]f32, n: usize) void {
    std.debug.assert(n % qk == 0);
    switch (t) {
        inline .f32, .f16, .q8_0, .q4_0 => |tt| axpyRowsOf(tt, data, row_bytes, rows, coeffs, y, n),
        else => unreachable, // checked when the neuron store is built
    }
}

fn axpyRowsOf(comptime t: DType, data: [*]const u8, row_bytes: usize, rows: []const u32, coeffs: [*]const f32, y: [*]f32, n: usize) void {
    var k: usize = 0;
    while (k + group <= rows.len) : (k += group) {
        // The rows after this group: the next group, or the single-row tail.
        const next = rows[k + group .. @min(k + 2 * group, rows.len)];
        pass(t, group, data, row_bytes, rows[k..][0..group], next, coeffs + k, y, n);
    }
    while (k < rows.len) : (k += 1) pass(t, 1, data, row_bytes, rows[k..][0..1], &.{}, coeffs + k, y, n);
}

/// One pass over y[0..n] adding `g` rows. While it reads block b of them it prefetches block b of
/// the rows in `next` (at most `group`): the rows are scattered, so the hardware prefetcher only
/// finds each one after its first misses, and a pass that waits for them holds 8 streams of misses.
/// Spread this way the next group arrives while this one is summed. bench/kernels_bench.ts, every
/// 8th of 229376 x 4096 rows, 2 threads, three alternating rounds: Q8_0 16.2-17.8 -> 22.0-24.7 GB/s,
/// Q4_0 10.4-10.6 -> 13.5-13.6; 7B-shape synthetic sparse decode, token-by-token A/B in one
/// process: +3.0% and +3.1% tok/s.
inline fn pass(comptime t: DType, comptime g: usize, data: [*]const u8, row_bytes: usize, rows: *const [g]u32, next: []const u32, coeffs: [*]const f32, y: [*]f32, n: usize) void {
    // Bytes of one 32-element block of a row: one line, or more for float rows.
    const span = comptime t.rowBytes(qk).?;
    var r: [g][*]const u8 = undefined;
    inline for (0..g) |i| r[i] = data + @as(usize, rows[i]) * row_bytes;
    var ahead: [group][*]const u8 = undefined;
    for (next, 0..) |row, i| ahead[i] = data + @as(usize, row) * row_bytes;
    for (0..n / qk) |b| {
        for (ahead[0..next.len]) |p| {
            inline for (0..(span + 63) / 64) |line| @prefetch(p + b * span + line * 64, .{});
        }
        const out = y[b * qk ..][0..qk];
        var acc: [2]F32V = undefined;
        inline for (0..2) |j| acc[j] = out[j * lanes ..][0..lanes].*;
        inline for (0..g) |i| {
            const blk = blockAt(t, r[i], b);
            const cd = coeffs[i] * blk.d;
            inline for (0..2) |j| acc[j] = @mulAdd(F32V, @splat(cd), blk.v[j], acc[j]);
        }
        inline for (0..2) |j| out[j * lanes ..][0..lanes].* = acc[j];
    }
}

/// Scalar reference: dequantize, then add in f64.
pub fn axpyReference(t: DType, row: [*]const u8, c: f32, y: []f64, scratch: []f32) void {
    quant.dequantizeRow(t, row, scratch[0..y.len]);
    for (y, scratch[0..y.len]) |*o, v| o.* += @as(f64, c) * v;
}

test "axpyRows matches its scalar reference for every supported type and row count" {
    const gpa = std.testing.allocator;
    var prng = std.Random.DefaultPrng.init(5);
    const rng = prng.random();
    const dot = @import("dot.zig");
    for ([_]DType{ .f32, .f16, .q8_0, .q4_0 }) |t| {
        for ([_]usize{ 32, 96, 576, 4096 }) |n| {
            const n_rows = 11;
            const rb = t.rowBytes(n).?;
            const data = try gpa.alloc(u8, rb * n_rows);
            defer gpa.free(data);
            for (0..n_rows) |r| dot.fillRandomRow(rng, t, n, data[r * rb ..][0..rb]);
            const y = try gpa.alloc(f32, n);
            defer gpa.free(y);
            const want = try gpa.alloc(f64, n);
            defer gpa.free(want);
            const scratch = try gpa.alloc(f32, n);
            defer gpa.free(scratch);
            // 0..9 rows: the 8-row group, the single-row tail, and none at all.
            for (0..10) |count| {
                for (y, want) |*a, *b| {
                    a.* = rng.floatNorm(f32);
                    b.* = a.*;
                }
                var rows: [10]u32 = undefined;
                var coeffs: [10]f32 = undefined;
                for (0..count) |k| {
                    rows[k] = rng.uintLessThan(u32, n_rows);
                    coeffs[k] = rng.floatNorm(f32);
                    axpyReference(t, data.ptr + rows[k] * rb, coeffs[k], want, scratch);
                }
                axpyRows(t, data.ptr, rb, rows[0..count], &coeffs, y.ptr, n);
                for (y, want) |got, w| try std.testing.expectApproxEqAbs(w, @as(f64, got), 1e-4 * (@abs(w) + 1));
            }
        }
    }
}

test "axpyRows gives bitwise the same y however the rows are split into calls and y into column ranges" {
    const gpa = std.testing.allocator;
    var prng = std.Random.DefaultPrng.init(11);
    const rng = prng.random();
    const dot = @import("dot.zig");
    const n = 256;
    const n_rows = 29;
    for ([_]DType{ .f32, .f16, .q8_0, .q4_0 }) |t| {
        const rb = t.rowBytes(n).?;
        const data = try gpa.alloc(u8, rb * n_rows);
        defer gpa.free(data);
        for (0..n_rows) |r| dot.fillRandomRow(rng, t, n, data[r * rb ..][0..rb]);
        var rows: [n_rows]u32 = undefined;
        var coeffs: [n_rows]f32 = undefined;
        for (&rows, &coeffs, 0..) |*r, *c, k| {
            r.* = @intCast((k * 7) % n_rows);
            c.* = rng.floatNorm(f32);
        }
        var start: [n]f32 = undefined;
        for (&start) |*v| v.* = rng.floatNorm(f32);
        var whole = start;
        axpyRows(t, data.ptr, rb, &rows, &coeffs, &whole, n);
        // Runs of 1, 3, 9 and 16 rows (groups of 8 and single rows fall differently).
        for ([_]usize{ 1, 3, 9, 16 }) |run| {
            var split = start;
            var k: usize = 0;
            while (k < n_rows) : (k += run) {
                const e = @min(k + run, n_rows);
                axpyRows(t, data.ptr, rb, rows[k..e], coeffs[k..].ptr, &split, n);
            }
            try std.testing.expectEqualSlices(u32, @ptrCast(&whole), @ptrCast(&split));
        }
        // Column ranges [0, 96) and [96, 256): the second starts three blocks into every row.
        var cols = start;
        const c0 = 96;
        axpyRows(t, data.ptr, rb, &rows, &coeffs, &cols, c0);
        axpyRows(t, data.ptr + t.rowBytes(c0).?, rb, &rows, &coeffs, cols[c0..].ptr, n - c0);
        try std.testing.expectEqualSlices(u32, @ptrCast(&whole), @ptrCast(&cols));
    }
}

test "quantizeBlockQ4_0 round-trips within one step" {
    var prng = std.Random.DefaultPrng.init(9);
    const rng = prng.random();
    for (0..200) |_| {
        var x: [qk]f32 = undefined;
        for (&x) |*v| v.* = rng.floatNorm(f32) * 3;
        var blk: quant.BlockQ4_0 = undefined;
        quant.quantizeBlockQ4_0(&x, &blk);
        var back: [qk]f32 = undefined;
        quant.dequantizeRow(.q4_0, std.mem.asBytes(&blk), &back);
        const d: f32 = @abs(@as(f32, @floatCast(blk.d)));
        // Half a step, except that +max|x| clamps to q = 15 when the extreme value is negative.
        for (x, back) |a, b| try std.testing.expect(@abs(a - b) <= d + 1e-3 * @abs(a) + 1e-6);
    }
}
