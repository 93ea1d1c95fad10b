//! Matrix-matrix kernels for prompt processing: y[t][r] = dot(row r, input t) for a range of rows
//! and a batch of tokens. A tile of R rows x T tokens unpacks each weight block and converts its
//! scale once for all T tokens, and loads each input block once for all R rows, which is what
//! makes a batch cheaper per token than decode. Numerics are those of dot.zig (same activation
//! formats, same integer products); only the order of the f32 additions differs.
const std = @import("std");
const DType = @import("dtype.zig").DType;
const quant = @import("quant.zig");
const dot = @import("dot.zig");
const simd = @import("simd.zig");

const F32x8 = simd.F32x8;
const I32x8 = simd.I32x8;
const I8x32 = simd.I8x32;
const U8x32 = simd.U8x32;
const Q8Act = dot.Q8Act;

/// Tile shapes (rows x tokens), measured on Zen 3 with bench/kernels_bench.ts: 1 x 4 beat 2 x 2,
/// 2 x 3, 2 x 4 (spills: AVX2 has 16 vector registers), 1 x 6 and 1 x 8 for the 32-element types.
const tile_rows_32 = 1;
const tile_tokens_32 = 4;
const tile_tokens_k = 4;

/// y[t * y_stride + r] = dot(row r, act t) for r in [r0, r1), t in [0, n_tokens); act t at
/// act + t * act_stride, prepared by dot.prepareActivation. `row_pairs`: the matrix is stored as
/// row pairs (dot.repackRowPairs; a 32-element block type) and r0, r1 are even.
pub fn matmul(w: DType, data: [*]const u8, row_bytes: usize, n_cols: usize, act: [*]const u8, act_stride: usize, n_tokens: usize, y: [*]f32, y_stride: usize, r0: usize, r1: usize, row_pairs: bool) void {
    switch (w) {
        inline .q8_0, .q4_0, .q4_1, .q5_0, .q5_1 => |t| tiles(t, tile_rows_32, tile_tokens_32, data, row_bytes, n_cols, act, act_stride, n_tokens, y, y_stride, r0, r1, row_pairs),
        inline .q4_k, .q5_k, .q6_k => |t| tiles(t, 1, tile_tokens_k, data, row_bytes, n_cols, act, act_stride, n_tokens, y, y_stride, r0, r1, false),
        else => for (r0..r1) |r| {
            for (0..n_tokens) |t| y[t * y_stride + r] = dot.dot(w, data + r * row_bytes, act + t * act_stride, n_cols);
        },
    }
}

/// Covers the rows x tokens rectangle with R x T tiles, then narrower tiles for the edges.
fn tiles(comptime w_type: DType, comptime R: usize, comptime T: usize, data: [*]const u8, row_bytes: usize, n_cols: usize, act: [*]const u8, act_stride: usize, n_tokens: usize, y: [*]f32, y_stride: usize, r0: usize, r1: usize, row_pairs: bool) void {
    const Edge = struct {
        fn run(comptime r_n: usize, comptime t_n: usize, d: [*]const u8, rb: usize, nc: usize, a: [*]const u8, as: usize, yy: [*]f32, ys: usize, r: usize, t: usize, pairs: bool) void {
            // A row's first block, and the distance between its 8-block batches: in a row pair
            // the odd row starts one batch in, and each row's batches alternate with the other's.
            const bb = comptime if (w_type.blockElems().? == quant.qk) w_type.blockBytes().? else 0;
            var rows: [r_n][*]const u8 = undefined;
            inline for (0..r_n) |i| rows[i] = if (pairs) d + ((r + i) & ~@as(usize, 1)) * rb + ((r + i) & 1) * 8 * bb else d + (r + i) * rb;
            var acts: [t_n][*]const u8 = undefined;
            inline for (0..t_n) |j| acts[j] = a + (t + j) * as;
            var out: [r_n][t_n]f32 = undefined;
            tile(w_type, r_n, t_n, rows, acts, nc, if (pairs) 16 * bb else 8 * bb, &out);
            inline for (0..r_n) |i| inline for (0..t_n) |j| {
                yy[(t + j) * ys + r + i] = out[i][j];
            };
        }
    };
    // Cache blocking: a chunk of rows small enough to stay in L2 is visited once per group of
    // tokens, so each group's inputs stay in L1 across the chunk and each weight row is read from
    // memory once, not once per token group.
    const chunk = @max(R, std.mem.alignBackward(usize, l2_budget_bytes / row_bytes, R));
    var c0 = r0;
    while (c0 < r1) : (c0 += chunk) {
        const c1 = @min(c0 + chunk, r1);
        var t: usize = 0;
        while (t + T <= n_tokens) : (t += T) {
            var r = c0;
            while (r + R <= c1) : (r += R) Edge.run(R, T, data, row_bytes, n_cols, act, act_stride, y, y_stride, r, t, row_pairs);
            while (r < c1) : (r += 1) Edge.run(1, T, data, row_bytes, n_cols, act, act_stride, y, y_stride, r, t, row_pairs);
        }
        while (t < n_tokens) : (t += 1) {
            var r = c0;
            while (r + R <= c1) : (r += R) Edge.run(R, 1, data, row_bytes, n_cols, act, act_stride, y, y_stride, r, t, row_pairs);
            while (r < c1) : (r += 1) Edge.run(1, 1, data, row_bytes, n_cols, act, act_stride, y, y_stride, r, t, row_pairs);
        }
    }
}

/// Weight bytes per row chunk: a quarter of a typical 512 KiB-1 MiB L2, leaving room for the inputs.
const l2_budget_bytes = 128 * 1024;

/// `batch_stride`: bytes from one 8-block batch of a row to its next (32-element block types).
fn tile(comptime w_type: DType, comptime R: usize, comptime T: usize, rows: [R][*]const u8, acts: [T][*]const u8, n_cols: usize, batch_stride: usize, out: *[R][T]f32) void {
    switch (w_type) {
        .q4_k, .q5_k => tileQ4K(w_type, R, T, rows, acts, n_cols / quant.qk_k, out),
        .q6_k => tileQ6K(R, T, rows, acts, n_cols / quant.qk_k, out),
        else => tile32(w_type, R, T, rows, acts, n_cols, batch_stride, out),
    }
}

/// The weights of one 32-element block, ready for the integer dot: unsigned 4/5-bit values, or for
/// q8_0 the magnitudes (the signs go onto the inputs, see simd.dotI8I8).
inline fn unpack32(comptime w_type: DType, blk: [*]const u8) U8x32 {
    return switch (w_type) {
        .q8_0 => @bitCast(simd.absI8(@bitCast(blk[2..34].*))),
        .q4_0 => simd.nibbles(blk[2..18]),
        .q4_1 => simd.nibbles(blk[4..20]),
        .q5_0 => simd.nibbles(blk[6..22]) | simd.fifthBits(std.mem.readInt(u32, blk[2..6], .little)),
        .q5_1 => simd.nibbles(blk[8..24]) | simd.fifthBits(std.mem.readInt(u32, blk[4..8], .little)),
        else => unreachable,
    };
}

inline fn pairDot(comptime w_type: DType, q: U8x32, blk: [*]const u8, x: I8x32) I32x8 {
    if (w_type == .q8_0) return simd.dotU8I8(q, simd.signOf(x, @bitCast(blk[2..34].*)));
    return simd.dotU8I8(q, x);
}

fn tile32(comptime w_type: DType, comptime R: usize, comptime T: usize, rows: [R][*]const u8, acts: [T][*]const u8, n_cols: usize, batch_stride: usize, out: *[R][T]f32) void {
    const bb = comptime w_type.blockBytes().?;
    const nb = n_cols / quant.qk;
    var x: [T]Q8Act = undefined;
    inline for (0..T) |j| x[j] = Q8Act.of(acts[j], n_cols);
    var acc: [R][T]F32x8 = @splat(@splat(@splat(0)));
    var b: usize = 0;
    while (b + 8 <= nb) : (b += 8) {
        var dd: [R][T][8]f32 = undefined;
        const at = b / 8 * batch_stride;
        inline for (0..R) |i| {
            const dw = simd.scales8(rows[i] + at, bb);
            inline for (0..T) |j| dd[i][j] = dw * @as(F32x8, x[j].dx[b..][0..8].*);
        }
        inline for (0..8) |k| {
            var q: [R]U8x32 = undefined;
            inline for (0..R) |i| q[i] = unpack32(w_type, rows[i] + at + k * bb);
            inline for (0..T) |j| {
                const xq: I8x32 = x[j].qs[b + k];
                inline for (0..R) |i| acc[i][j] = simd.fma8(dd[i][j][k], pairDot(w_type, q[i], rows[i] + at + k * bb, xq), acc[i][j]);
            }
        }
    }
    var tail: [R][T]f32 = @splat(@splat(0));
    while (b < nb) : (b += 1) {
        inline for (0..R) |i| {
            const blk = rows[i] + b * bb;
            const q = unpack32(w_type, blk);
            inline for (0..T) |j| {
                const p: F32x8 = @floatFromInt(pairDot(w_type, q, blk, x[j].qs[b]));
                tail[i][j] += simd.f16At(blk) * x[j].dx[b] * @reduce(.Add, p);
            }
        }
    }
    // Offset/min terms: sum_b (d_w or m_w)_b * s_b per (row, token), a small second pass.
    const has_min = comptime dot.hasMin(w_type);
    const offset_scale: f32 = comptime dot.offsetScale(w_type);
    var off: [R][T]F32x8 = @splat(@splat(@splat(0)));
    var off_tail: [R][T]f32 = @splat(@splat(0));
    if (offset_scale != 0) {
        const at = if (has_min) 2 else 0;
        var c: usize = 0;
        while (c + 8 <= nb) : (c += 8) {
            inline for (0..R) |i| {
                const s = simd.scales8(rows[i] + c / 8 * batch_stride + at, bb);
                inline for (0..T) |j| off[i][j] = @mulAdd(F32x8, s, x[j].sums[c..][0..8].*, off[i][j]);
            }
        }
        while (c < nb) : (c += 1) {
            inline for (0..R) |i| inline for (0..T) |j| {
                off_tail[i][j] += simd.f16At(rows[i] + c * bb + at) * x[j].sums[c];
            };
        }
    }
    inline for (0..R) |i| inline for (0..T) |j| {
        out[i][j] = @reduce(.Add, acc[i][j]) + tail[i][j] + offset_scale * (@reduce(.Add, off[i][j]) + off_tail[i][j]);
    };
}

/// Q4_K/Q5_K tile: integer sums per (row, token) over each super-block, scales applied with vpmaddwd,
/// one conversion to float per super-block (see dot.dotQ4K for the algebra).
fn tileQ4K(comptime w_type: DType, comptime R: usize, comptime T: usize, rows: [R][*]const u8, acts: [T][*]const u8, nb: usize, out: *[R][T]f32) void {
    const bb = comptime w_type.blockBytes().?;
    const has_qh = comptime w_type == .q5_k;
    var acc: [R][T]F32x8 = @splat(@splat(@splat(0)));
    var mins: [R][T]f32 = @splat(@splat(0));
    for (0..nb) |b| {
        var xb: [T]*align(1) const quant.BlockQ8_K = undefined;
        inline for (0..T) |j| xb[j] = &@as([*]align(1) const quant.BlockQ8_K, @ptrCast(acts[j]))[b];
        var pair: [T]I32x8 = undefined;
        inline for (0..T) |j| pair[j] = simd.pairSums(xb[j].bsums);
        inline for (0..R) |i| {
            const blk = rows[i] + b * bb;
            const sm = simd.scalesMinsK4(blk[4..16]);
            const m: I32x8 = @as(@Vector(8, u8), sm.m);
            const d = simd.f16At(blk);
            const dmin = simd.f16At(blk + 2);
            const qh: U8x32 = if (has_qh) blk[16..48].* else undefined;
            const qs = blk[if (has_qh) 48 else 16..][0..128];
            var isum: [T]I32x8 = @splat(@splat(0));
            inline for (0..4) |c| {
                const bytes: U8x32 = qs[32 * c ..][0..32].*;
                var q_lo = bytes & @as(U8x32, @splat(0x0f));
                var q_hi = bytes >> @splat(4);
                if (has_qh) {
                    q_lo |= ((qh >> @splat(2 * c)) & @as(U8x32, @splat(1))) << @splat(4);
                    q_hi |= ((qh >> @splat(2 * c + 1)) & @as(U8x32, @splat(1))) << @splat(4);
                }
                const s_lo: simd.I16x16 = @splat(@intCast(sm.sc[2 * c]));
                const s_hi: simd.I16x16 = @splat(@intCast(sm.sc[2 * c + 1]));
                inline for (0..T) |j| {
                    const x_lo: I8x32 = xb[j].qs[64 * c ..][0..32].*;
                    const x_hi: I8x32 = xb[j].qs[64 * c + 32 ..][0..32].*;
                    isum[j] +%= simd.maddwd(simd.maddubs(q_lo, x_lo), s_lo) +% simd.maddwd(simd.maddubs(q_hi, x_hi), s_hi);
                }
            }
            inline for (0..T) |j| {
                acc[i][j] = simd.fma8(d * xb[j].d, isum[j], acc[i][j]);
                mins[i][j] += dmin * xb[j].d * @as(f32, @floatFromInt(@reduce(.Add, pair[j] * m)));
            }
        }
    }
    inline for (0..R) |i| inline for (0..T) |j| {
        out[i][j] = @reduce(.Add, acc[i][j]) - mins[i][j];
    };
}

/// Q6_K tile (see dot.dotQ6K for the algebra).
fn tileQ6K(comptime R: usize, comptime T: usize, rows: [R][*]const u8, acts: [T][*]const u8, nb: usize, out: *[R][T]f32) void {
    var acc: [R][T]F32x8 = @splat(@splat(@splat(0)));
    var offset: [R][T]f32 = @splat(@splat(0));
    for (0..nb) |b| {
        var xb: [T]*align(1) const quant.BlockQ8_K = undefined;
        inline for (0..T) |j| xb[j] = &@as([*]align(1) const quant.BlockQ8_K, @ptrCast(acts[j]))[b];
        inline for (0..R) |i| {
            const blk: *align(1) const quant.BlockQ6_K = @ptrCast(rows[i] + b * @sizeOf(quant.BlockQ6_K));
            const d: f32 = @floatCast(blk.d);
            const sc: simd.I16x16 = @as(@Vector(16, i8), blk.scales);
            var isum: [T]I32x8 = @splat(@splat(0));
            inline for (0..2) |half| {
                const ql0: U8x32 = blk.ql[64 * half ..][0..32].*;
                const ql1: U8x32 = blk.ql[64 * half + 32 ..][0..32].*;
                const qh: U8x32 = blk.qh[32 * half ..][0..32].*;
                const low4: U8x32 = @splat(0x0f);
                const two: U8x32 = @splat(3);
                const q = [4]U8x32{
                    (ql0 & low4) | ((qh & two) << @splat(4)),
                    (ql1 & low4) | (((qh >> @splat(2)) & two) << @splat(4)),
                    (ql0 >> @splat(4)) | (((qh >> @splat(4)) & two) << @splat(4)),
                    (ql1 >> @splat(4)) | (((qh >> @splat(6)) & two) << @splat(4)),
                };
                inline for (0..4) |k| {
                    const e = 128 * half + 32 * k;
                    const g = e / 16;
                    const mask = comptime blk2: {
                        var m: [16]i32 = undefined;
                        for (&m, 0..) |*v, idx| v.* = if (idx < 8) g else g + 1;
                        break :blk2 m;
                    };
                    const scale = @shuffle(i16, sc, undefined, mask);
                    inline for (0..T) |j| {
                        const xv: I8x32 = xb[j].qs[e..][0..32].*;
                        isum[j] +%= simd.maddwd(simd.maddubs(q[k], xv), scale);
                    }
                }
            }
            inline for (0..T) |j| {
                acc[i][j] = simd.fma8(d * xb[j].d, isum[j], acc[i][j]);
                offset[i][j] += 32 * d * xb[j].d * @as(f32, @floatFromInt(@reduce(.Add, simd.maddwd(sc, xb[j].bsums))));
            }
        }
    }
    inline for (0..R) |i| inline for (0..T) |j| {
        out[i][j] = @reduce(.Add, acc[i][j]) - offset[i][j];
    };
}

/// Random weights and `n_tokens` prepared random inputs, for the tests.
const Fixture = struct {
    gpa: std.mem.Allocator,
    rb: usize,
    data: []u8,
    stride: usize,
    act: []align(64) u8,

    fn init(gpa: std.mem.Allocator, rng: std.Random, w: DType, n_cols: usize, n_rows: usize, n_tokens: usize) !Fixture {
        const rb = w.rowBytes(n_cols).?;
        const data = try gpa.alloc(u8, rb * n_rows);
        errdefer gpa.free(data);
        for (0..n_rows) |r| dot.fillRandomRow(rng, w, n_cols, data[r * rb ..][0..rb]);
        const stride = std.mem.alignForward(usize, dot.activationBytes(w, n_cols), 64);
        const act = try gpa.alignedAlloc(u8, 64, stride * n_tokens);
        errdefer gpa.free(act);
        const x = try gpa.alloc(f32, n_cols);
        defer gpa.free(x);
        for (0..n_tokens) |t| {
            for (x) |*v| v.* = rng.floatNorm(f32);
            dot.prepareActivation(w, x, act[t * stride ..][0..stride]);
        }
        return .{ .gpa = gpa, .rb = rb, .data = data, .stride = stride, .act = act };
    }

    fn deinit(self: *Fixture) void {
        self.gpa.free(self.data);
        self.gpa.free(self.act);
    }
};

test "tiled matmul equals the row kernels for every type and edge shape" {
    var prng = std.Random.DefaultPrng.init(99);
    const types = [_]DType{ .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q4_k, .q5_k, .q6_k, .f32, .f16, .bf16 };
    for (types) |w| {
        const n_cols: usize = if (w.blockElems().? == 256) 768 else 288; // 288: 9 blocks, exercises the tails
        const n_rows = 5;
        const n_tokens = 7;
        var f = try Fixture.init(std.testing.allocator, prng.random(), w, n_cols, n_rows, n_tokens);
        defer f.deinit();
        var y: [n_tokens * n_rows]f32 = undefined;
        matmul(w, f.data.ptr, f.rb, n_cols, f.act.ptr, f.stride, n_tokens, &y, n_rows, 0, n_rows, false);
        for (0..n_tokens) |t| for (0..n_rows) |r| {
            const want = dot.dot(w, f.data.ptr + r * f.rb, f.act.ptr + t * f.stride, n_cols);
            // Same products, other summation order: f32 rounding only.
            try std.testing.expectApproxEqAbs(want, y[t * n_rows + r], 1e-4 * (@abs(want) + 1));
        };
    }
}

test "tiled matmul over row pairs gives bitwise what it gives over rows one after another" {
    var prng = std.Random.DefaultPrng.init(23);
    for ([_]DType{ .q8_0, .q4_0, .q4_1, .q5_0, .q5_1 }) |w| {
        const n_cols: usize = 512; // two 8-block batches
        const n_rows = 6;
        const n_tokens = 5;
        var f = try Fixture.init(std.testing.allocator, prng.random(), w, n_cols, n_rows, n_tokens);
        defer f.deinit();
        var plain: [n_tokens * n_rows]f32 = undefined;
        matmul(w, f.data.ptr, f.rb, n_cols, f.act.ptr, f.stride, n_tokens, &plain, n_rows, 0, n_rows, false);
        var scratch: [2 * 1024]u8 = undefined;
        dot.repackRowPairs(w, f.data.ptr, f.rb, 0, n_rows, &scratch);
        // Rows 2.. only: the rows before the range stay untouched.
        var pairs: [n_tokens * n_rows]f32 = undefined;
        @memset(&pairs, std.math.nan(f32));
        matmul(w, f.data.ptr, f.rb, n_cols, f.act.ptr, f.stride, n_tokens, &pairs, n_rows, 2, n_rows, true);
        for (0..n_tokens) |t| for (0..n_rows) |r| {
            const got = pairs[t * n_rows + r];
            if (r < 2) {
                try std.testing.expect(std.math.isNan(got));
            } else {
                try std.testing.expectEqual(@as(u32, @bitCast(plain[t * n_rows + r])), @as(u32, @bitCast(got)));
            }
        };
    }
}
