//! Row dot products: one weight row (any supported type) against one prepared activation vector.
//!
//! Activations are prepared once per matrix-vector product and shared by every row:
//! - `f32` for f32/f16/bf16 weights: products accumulate in f32 across vector lanes.
//! - `q8` for the 32-element types (q4_0, q4_1, q5_0, q5_1, q8_0): per 32 elements, d = max|x|/127
//!   (stored as f16) and q = round(x / d), so each activation is off by at most d/2 = max|x|/254 of
//!   its block plus the f16 rounding of d; plus, per block, d again as f32 and the f32 sum d*sum(q),
//!   which carries the offset terms (-8 or -16 for q4_0/q5_0, the min m for q4_1/q5_1) so no row
//!   pays for them per element.
//! - `q8k` for the K-quants (q4_k, q5_k, q6_k): the same 8-bit rounding per 256 elements, plus the
//!   integer sums of each 16 elements for the mins and q6_k's -32 offset.
//! Integer products are exact; each block's integer dot becomes f32 once and accumulates in f32.
//!
//! `dotReference` computes the same quantity from dequantized values in f64: kernels must agree with
//! it to f32 accumulation error (their tests), while the error from quantizing activations is the
//! subject of the model-level tolerance (tests/reference_forward_test.ts).
const std = @import("std");
const DType = @import("dtype.zig").DType;
const quant = @import("quant.zig");
const simd = @import("simd.zig");
const dotU8I8 = simd.dotU8I8;
const dotI8I8 = simd.dotI8I8;
const maddubs = simd.maddubs;
const maddwd = simd.maddwd;
const nibbles = simd.nibbles;
const scales8 = simd.scales8;
const fifthBits = simd.fifthBits;
const f16At = simd.f16At;
const fma8 = simd.fma8;
const scalesMinsK4 = simd.scalesMinsK4;
const pairSums = simd.pairSums;

const qk = quant.qk;
const qk_k = quant.qk_k;
/// f32 lanes per vector: 16 with AVX-512, 8 with AVX2/NEON (two registers), 4 otherwise.
const lanes = std.simd.suggestVectorLength(f32) orelse 4;
const F32V = @Vector(lanes, f32);
const U8x32 = simd.U8x32;
const I8x32 = simd.I8x32;
const I32x8 = simd.I32x8;
const I16x16 = simd.I16x16;
const F32x8 = simd.F32x8;
const F32x16 = @Vector(16, f32);

/// How the input vector is prepared for a weight type. Weights with the same format can share one
/// prepared input (the engine fuses q/k/v and gate/up this way).
pub const ActFormat = enum(u32) { f32 = 0, q8 = 1, q8k = 2 };

pub fn activationFormat(w: DType) ActFormat {
    return switch (w) {
        .f32, .f16, .bf16 => .f32,
        .q4_0, .q4_1, .q5_0, .q5_1, .q8_0 => .q8,
        .q4_k, .q5_k, .q6_k => .q8k,
        else => unreachable,
    };
}

/// Bytes of a prepared input of `n` elements for weights of type `w`.
pub fn activationBytes(w: DType, n: usize) usize {
    return switch (activationFormat(w)) {
        .f32 => 4 * n,
        .q8 => if (split_halves) Q8Act.splitOffset(n / qk) + (n / qk / 4) * 4 * qk else Q8Act.valuesOffset(n / qk) + (n / qk) * qk,
        .q8k => (n / qk_k) * @sizeOf(quant.BlockQ8_K),
    };
}

/// Whether q8 inputs also carry their values split into block halves (`Q8Act.split`), for the
/// AVX-512 Q4_0 and Q4_1 kernels (`HalvesBatch`).
const split_halves = simd.x86.avx512_vnni;

/// A `q8` input (see quant.quantizeRowQ8Split): per-block scales d and sums d*sum(q) as f32, contiguous
/// so kernels load 8 at a time, then the 32 values of each block, 32-byte aligned. The buffer start
/// must be 32-byte aligned (the engine's are 64).
///
/// With `split_halves`, the same values once more, 64-byte aligned, per group of four blocks: the
/// first 16 values of each of the four (64 bytes), then their last 16 (64 bytes). A 4-bit block's
/// 16 bytes hold its first 16 weights in the low nibbles and its last 16 in the high ones, so four
/// blocks loaded into one register and masked (or shifted) line up with one 64-byte half each.
pub const Q8Act = struct {
    dx: [*]const f32,
    sums: [*]const f32,
    qs: [*]const [qk]i8,
    /// Groups of 4 blocks, 128 bytes each (only with `split_halves`; whole groups only).
    split: [*]const u8,

    pub fn valuesOffset(nb: usize) usize {
        return std.mem.alignForward(usize, 8 * nb, 32);
    }

    pub fn splitOffset(nb: usize) usize {
        return std.mem.alignForward(usize, valuesOffset(nb) + nb * qk, 64);
    }

    pub fn of(act: [*]const u8, n: usize) Q8Act {
        const nb = n / qk;
        const f: [*]const f32 = @ptrCast(@alignCast(act));
        return .{ .dx = f, .sums = f + nb, .qs = @ptrCast(@alignCast(act + valuesOffset(nb))), .split = act + splitOffset(nb) };
    }
};

/// Converts f32 inputs to the activation format for `w`. `out` must be 4-byte aligned.
pub fn prepareActivation(w: DType, x: []const f32, out: []u8) void {
    const n = x.len;
    switch (activationFormat(w)) {
        .f32 => @memcpy(out[0 .. n * 4], std.mem.sliceAsBytes(x)),
        .q8 => {
            const nb = n / qk;
            const f: [*]f32 = @ptrCast(@alignCast(out.ptr));
            const qs: [*][qk]i8 = @ptrCast(@alignCast(out.ptr + Q8Act.valuesOffset(nb)));
            quant.quantizeRowQ8Split(x, qs[0..nb], f[0..nb], f[nb .. 2 * nb]);
            // Built for every q8 input, whatever `w`: one prepared input serves every weight
            // type of its format (the engine fuses q/k/v), and 4-bit ones may be among them.
            if (split_halves) {
                const split = out[Q8Act.splitOffset(nb)..];
                for (0..nb / 4) |g| {
                    for (0..4) |k| {
                        @memcpy(split[g * 128 + 16 * k ..][0..16], std.mem.asBytes(&qs[4 * g + k])[0..16]);
                        @memcpy(split[g * 128 + 64 + 16 * k ..][0..16], std.mem.asBytes(&qs[4 * g + k])[16..32]);
                    }
                }
            }
        },
        .q8k => {
            const blocks: [*]align(1) quant.BlockQ8_K = @ptrCast(out.ptr);
            quant.quantizeRowQ8K(x, blocks[0 .. n / qk_k]);
        },
    }
}

/// dot(row, act) for `n` elements; `row` of type `w`, `act` prepared by `prepareActivation`.
/// Made for rows read one after another (a matrix-vector product): it prefetches past the row's end.
pub fn dot(w: DType, row: [*]const u8, act: [*]const u8, n: usize) f32 {
    return dotWith(true, w, row, act, n);
}

/// `dot` for a row gathered from anywhere (sparse FFNs): no prefetching past the row, whose next
/// bytes belong to a row that is likely not needed; the caller prefetches the rows it will read
/// next with `prefetchRow`.
pub fn dotGathered(w: DType, row: [*]const u8, act: [*]const u8, n: usize) f32 {
    return dotWith(false, w, row, act, n);
}

/// Rows shorter than this are prefetched by matvecRows, `short_row_ahead` bytes ahead of the one read.
const short_row_bytes = 1024;
const short_row_ahead = 8192;

/// Prefetches the lines of data[at + short_row_ahead ..][0..len] below `end_bytes`: the bytes being
/// read now, `short_row_ahead` later. Each line is asked for once when consecutive calls cover
/// consecutive ranges.
///
/// Into L2, not L1: a prefetch into L1 holds one of the core's few line-fill buffers until its line
/// arrives, which capped short rows at ~8.4 GB/s per thread from DRAM, while L2 takes several times
/// as many misses in flight. Kernel bench, 1 GB matrices, 2 threads, medians (Xeon KVM guest, 30.8
/// GB/s memory read): Q8_0 with 128 columns (a rank-128 predictor's fc2) 16.5 -> 21.5 GB/s, with 576
/// columns 17.5 -> 21.0; Q4_0 with 128 columns 17.5 -> 18.7; Q4_1 with 576 columns 19.0 -> 19.4. Into
/// L2 at 4 KiB ahead gave 20.9 for the first, 8 KiB into L1 no change. Long rows gained nothing from
/// L2 prefetches (their hardware prefetcher already fills L2 ahead), and gathered rows lost 6%.
inline fn prefetchAhead(data: [*]const u8, at: usize, len: usize, end_bytes: usize) void {
    const lo = at + short_row_ahead;
    var line = std.mem.alignForward(usize, lo, 64);
    while (line < lo + len and line < end_bytes) : (line += 64) @prefetch(data + line, .{ .locality = 2 });
}

/// y[r] = dot(row r, act) for r in [begin, end), rows `row_bytes` apart from `data`: the type is
/// dispatched once for all the rows, so the row kernel is inlined into the loop. That matters for
/// short rows: a rank-128 predictor's 14336 rows of 4 blocks spent most of their time in the
/// per-row call and dispatch.
pub fn matvecRows(w: DType, data: [*]const u8, row_bytes: usize, n: usize, act: [*]const u8, y: [*]f32, begin: usize, end: usize) void {
    switch (w) {
        inline .f32, .f16, .bf16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q4_k, .q5_k, .q6_k => |t| {
            if (row_bytes >= short_row_bytes) {
                var first = begin;
                if (comptime isBlock32(t)) {
                    if (n / qk >= 8) {
                        // Two rows at a time (see dot32Pair), each prefetching the row two ahead of it:
                        // the next pair, as far ahead as the one-row kernel's linear prefetch.
                        const x = Q8Act.of(act, n);
                        if (n % (8 * qk) == 0) {
                            while (first + 2 <= end) : (first += 2) {
                                const p0 = data + first * row_bytes;
                                const two = dot32Pair(t, .following_rows, false, p0, p0 + row_bytes, x, n / qk, p0 + 2 * row_bytes, p0 + 3 * row_bytes);
                                y[first] = two[0];
                                y[first + 1] = two[1];
                            }
                        } else {
                            first = pairedRowsWithTail(t, data, row_bytes, x, n / qk, y, first, end, null);
                        }
                    }
                }
                for (first..end) |r| y[r] = @call(.always_inline, dotWith, .{ true, t, data + r * row_bytes, act, n });
            } else {
                // Rows shorter than a batch get no prefetch from the row kernel, and the hardware
                // prefetcher stops at every 4 KiB page: ask for the lines a few KiB ahead, each once.
                const end_bytes = end * row_bytes;
                var first = begin;
                if (comptime isBlock32(t)) {
                    const x = Q8Act.of(act, n);
                    if (n / qk < 8) {
                        first = shortRows(t, data, row_bytes, x, n / qk, y, begin, end);
                    } else {
                        // A batch or more but under 1 KiB (SmolLM2-135M's 576 columns: 2 batches and 2
                        // blocks), two rows at a time like long rows, prefetched as short rows are.
                        // Kernel bench, 256 MB of 576-column rows, medians against one row at a time:
                        // Q4_1 6.1 -> 7.5 GB/s on 1 thread, 12.8 -> 14.3 on 2; Q8_0 (its tied
                        // classifier) 10.5 -> 13.9 and 20.9 -> 23.6. SmolLM2-135M decode against the
                        // same tree without it, in one process: 0.964x and 1.013x (the two load
                        // orders), within noise.
                        first = pairedRowsWithTail(t, data, row_bytes, x, n / qk, y, first, end, end_bytes);
                    }
                }
                for (first..end) |r| {
                    prefetchAhead(data, r * row_bytes, row_bytes, end_bytes);
                    y[r] = @call(.always_inline, dotWith, .{ true, t, data + r * row_bytes, act, n });
                }
            }
        },
        else => unreachable, // the types dotWith computes: checked when the model is loaded
    }
}

/// How far ahead of the batch being read a row-pair matrix-vector product prefetches: into L1 at
/// `row_pairs_ahead` (a standalone test, 2 GB of Q4_0 row pairs, 2 threads, Xeon KVM guest, read at
/// 27.0 GB/s with 1 KiB, 28.4 with 1.5 KiB and 28.0 with 2 KiB), and into L2 at
/// `row_pairs_ahead_l2` as well. The second matters most where each thread starts new streams
/// often, as a decode step does (a job per matrix, guided chunks in each): a standalone test of a
/// 7B decode's q/k/v and output matrices (32 layers, a job per layer's q/k/v and one per output
/// projection, 755 MB, 2 threads) read at 26.9-27.9 GB/s with the L1 prefetch alone, 29.0-29.4
/// with L2 at 3 KiB, 30.2-30.3 at 3.5 KiB, 29.5-29.8 at 4 KiB, 28.0-28.4 at 6 and 8 KiB; one job
/// over all of it 28.3-29.3 against 31.2-31.5. L2 alone at 4 KiB: 24.1-24.2.
const row_pairs_ahead = 1536;
const row_pairs_ahead_l2 = 3584;

/// Whether a matrix of `n_rows` x `n_cols` of type `w` can be stored as row pairs: a 32-element
/// block type, rows of whole 8-block batches and at most `row_pairs_max_cols`, an even row count.
pub fn rowPairsFit(w: DType, n_rows: usize, n_cols: usize) bool {
    return isBlock32(w) and n_cols % (8 * qk) == 0 and n_cols <= row_pairs_max_cols and n_rows % 2 == 0;
}

/// Longer rows stream more slowly as pairs than one after another. Kernel bench, 1 GB, 2 threads
/// (Xeon KVM guest), pairs against rows: Q4_0 4096 columns 28.3-28.8 against 28.5 GB/s, 8192 27.0-27.6
/// against 28.1, 14336 (a 7B FFN's down) 21.6-22.0 against 28.9-29.0; Q8_0 4096 31.0 against 28.6,
/// 8192 25.2 against 29.0. (Why is not understood: the prefetch distance, 1.5-6 KiB into L1 or L2,
/// did not change the 14336-column figure.)
const row_pairs_max_cols = 4096;

/// Rewrites a matrix (rows `row_bytes` apart, `rowPairsFit`) in place as row pairs: rows 2p and
/// 2p + 1 keep the 2 * row_bytes they span, now as row 2p's first 8 blocks, row 2p + 1's first 8
/// blocks, row 2p's next 8, and so on. A matrix-vector product then reads each pair as one stream,
/// where rows one after another made it two streams a row apart plus prefetches of the next pair
/// (llama.cpp repacks Q4_0 likewise, 8 rows at a time, for its AVX2 kernels). Rows [begin, end),
/// both even: one pair at a time through `scratch` (2 * row_bytes).
pub fn repackRowPairs(w: DType, data: [*]u8, row_bytes: usize, begin: usize, end: usize, scratch: []u8) void {
    const bb = w.blockBytes().?;
    const batch = 8 * bb;
    const batches = row_bytes / batch;
    var r = begin;
    while (r < end) : (r += 2) {
        const pair = data[r * row_bytes ..][0 .. 2 * row_bytes];
        @memcpy(scratch[0 .. 2 * row_bytes], pair);
        for (0..batches) |k| {
            @memcpy(pair[2 * k * batch ..][0..batch], scratch[k * batch ..][0..batch]);
            @memcpy(pair[(2 * k + 1) * batch ..][0..batch], scratch[row_bytes + k * batch ..][0..batch]);
        }
    }
}

/// matvecRows for a matrix stored as row pairs (`repackRowPairs`); `begin` and `end` even. Each
/// row gets the same operations in the same order as from matvecRows, so the same bits.
pub fn matvecRowPairs(w: DType, data: [*]const u8, row_bytes: usize, n: usize, act: [*]const u8, y: [*]f32, begin: usize, end: usize) void {
    std.debug.assert(begin % 2 == 0 and end % 2 == 0 and n % (8 * qk) == 0);
    switch (w) {
        inline .q8_0, .q4_0, .q4_1, .q5_0, .q5_1 => |t| {
            const bb = comptime t.blockBytes().?;
            const x = Q8Act.of(act, n);
            var r = begin;
            while (r < end) : (r += 2) {
                const p0 = data + r * row_bytes;
                const two = dot32PairStrided(t, .linear, false, 16, p0, p0 + 8 * bb, x, n / qk, p0, p0);
                y[r] = two[0];
                y[r + 1] = two[1];
            }
        },
        else => unreachable, // rowPairsFit
    }
}

/// Rows [first, end) of a matrix-vector product two at a time, for rows that are not whole batches
/// or that are under 1 KiB; returns the row left over (when the count is odd). With `end_bytes`
/// (short rows) the lines a few KiB ahead are prefetched as shortRows does, otherwise each pair
/// prefetches the next. Kept out of line, so that matvecRows (which inlines its row kernels for
/// every type) does not triple in size around its whole-batch loop, the one dense decode spends its
/// time in.
noinline fn pairedRowsWithTail(comptime t: DType, data: [*]const u8, row_bytes: usize, x: Q8Act, nb: usize, y: [*]f32, first: usize, end: usize, end_bytes: ?usize) usize {
    var r = first;
    while (r + 2 <= end) : (r += 2) {
        const p0 = data + r * row_bytes;
        const two = if (end_bytes) |eb| blk: {
            prefetchAhead(data, r * row_bytes, 2 * row_bytes, eb);
            break :blk if (nb % 8 == 0)
                dot32Pair(t, .none, false, p0, p0 + row_bytes, x, nb, p0, p0)
            else
                dot32Pair(t, .none, true, p0, p0 + row_bytes, x, nb, p0, p0);
        } else dot32Pair(t, .following_rows, true, p0, p0 + row_bytes, x, nb, p0 + 2 * row_bytes, p0 + 3 * row_bytes);
        y[r] = two[0];
        y[r + 1] = two[1];
    }
    return r;
}

/// The 32-element block types whose blocks carry a min (x = q d + m) beside the scale.
pub fn hasMin(t: DType) bool {
    return t == .q4_1 or t == .q5_1;
}

/// What multiplies sum_b (d_w or m_w)_b s_b in a block dot product (s_b: the sum of the activation
/// block): the unsigned 4/5-bit values' offset (-8, -16) taken out of q.x, or the min's 1.
pub fn offsetScale(t: DType) f32 {
    return switch (t) {
        .q4_0 => -8,
        .q5_0 => -16,
        .q4_1, .q5_1 => 1,
        else => 0,
    };
}

fn isBlock32(t: DType) bool {
    return switch (t) {
        .q8_0, .q4_0, .q4_1, .q5_0, .q5_1 => true,
        else => false,
    };
}

/// y[r] = dot(row r, act) for rows of `nb` < 8 blocks (a rank-128 predictor's fc2 has 4), eight
/// rows at a time from `begin`; returns the first row it left (fewer than 8 remain). Row by row,
/// such rows spent as much time on the call, the horizontal sum and the offset term as on their
/// blocks: the kernel bench's Q8_0 matvec read 128-column rows at 11.6 GB/s on one thread against
/// 22.2 for 4096-column ones. Here each row keeps one accumulator and the eight are summed together.
fn shortRows(comptime w_type: DType, data: [*]const u8, row_bytes: usize, x: Q8Act, nb: usize, y: [*]f32, begin: usize, end: usize) usize {
    const bb = comptime w_type.blockBytes().?;
    const has_min = comptime hasMin(w_type);
    const offset_scale: f32 = comptime offsetScale(w_type);
    const end_bytes = end * row_bytes;
    var r = begin;
    while (r + 8 <= end) : (r += 8) {
        prefetchAhead(data, r * row_bytes, 8 * row_bytes, end_bytes);
        var acc: [8]F32x8 = .{@as(F32x8, @splat(0))} ** 8;
        var off: [8]f32 = .{0} ** 8;
        for (0..nb) |b| {
            inline for (0..8) |i| {
                const blk = data + (r + i) * row_bytes + b * bb;
                const dw = f16At(blk);
                const p: F32x8 = @floatFromInt(blockDot32(w_type, blk, &x.qs[b]));
                acc[i] = @mulAdd(F32x8, @splat(dw * x.dx[b]), p, acc[i]);
                if (offset_scale != 0) off[i] += (if (has_min) f16At(blk + 2) else dw) * x.sums[b];
            }
        }
        const sums = sum8(acc) + @as(F32x8, @splat(offset_scale)) * @as(F32x8, off);
        y[r..][0..8].* = sums;
    }
    return r;
}

/// The horizontal sums of eight vectors, as one vector: three rounds of pairwise adds.
inline fn sum8(v: [8]F32x8) F32x8 {
    const even = [8]i32{ 0, -1, 2, -3, 4, -5, 6, -7 };
    const odd = [8]i32{ 1, -2, 3, -4, 5, -6, 7, -8 };
    var t: [4]F32x8 = undefined;
    inline for (0..4) |k| t[k] = @shuffle(f32, v[2 * k], v[2 * k + 1], even) + @shuffle(f32, v[2 * k], v[2 * k + 1], odd);
    // t[k] = [a0+a1, b0+b1, a2+a3, b2+b3, a4+a5, b4+b5, a6+a7, b6+b7] for (a, b) = v[2k], v[2k+1]
    const lo4 = [8]i32{ 0, 1, -1, -2, 4, 5, -5, -6 };
    const hi4 = [8]i32{ 2, 3, -3, -4, 6, 7, -7, -8 };
    var u: [2]F32x8 = undefined;
    inline for (0..2) |k| u[k] = @shuffle(f32, t[2 * k], t[2 * k + 1], lo4) + @shuffle(f32, t[2 * k], t[2 * k + 1], hi4);
    // u[k] = lanes 0-3 and lanes 4-7 summed apart, for the four vectors v[4k..4k+4]
    const first = [8]i32{ 0, 1, 2, 3, -1, -2, -3, -4 };
    const second = [8]i32{ 4, 5, 6, 7, -5, -6, -7, -8 };
    return @shuffle(f32, u[0], u[1], first) + @shuffle(f32, u[0], u[1], second);
}

/// y[k] = dot(row rows[k], act) for k in [0, rows.len): rows gathered from anywhere in a matrix
/// (sparse FFNs). Gathered rows defeat the hardware prefetcher (a row of a 7B Q4_0 gate is 2.3 KB,
/// read in about one DRAM latency), so the rows `lookahead` ahead are prefetched while these are
/// computed, and no row prefetches past its own end.
pub fn gatheredRows(w: DType, data: [*]const u8, row_bytes: usize, n: usize, act: [*]const u8, rows: []const u32, y: [*]f32) void {
    const lookahead = 2;
    const at = struct {
        fn f(d: [*]const u8, rb: usize, r: u32) [*]const u8 {
            return d + @as(usize, r) * rb;
        }
    }.f;
    for (rows[0..@min(lookahead, rows.len)]) |r| prefetchRow(at(data, row_bytes, r), row_bytes);
    switch (w) {
        // The 32-element block types prefetch the row `lookahead` ahead while they read this one,
        // two rows at a time when rows hold a batch of 8 blocks or more (dot32Pair).
        inline .q8_0, .q4_0, .q4_1, .q5_0, .q5_1 => |t| {
            const x = Q8Act.of(act, n);
            var k: usize = 0;
            if (n / qk >= 8) {
                if (n % (8 * qk) == 0) {
                    k = gatheredPairs(t, false, lookahead, data, row_bytes, x, n / qk, rows, y);
                } else {
                    k = gatheredPairs(t, true, lookahead, data, row_bytes, x, n / qk, rows, y);
                }
            }
            while (k < rows.len) : (k += 1) {
                const r = rows[k];
                const next = if (k + lookahead < rows.len) at(data, row_bytes, rows[k + lookahead]) else at(data, row_bytes, r);
                y[k] = @call(.always_inline, dot32, .{ t, .next_row, at(data, row_bytes, r), x, n / qk, next });
            }
        },
        else => for (rows, 0..) |r, k| {
            if (k + lookahead < rows.len) prefetchRow(at(data, row_bytes, rows[k + lookahead]), row_bytes);
            y[k] = dotGathered(w, at(data, row_bytes, r), act, n);
        },
    }
}

/// gatheredRows' pairs: rows[0..] two at a time, each prefetching the row `lookahead` after it;
/// returns how many it computed. `tail`: rows have blocks past their last whole batch.
inline fn gatheredPairs(comptime t: DType, comptime tail: bool, comptime lookahead: usize, data: [*]const u8, row_bytes: usize, x: Q8Act, nb: usize, rows: []const u32, y: [*]f32) usize {
    var k: usize = 0;
    while (k + 2 <= rows.len) : (k += 2) {
        const r0 = rows[k];
        const r1 = rows[k + 1];
        const n0 = if (k + lookahead < rows.len) rows[k + lookahead] else r0;
        const n1 = if (k + 1 + lookahead < rows.len) rows[k + 1 + lookahead] else r1;
        const two = dot32Pair(t, .next_rows, tail, data + @as(usize, r0) * row_bytes, data + @as(usize, r1) * row_bytes, x, nb, data + @as(usize, n0) * row_bytes, data + @as(usize, n1) * row_bytes);
        y[k] = two[0];
        y[k + 1] = two[1];
    }
    return k;
}

/// Asks for the `bytes` at `row` to be brought into the cache (one prefetch per 64-byte line).
pub inline fn prefetchRow(row: [*]const u8, bytes: usize) void {
    var off: usize = 0;
    while (off < bytes) : (off += 64) @prefetch(row + off, .{});
}

fn dotWith(comptime ahead: bool, w: DType, row: [*]const u8, act: [*]const u8, n: usize) f32 {
    return switch (w) {
        .f32 => dotF32(@ptrCast(@alignCast(row)), @ptrCast(@alignCast(act)), n),
        .f16 => dotF16(row, @ptrCast(@alignCast(act)), n),
        .bf16 => dotBf16(row, @ptrCast(@alignCast(act)), n),
        inline .q8_0, .q4_0, .q4_1, .q5_0, .q5_1 => |t| dot32(t, if (ahead) .linear else .none, row, Q8Act.of(act, n), n / qk, row),
        inline .q4_k, .q5_k => |t| dotQ4K(t, row, @ptrCast(act), n / qk_k),
        .q6_k => dotQ6K(@ptrCast(row), @ptrCast(act), n / qk_k),
        else => unreachable,
    };
}

// ---------------------------------------------------------------------------------------------
// Float weights.

fn dotF32(a: [*]const f32, b: [*]const f32, n: usize) f32 {
    var acc0: F32V = @splat(0);
    var acc1: F32V = @splat(0);
    var i: usize = 0;
    while (i + 2 * lanes <= n) : (i += 2 * lanes) {
        acc0 = @mulAdd(F32V, a[i..][0..lanes].*, b[i..][0..lanes].*, acc0);
        acc1 = @mulAdd(F32V, a[i + lanes ..][0..lanes].*, b[i + lanes ..][0..lanes].*, acc1);
    }
    var sum = @reduce(.Add, acc0 + acc1);
    while (i < n) : (i += 1) sum += a[i] * b[i];
    return sum;
}

fn dotF16(row: [*]const u8, b: [*]const f32, n: usize) f32 {
    const a: [*]align(1) const f16 = @ptrCast(row);
    var acc0: F32V = @splat(0);
    var acc1: F32V = @splat(0);
    var i: usize = 0;
    while (i + 2 * lanes <= n) : (i += 2 * lanes) {
        const h0: @Vector(lanes, f16) = a[i..][0..lanes].*;
        const h1: @Vector(lanes, f16) = a[i + lanes ..][0..lanes].*;
        acc0 = @mulAdd(F32V, @floatCast(h0), b[i..][0..lanes].*, acc0);
        acc1 = @mulAdd(F32V, @floatCast(h1), b[i + lanes ..][0..lanes].*, acc1);
    }
    var sum = @reduce(.Add, acc0 + acc1);
    while (i < n) : (i += 1) sum += @as(f32, @floatCast(a[i])) * b[i];
    return sum;
}

fn dotBf16(row: [*]const u8, b: [*]const f32, n: usize) f32 {
    const a: [*]align(1) const u16 = @ptrCast(row);
    var acc0: F32V = @splat(0);
    var acc1: F32V = @splat(0);
    var i: usize = 0;
    while (i + 2 * lanes <= n) : (i += 2 * lanes) {
        inline for (.{ &acc0, &acc1 }, 0..) |acc, k| {
            const h: @Vector(lanes, u16) = a[i + k * lanes ..][0..lanes].*;
            const widened = @as(@Vector(lanes, u32), h) << @splat(16);
            acc.* = @mulAdd(F32V, @bitCast(widened), b[i + k * lanes ..][0..lanes].*, acc.*);
        }
    }
    var sum = @reduce(.Add, acc0 + acc1);
    while (i < n) : (i += 1) sum += quant.bf16ToF32(a[i]) * b[i];
    return sum;
}

// ---------------------------------------------------------------------------------------------
// 32-element types against q8 activations, in batches of 8 blocks: the 8 weight scales are
// converted in one go, their products with the activation scales are broadcast from a small array,
// and the offset terms of the whole batch are one vector FMA against the activation sums.

/// Integer dot of one weight block with one activation block, in 8 i32 lanes.
/// blockDot32 for the block at base + `offset`, a compile-time displacement (no address arithmetic).
pub inline fn blockDotAt(comptime w_type: DType, base: [*]const u8, comptime offset: usize, xq: *const [qk]i8) I32x8 {
    return switch (w_type) {
        .q4_0 => dotU8I8(simd.nibblesAt(base, offset + 2), xq.*),
        .q4_1 => dotU8I8(simd.nibblesAt(base, offset + 4), xq.*),
        else => blockDot32(w_type, base + offset, xq),
    };
}

pub inline fn blockDot32(comptime w_type: DType, blk: [*]const u8, xq: *const [qk]i8) I32x8 {
    return switch (w_type) {
        .q8_0 => dotI8I8(@bitCast(blk[2..34].*), xq.*),
        .q4_0 => dotU8I8(nibbles(blk[2..18]), xq.*),
        .q4_1 => dotU8I8(nibbles(blk[4..20]), xq.*),
        .q5_0 => dotU8I8(nibbles(blk[6..22]) | fifthBits(std.mem.readInt(u32, blk[2..6], .little)), xq.*),
        .q5_1 => dotU8I8(nibbles(blk[8..24]) | fifthBits(std.mem.readInt(u32, blk[4..8], .little)), xq.*),
        else => unreachable,
    };
}

/// What dot32 prefetches while it reads a row: `linear`, the bytes `prefetch_batches` ahead
/// (matrix-vector products, rows one after another); `next_row`, the row it will read after the
/// next one (gathered rows: see gatheredRows); `none`.
const Ahead = enum { linear, none, next_row };

/// How many 8-block batches ahead dot32 prefetches: ~4.6 KB for Q4_0, past the ~100 ns DRAM latency at
/// ~15 GB/s per core (measured on Zen 3 with bench/kernels_bench.ts: 4 batches left 1-thread Q4_0 at
/// 9.4 GB/s, 32 gave 13.8).
const prefetch_batches = 32;

/// dot32 of two rows at once, for rows of 8 blocks or more, each prefetching its `next` row
/// as `.next_row` does: every row gets exactly dot32's operations in dot32's order (so the same
/// bits, whichever rows are paired), but the two rows' loads and multiply-adds interleave, so one
/// row's cache misses overlap the other's arithmetic. Kernel bench, Q4_0, one row in 8 of 229376 x
/// 4096 gathered (medians, alternating in one process): 19.4 -> 20.7 and 17.4 -> 19.2 GB/s on 2
/// threads, 10.8 -> 12.0 on 1; the whole 252 MB matrix-vector product: 24.1 -> 24.2 and 24.5 on 2,
/// 12.9 -> 13.3 and 13.6 on 1. 7B-shape synthetic model, sessions alternating token by token:
/// dense decode 1.045x and 1.017x, sparse 1.033x and 1.041x.
inline fn dot32Pair(comptime w_type: DType, comptime ahead: PairAhead, comptime tail: bool, row0: [*]const u8, row1: [*]const u8, x: Q8Act, nb: usize, next0: [*]const u8, next1: [*]const u8) [2]f32 {
    return dot32PairStrided(w_type, ahead, tail, 8, row0, row1, x, nb, next0, next1);
}

/// What dot32PairStrided prefetches while it reads a batch:
/// - `next_rows`: the same batch of the rows `next0` and `next1` (gathered rows);
/// - `following_rows`: the same, and into L2 also the bytes `following_rows_ahead_l2` past it in
///   those rows (rows one after another, which those bytes belong to);
/// - `linear`: the bytes `row_pairs_ahead` past row0's batch, and `row_pairs_ahead_l2` into L2 (row
///   pairs, one stream).
const PairAhead = enum { none, next_rows, following_rows, linear };

/// See `row_pairs_ahead_l2`. Standalone test of 32 jobs of 6144 and 4096 rows of 4096 Q4_0 columns
/// stored one after another (2 threads, Xeon KVM guest): 28.2-28.5 -> 30.1-30.7 GB/s; 32 jobs of
/// 4096 rows of 14336 columns (a 7B FFN's down): 28.3-28.5 -> 29.1-29.3.
const following_rows_ahead_l2 = 3584;

/// dot32Pair over rows whose 8-block batches lie `batch_stride` blocks apart: 8 for rows stored one
/// after the other, 16 for row pairs (see `repackRowPairs`), where row1 starts 8 blocks after row0.
/// The blocks are the same and are summed in the same order either way, so both give the same bits.
inline fn dot32PairStrided(comptime w_type: DType, comptime ahead: PairAhead, comptime tail: bool, comptime batch_stride: usize, row0: [*]const u8, row1: [*]const u8, x: Q8Act, nb: usize, next0: [*]const u8, next1: [*]const u8) [2]f32 {
    // Sixteen block dot products unrolled per batch: where the nibbles are split by generic vector
    // code (aarch64), their compile-time shuffle masks exceed the default evaluation quota.
    @setEvalBranchQuota(10_000);
    const bb = comptime w_type.blockBytes().?;
    const has_min = comptime hasMin(w_type);
    const offset_scale: f32 = comptime offsetScale(w_type);
    var acc0 = [4]F32x8{ @splat(0), @splat(0), @splat(0), @splat(0) };
    var acc1 = [4]F32x8{ @splat(0), @splat(0), @splat(0), @splat(0) };
    var off0: F32x8 = @splat(0);
    var off1: F32x8 = @splat(0);
    const halves = comptime split_halves and (w_type == .q4_0 or w_type == .q4_1);
    var wide0 = WideAcc{};
    var wide1 = WideAcc{};
    var wp0 = row0;
    var wp1 = row1;
    var b: usize = 0;
    while (b + 8 <= nb) : ({
        b += 8;
        wp0 += batch_stride * bb;
        wp1 += batch_stride * bb;
    }) {
        switch (ahead) {
            .none => {},
            .next_rows => inline for (0..(8 * bb + 63) / 64) |line| {
                @prefetch(next0 + b * bb + line * 64, .{});
                @prefetch(next1 + b * bb + line * 64, .{});
            },
            .following_rows => inline for (0..(8 * bb + 63) / 64) |line| {
                @prefetch(next0 + b * bb + line * 64, .{});
                @prefetch(next1 + b * bb + line * 64, .{});
                @prefetch(next0 + b * bb + following_rows_ahead_l2 + line * 64, .{ .locality = 2 });
                @prefetch(next1 + b * bb + following_rows_ahead_l2 + line * 64, .{ .locality = 2 });
            },
            .linear => inline for (0..(2 * 8 * bb + 63) / 64) |line| {
                @prefetch(wp0 + row_pairs_ahead + line * 64, .{});
                @prefetch(wp0 + row_pairs_ahead_l2 + line * 64, .{ .locality = 2 });
            },
        }
        const xd: F32x8 = x.dx[b..][0..8].*;
        if (comptime halves) {
            const h0 = HalvesBatch(w_type).load(wp0);
            const h1 = HalvesBatch(w_type).load(wp1);
            off0 = @mulAdd(F32x8, h0.offsetScales(), x.sums[b..][0..8].*, off0);
            off1 = @mulAdd(F32x8, h1.offsetScales(), x.sums[b..][0..8].*, off1);
            h0.dots(x.split + b * qk, h0.scales * xd, &wide0);
            h1.dots(x.split + b * qk, h1.scales * xd, &wide1);
            continue;
        }
        const dw0 = scales8(wp0, bb);
        const dw1 = scales8(wp1, bb);
        if (offset_scale != 0) {
            off0 = @mulAdd(F32x8, if (has_min) scales8(wp0 + 2, bb) else dw0, x.sums[b..][0..8].*, off0);
            off1 = @mulAdd(F32x8, if (has_min) scales8(wp1 + 2, bb) else dw1, x.sums[b..][0..8].*, off1);
        }
        var dd0: [8]f32 align(32) = undefined;
        var dd1: [8]f32 align(32) = undefined;
        simd.spill8(dw0 * xd, &dd0);
        simd.spill8(dw1 * xd, &dd1);
        inline for (0..8) |j| {
            const p0: F32x8 = @floatFromInt(blockDotAt(w_type, wp0, j * bb, &x.qs[b + j]));
            acc0[j & 3] = @mulAdd(F32x8, @splat(dd0[j]), p0, acc0[j & 3]);
            const p1: F32x8 = @floatFromInt(blockDotAt(w_type, wp1, j * bb, &x.qs[b + j]));
            acc1[j & 3] = @mulAdd(F32x8, @splat(dd1[j]), p1, acc1[j & 3]);
        }
    }
    if (comptime halves) {
        acc0 = wide0.narrow();
        acc1 = wide1.narrow();
    }
    // The blocks after the last whole batch, as dot32 takes them (four at a time into the four
    // accumulators, then one at a time into the first), each row in its own order. Compiled only
    // where rows have such blocks, so the whole-batch kernel stays as it was.
    var tail0: f32 = 0;
    var tail1: f32 = 0;
    if (tail) {
        while (b + 4 <= nb) : (b += 4) {
            inline for (0..4) |j| {
                tailBlock(w_type, row0, x, b + j, &acc0[j], &tail0);
                tailBlock(w_type, row1, x, b + j, &acc1[j], &tail1);
            }
        }
        while (b < nb) : (b += 1) {
            tailBlock(w_type, row0, x, b, &acc0[0], &tail0);
            tailBlock(w_type, row1, x, b, &acc1[0], &tail1);
        }
    }
    return .{
        @reduce(.Add, (acc0[0] + acc0[1]) + (acc0[2] + acc0[3])) + offset_scale * @reduce(.Add, off0) + tail0,
        @reduce(.Add, (acc1[0] + acc1[1]) + (acc1[2] + acc1[3])) + offset_scale * @reduce(.Add, off1) + tail1,
    };
}

/// dot32's four accumulators as two 512-bit registers (see `HalvesBatch`): lanes 4k..4k+3 of `lo`
/// are acc[k]'s lanes 0..3, those of `hi` its lanes 4..7.
const WideAcc = struct {
    lo: F32x16 = @splat(0),
    hi: F32x16 = @splat(0),

    fn narrow(w: WideAcc) [4]F32x8 {
        var acc: [4]F32x8 = undefined;
        inline for (0..4) |k| {
            const i: i32 = 4 * k;
            acc[k] = @shuffle(f32, w.lo, w.hi, [8]i32{ i, i + 1, i + 2, i + 3, ~i, ~(i + 1), ~(i + 2), ~(i + 3) });
        }
        return acc;
    }
};

/// One row's 8-block batch of Q4_0 (144 bytes) or Q4_1 (160), for the AVX-512 path of
/// dot32PairStrided: read as two 64-byte registers and the rest, then sorted with word permutes
/// (`vpermt2w`) into its 8 scales (and Q4_1's 8 mins) and its blocks' nibble bytes, four blocks per
/// register. (Q4_1's last scale and min lie past the first 128 bytes: one more permute of the
/// last two registers and a blend. Gathered one by one instead, they made this path slower than the
/// AVX2 one: 24.4 -> 13.6 GB/s from cache.)
fn HalvesBatch(comptime w_type: DType) type {
    return struct {
        const Self = @This();
        /// Blocks 0..3 and 4..7: 16 nibble bytes each, side by side.
        groups: [2]x86.U8x64,
        scales: F32x8,
        mins: if (has_min) F32x8 else void,

        const x86 = simd.x86;
        const bb = w_type.blockBytes().?;
        const has_min = hasMin(w_type);
        const nibbles_at: usize = if (has_min) 4 else 2;
        const rest = 8 * bb - 128;
        comptime {
            std.debug.assert(rest > 0 and rest <= 64);
        }

        // Shuffle masks over (a, b) or (b, c): byte i of the batch, as @shuffle indexes it; -1
        // (undefined) where the byte lies in neither.
        fn index(byte: usize, first: usize) i32 {
            if (byte < first or byte >= first + 128) return -1;
            const i: i32 = @intCast(byte - first);
            return if (i < 64) i else ~(i - 64);
        }
        /// The f16 at each block's `offset` (0: the scale, 2: Q4_1's min): bytes 16 * half ..
        /// of the result, from the registers starting at byte `first`.
        fn halfBytes(comptime first: usize) [32]i32 {
            var m: [32]i32 = undefined;
            for (0..2) |half| for (0..8) |j| for (0..2) |h| {
                m[16 * half + 2 * j + h] = if (half == 1 and !has_min) -1 else index(j * bb + 2 * half + h, first);
            };
            return m;
        }
        fn groupBytes(comptime g: usize) [64]i32 {
            var m: [64]i32 = undefined;
            for (0..4) |k| for (0..16) |i| {
                m[16 * k + i] = index((4 * g + k) * bb + nibbles_at + i, 64 * g);
            };
            return m;
        }
        /// Which of halfBytes' bytes come from (b, c) rather than (a, b).
        fn fromLast() @Vector(32, bool) {
            var m: [32]bool = undefined;
            for (&m, halfBytes(0)) |*v, i| v.* = i == -1;
            return m;
        }

        inline fn load(p: [*]const u8) Self {
            const a: x86.U8x64 = p[0..64].*;
            const b: x86.U8x64 = p[64..128].*;
            // The batch's last bytes, read without running past it (it may end the matrix).
            const c_part: @Vector(rest, u8) = p[128..][0..rest].*;
            const c = std.simd.join(c_part, @as(@Vector(64 - rest, u8), @splat(0)));
            var halfs: @Vector(32, u8) = @shuffle(u8, a, b, halfBytes(0));
            if (has_min) halfs = @select(u8, comptime fromLast(), @shuffle(u8, b, c, halfBytes(64)), halfs);
            const both: [2]@Vector(8, f16) = @bitCast(halfs);
            return .{
                .groups = .{ @shuffle(u8, a, b, groupBytes(0)), @shuffle(u8, b, c, groupBytes(1)) },
                .scales = @floatCast(both[0]),
                .mins = if (has_min) @floatCast(both[1]) else {},
            };
        }

        /// What multiplies the activation sums in the offset term (see dot32).
        inline fn offsetScales(h: Self) F32x8 {
            return if (has_min) h.mins else h.scales;
        }

        /// The batch's scaled block sums (`dd`: weight times activation scales) into `acc`: the low
        /// nibbles (each block's first 16 weights) against the split input's first halves
        /// (`Q8Act.split`, at `halves`) and the high nibbles against the second halves, one `vpdpbusd`
        /// each. Lane for lane these are the integer sums blockDotAt gives (exact either way), and block
        /// j's scaled sum goes into the same lanes of acc[j & 3] in the same order, so rows get the same
        /// bits as from dot32.
        inline fn dots(h: Self, halves: [*]const u8, dd: F32x8, acc: *WideAcc) void {
            const mask: x86.U8x64 = @splat(0x0f);
            inline for (0..2) |g| {
                const q = h.groups[g];
                const low = q & mask;
                const high = @as(x86.U8x64, @bitCast(@as(@Vector(16, u32), @bitCast(q)) >> @splat(4))) & mask;
                const j: i32 = 4 * g;
                const scale = @shuffle(f32, dd, undefined, [16]i32{ j, j, j, j, j + 1, j + 1, j + 1, j + 1, j + 2, j + 2, j + 2, j + 2, j + 3, j + 3, j + 3, j + 3 });
                const p_low: F32x16 = @floatFromInt(x86.dotU8I8x64(low, halves, g * 128));
                const p_high: F32x16 = @floatFromInt(x86.dotU8I8x64(high, halves, g * 128 + 64));
                acc.lo = @mulAdd(F32x16, scale, p_low, acc.lo);
                acc.hi = @mulAdd(F32x16, scale, p_high, acc.hi);
            }
        }
    };
}

/// Block `b` of `row` past the whole batches: its scaled dot product into `acc`, its offset term into
/// `tail` (dot32 and dot32Pair share it, so the two give the same bits).
inline fn tailBlock(comptime w_type: DType, row: [*]const u8, x: Q8Act, b: usize, acc: *F32x8, tail: *f32) void {
    const bb = comptime w_type.blockBytes().?;
    const has_min = comptime hasMin(w_type);
    const offset_scale: f32 = comptime offsetScale(w_type);
    const blk = row + b * bb;
    const dw = f16At(blk);
    const p: F32x8 = @floatFromInt(blockDot32(w_type, blk, &x.qs[b]));
    acc.* = @mulAdd(F32x8, @splat(dw * x.dx[b]), p, acc.*);
    if (offset_scale != 0) tail.* += offset_scale * (if (has_min) f16At(blk + 2) else dw) * x.sums[b];
}

/// q8_0: sum_b d_w d_x q.x
/// q4_0, q5_0: sum_b d_w d_x q.x - c sum_b d_w s_b   (c = 8 or 16; q the unsigned 4/5-bit values)
/// q4_1, q5_1: sum_b d_w d_x q.x + sum_b m_w s_b
fn dot32(comptime w_type: DType, comptime ahead: Ahead, row: [*]const u8, x: Q8Act, nb: usize, next: [*]const u8) f32 {
    const bb = comptime w_type.blockBytes().?;
    const has_min = comptime hasMin(w_type);
    const offset_scale: f32 = comptime offsetScale(w_type);
    var acc = [4]F32x8{ @splat(0), @splat(0), @splat(0), @splat(0) };
    var off: F32x8 = @splat(0);
    // A running pointer with compile-time offsets inside the batch: indexing the odd-sized weight
    // blocks as an array made LLVM recompute every address (several scalar ops per block).
    var wp = row;
    var b: usize = 0;
    while (b + 8 <= nb) : ({
        b += 8;
        wp += 8 * bb;
    }) {
        // The hardware prefetcher follows the row, but starts late at each row's beginning and
        // stops at page boundaries; asking for the data a few batches ahead keeps loads in flight.
        if (ahead == .next_row) {
            // The same batch of the row after next: spread over this row's reading, with no burst
            // of prefetches at the row's start.
            inline for (0..(8 * bb + 63) / 64) |line| @prefetch(next + b * bb + line * 64, .{});
        }
        if (ahead == .linear) {
            @prefetch(wp + prefetch_batches * 8 * bb, .{});
            @prefetch(wp + prefetch_batches * 8 * bb + 64, .{});
            @prefetch(wp + prefetch_batches * 8 * bb + 128, .{});
        }
        const dw = scales8(wp, bb);
        if (offset_scale != 0) off = @mulAdd(F32x8, if (has_min) scales8(wp + 2, bb) else dw, x.sums[b..][0..8].*, off);
        var dd: [8]f32 align(32) = undefined;
        simd.spill8(dw * @as(F32x8, x.dx[b..][0..8].*), &dd);
        inline for (0..8) |j| {
            const p: F32x8 = @floatFromInt(blockDotAt(w_type, wp, j * bb, &x.qs[b + j]));
            acc[j & 3] = @mulAdd(F32x8, @splat(dd[j]), p, acc[j & 3]);
        }
    }
    var tail: f32 = 0;
    // Into the vector accumulators: short rows (a rank-128 predictor's 4 blocks) are all tail, and
    // a horizontal sum per block cost as much as the block's dot product. Four blocks at a time, so
    // that each accumulator index is known at compile time and the accumulators stay in registers.
    while (b + 4 <= nb) : (b += 4) {
        inline for (0..4) |j| tailBlock(w_type, row, x, b + j, &acc[j], &tail);
    }
    while (b < nb) : (b += 1) tailBlock(w_type, row, x, b, &acc[0], &tail);
    return @reduce(.Add, (acc[0] + acc[1]) + (acc[2] + acc[3])) + offset_scale * @reduce(.Add, off) + tail;
}

// ---------------------------------------------------------------------------------------------
// K-quants against q8k activations. Sub-block scales are applied in the integer domain (vpmaddwd
// against the scale instead of 1s), so each 256-element super-block costs one conversion to float.

/// q4_k/q5_k: per super-block, d_x * (d * sum_j sc_j q_j.x_j - dmin * sum_j m_j xsum_j).
fn dotQ4K(comptime w_type: DType, row: [*]const u8, x: [*]align(1) const quant.BlockQ8_K, nb: usize) f32 {
    const bb = comptime w_type.blockBytes().?;
    const has_qh = comptime w_type == .q5_k;
    var acc: F32x8 = @splat(0);
    var mins: f32 = 0;
    for (0..nb) |b| {
        const blk = row + b * bb;
        const xb = &x[b];
        const sm = scalesMinsK4(blk[4..16]);
        const m: @Vector(8, u8) = sm.m;
        const msum = @reduce(.Add, pairSums(xb.bsums) * @as(I32x8, m));
        mins += f16At(blk + 2) * xb.d * @as(f32, @floatFromInt(msum));
        const qh: U8x32 = if (has_qh) blk[16..48].* else undefined;
        const qs = blk[if (has_qh) 48 else 16..][0..128];
        var isum: [2]I32x8 = .{ @splat(0), @splat(0) };
        inline for (0..4) |c| {
            const bytes: U8x32 = qs[32 * c ..][0..32].*;
            var q_lo = bytes & @as(U8x32, @splat(0x0f));
            var q_hi = (bytes >> @splat(4));
            if (has_qh) {
                q_lo |= ((qh >> @splat(2 * c)) & @as(U8x32, @splat(1))) << @splat(4);
                q_hi |= ((qh >> @splat(2 * c + 1)) & @as(U8x32, @splat(1))) << @splat(4);
            }
            const x_lo: I8x32 = xb.qs[64 * c ..][0..32].*;
            const x_hi: I8x32 = xb.qs[64 * c + 32 ..][0..32].*;
            isum[c & 1] +%= maddwd(maddubs(q_lo, x_lo), @splat(@intCast(sm.sc[2 * c])));
            isum[c & 1] +%= maddwd(maddubs(q_hi, x_hi), @splat(@intCast(sm.sc[2 * c + 1])));
        }
        acc = fma8(f16At(blk) * xb.d, isum[0] +% isum[1], acc);
    }
    return @reduce(.Add, acc) - mins;
}

/// q6_k: d_w d_x (sum_g sc_g q_g.x_g - 32 sum_g sc_g xsum_g), groups g of 16 elements.
fn dotQ6K(w: [*]align(1) const quant.BlockQ6_K, x: [*]align(1) const quant.BlockQ8_K, nb: usize) f32 {
    var acc: F32x8 = @splat(0);
    var offset: f32 = 0;
    for (0..nb) |b| {
        const blk = &w[b];
        const xb = &x[b];
        const d = @as(f32, @floatCast(blk.d)) * xb.d;
        const sc: I16x16 = @as(@Vector(16, i8), blk.scales);
        offset += 32 * d * @as(f32, @floatFromInt(@reduce(.Add, maddwd(sc, xb.bsums))));
        var isum: [2]I32x8 = .{ @splat(0), @splat(0) };
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
                const e = 128 * half + 32 * k; // first element of this run of 32
                const g = e / 16;
                // maddubs lanes 0-7 hold elements e..e+15 (scale g), lanes 8-15 hold e+16..e+31 (g+1).
                const mask = comptime blk: {
                    var m: [16]i32 = undefined;
                    for (&m, 0..) |*v, i| v.* = if (i < 8) g else g + 1;
                    break :blk m;
                };
                const scale = @shuffle(i16, sc, undefined, mask);
                const xv: I8x32 = xb.qs[e..][0..32].*;
                isum[k & 1] +%= maddwd(maddubs(q[k], xv), scale);
            }
        }
        acc = fma8(d, isum[0] +% isum[1], acc);
    }
    return @reduce(.Add, acc) - offset;
}

// ---------------------------------------------------------------------------------------------
// Scalar reference.

/// Dequantizes both sides and sums the products in f64. For the q8 format the activations are the
/// dequantized int8 values; the kernels' per-block sums are the same values summed, so the reference
/// needs no special case.
pub fn dotReference(w: DType, row: [*]const u8, act: [*]const u8, n: usize, scratch: []f32) f64 {
    const wf = scratch[0..n];
    const xf = scratch[n .. 2 * n];
    quant.dequantizeRow(w, row, wf);
    dequantizeActivation(w, act, xf);
    var sum: f64 = 0;
    for (wf, xf) |a, b| sum += @as(f64, a) * @as(f64, b);
    return sum;
}

/// The values a prepared activation stands for.
pub fn dequantizeActivation(w: DType, act: [*]const u8, out: []f32) void {
    const n = out.len;
    switch (activationFormat(w)) {
        .f32 => quant.dequantizeRow(.f32, act, out),
        .q8 => {
            const x = Q8Act.of(act, n);
            for (0..n / qk) |b| {
                for (0..qk) |j| out[b * qk + j] = @as(f32, @floatFromInt(x.qs[b][j])) * x.dx[b];
            }
        },
        .q8k => quant.dequantizeRow(.q8_k, act, out),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests: every kernel against its scalar reference, on random rows of several lengths.

pub fn fillRandomRow(rng: std.Random, w: DType, n: usize, bytes: []u8) void {
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
            const len = w.rowBytes(n).?;
            rng.bytes(bytes[0..len]);
            // Keep the f16 scales finite and realistic: random bits could be NaN or huge.
            const bb = w.blockBytes().?;
            var off: usize = 0;
            while (off < len) : (off += bb) {
                const at = off + quant.scaleOffset(w);
                const d: f16 = @floatCast(0.001 + rng.float(f32) * 0.05);
                std.mem.writeInt(u16, bytes[at..][0..2], @bitCast(d), .little);
                if (quant.hasMin(w)) {
                    const m: f16 = @floatCast(-0.4 + rng.float(f32) * 0.1);
                    std.mem.writeInt(u16, bytes[at + 2 ..][0..2], @bitCast(m), .little);
                }
            }
        },
    }
}

test "every dot kernel matches its scalar reference" {
    const gpa = std.testing.allocator;
    var prng = std.Random.DefaultPrng.init(1234);
    const rng = prng.random();
    const types = [_]DType{ .f32, .f16, .bf16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q4_k, .q5_k, .q6_k };
    const lengths = [_]usize{ 256, 512, 768, 2816, 4096 };
    for (types) |w| {
        for (lengths ++ [_]usize{ 32, 96, 128, 160, 288, 576 }) |n| {
            if (w.rowBytes(n) == null) continue; // K-quants need multiples of 256
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
            // f32 accumulation over n terms: bounded by a few ulps of the sum of |terms|; 1e-5 of
            // that sum is far above it and far below any layout mistake (which moves the result by
            // a sizeable fraction of it).
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

/// Test data: `n_rows` random rows of type `w` and a prepared random activation, with the scalar
/// reference and its tolerance for any row.
const RowsFixture = struct {
    gpa: std.mem.Allocator,
    w: DType,
    n: usize,
    rb: usize,
    data: []u8,
    act: []align(64) u8,
    scratch: []f32,

    fn init(gpa: std.mem.Allocator, rng: std.Random, w: DType, n: usize, n_rows: usize) !RowsFixture {
        const rb = w.rowBytes(n).?;
        const data = try gpa.alloc(u8, rb * n_rows);
        errdefer gpa.free(data);
        for (0..n_rows) |r| fillRandomRow(rng, w, n, data[r * rb ..][0..rb]);
        const x = try gpa.alloc(f32, n);
        defer gpa.free(x);
        for (x) |*v| v.* = rng.floatNorm(f32);
        const act = try gpa.alignedAlloc(u8, 64, activationBytes(w, n));
        errdefer gpa.free(act);
        prepareActivation(w, x, act);
        return .{ .gpa = gpa, .w = w, .n = n, .rb = rb, .data = data, .act = act, .scratch = try gpa.alloc(f32, 2 * n) };
    }

    fn deinit(f: *RowsFixture) void {
        f.gpa.free(f.data);
        f.gpa.free(f.act);
        f.gpa.free(f.scratch);
    }

    /// Row r's dot product is `got`, within f32 accumulation error of the float64 reference.
    fn expectRow(f: *RowsFixture, r: usize, got: f32) !void {
        const want = dotReference(f.w, f.data.ptr + r * f.rb, f.act.ptr, f.n, f.scratch);
        var mag: f64 = 0;
        for (0..f.n) |i| mag += @abs(@as(f64, f.scratch[i]) * f.scratch[f.n + i]);
        try std.testing.expectApproxEqAbs(want, @as(f64, got), 1e-5 * mag + 1e-6);
    }
};

test "matvecRows matches the scalar reference for short rows (prefetched ahead) and long ones" {
    var prng = std.Random.DefaultPrng.init(77);
    const n_rows = 100;
    for ([_]DType{ .f16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1 }) |w| {
        // 32 to 224 columns: rows of 1 to 7 blocks, eight at a time (shortRows) and the rest alone.
        for ([_]usize{ 32, 128, 160, 224, 4096 }) |n| {
            var f = try RowsFixture.init(std.testing.allocator, prng.random(), w, n, n_rows);
            defer f.deinit();
            var y: [n_rows]f32 = undefined;
            @memset(&y, std.math.nan(f32));
            // A range that starts and ends inside the matrix: rows outside it stay untouched.
            matvecRows(w, f.data.ptr, f.rb, n, f.act.ptr, &y, 3, n_rows - 5);
            for (0..n_rows) |r| {
                if (r < 3 or r >= n_rows - 5) {
                    try std.testing.expect(std.math.isNan(y[r]));
                } else {
                    try f.expectRow(r, y[r]);
                }
            }
        }
    }
}

test "gatheredRows matches the scalar reference for every row it is given" {
    var prng = std.Random.DefaultPrng.init(31);
    const rng = prng.random();
    const n_rows = 40;
    for ([_]DType{ .f16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q4_k, .q6_k }) |w| {
        for ([_]usize{ 256, 4096 }) |n| {
            var f = try RowsFixture.init(std.testing.allocator, rng, w, n, n_rows);
            defer f.deinit();
            // Any order, repeats, and lengths around the prefetch lookahead.
            for ([_]usize{ 0, 1, 2, 3, 17 }) |count| {
                var rows: [17]u32 = undefined;
                for (rows[0..count]) |*r| r.* = rng.uintLessThan(u32, n_rows);
                var y: [17]f32 = undefined;
                gatheredRows(w, f.data.ptr, f.rb, n, f.act.ptr, rows[0..count], &y);
                for (rows[0..count], y[0..count]) |r, got| try f.expectRow(r, got);
            }
        }
    }
}

test "rows computed two at a time give bitwise the same dot as one at a time" {
    var prng = std.Random.DefaultPrng.init(13);
    const rng = prng.random();
    const n_rows = 21;
    for ([_]DType{ .q8_0, .q4_0, .q4_1, .q5_0, .q5_1 }) |w| {
        // Rows of 8 blocks or more are paired, with or without blocks past the last whole batch:
        // rows under 1 KiB (256 and 576 columns) and longer ones (2080 = 65 blocks, 2304, 4096).
        for ([_]usize{ 256, 576, 2080, 2304, 4096 }) |n| {
            var f = try RowsFixture.init(std.testing.allocator, rng, w, n, n_rows);
            defer f.deinit();
            var one: [n_rows]f32 = undefined;
            for (&one, 0..) |*o, r| o.* = dot(w, f.data.ptr + r * f.rb, f.act.ptr, n);
            // Every range start and an odd count: each row lands in a pair, or alone at the end.
            for (0..3) |begin| {
                var y: [n_rows]f32 = undefined;
                matvecRows(w, f.data.ptr, f.rb, n, f.act.ptr, &y, begin, n_rows);
                for (begin..n_rows) |r| try std.testing.expectEqual(@as(u32, @bitCast(one[r])), @as(u32, @bitCast(y[r])));
            }
            var rows: [n_rows]u32 = undefined;
            for (&rows) |*r| r.* = rng.uintLessThan(u32, n_rows);
            var y: [n_rows]f32 = undefined;
            gatheredRows(w, f.data.ptr, f.rb, n, f.act.ptr, &rows, &y);
            for (rows, y) |r, got| try std.testing.expectEqual(@as(u32, @bitCast(one[r])), @as(u32, @bitCast(got)));
        }
    }
}

test "row pairs: repacked matrices give bitwise the rows' own dot products" {
    var prng = std.Random.DefaultPrng.init(17);
    const rng = prng.random();
    const n_rows = 22;
    for ([_]DType{ .q8_0, .q4_0, .q4_1, .q5_0, .q5_1 }) |w| {
        for ([_]usize{ 256, 2048, 4096 }) |n| {
            try std.testing.expect(rowPairsFit(w, n_rows, n));
            var f = try RowsFixture.init(std.testing.allocator, rng, w, n, n_rows);
            defer f.deinit();
            var one: [n_rows]f32 = undefined;
            for (&one, 0..) |*o, r| o.* = dot(w, f.data.ptr + r * f.rb, f.act.ptr, n);
            const original = try std.testing.allocator.dupe(u8, f.data);
            defer std.testing.allocator.free(original);
            var scratch: [2 * 4352]u8 = undefined;
            // Repacked in two calls, as the model's threads split it.
            repackRowPairs(w, f.data.ptr, f.rb, 0, 6, &scratch);
            repackRowPairs(w, f.data.ptr, f.rb, 6, n_rows, &scratch);
            // Row 1's first batch now follows row 0's.
            const batch = 8 * w.blockBytes().?;
            try std.testing.expectEqualSlices(u8, original[f.rb..][0..batch], f.data[batch..][0..batch]);
            for ([_][2]usize{ .{ 0, n_rows }, .{ 4, 10 } }) |range| {
                var y: [n_rows]f32 = undefined;
                @memset(&y, std.math.nan(f32));
                matvecRowPairs(w, f.data.ptr, f.rb, n, f.act.ptr, &y, range[0], range[1]);
                for (0..n_rows) |r| {
                    if (r < range[0] or r >= range[1]) {
                        try std.testing.expect(std.math.isNan(y[r]));
                    } else {
                        try std.testing.expectEqual(@as(u32, @bitCast(one[r])), @as(u32, @bitCast(y[r])));
                    }
                }
            }
        }
    }
    // What does not fit: odd rows, rows with blocks past the last whole batch, other types.
    try std.testing.expect(!rowPairsFit(.q4_0, 21, 4096));
    try std.testing.expect(!rowPairsFit(.q4_0, 22, 8192));
    try std.testing.expect(!rowPairsFit(.q4_0, 22, 2080));
    try std.testing.expect(!rowPairsFit(.q4_k, 22, 4096));
    try std.testing.expect(!rowPairsFit(.f16, 22, 4096));
}

test "prepared activations stay within half a quantization step" {
    var prng = std.Random.DefaultPrng.init(7);
    const rng = prng.random();
    var x: [512]f32 = undefined;
    for (&x) |*v| v.* = rng.floatNorm(f32) * 3;
    var buf: [4096]u8 align(64) = undefined;
    var back: [512]f32 = undefined;
    inline for (.{ DType.q4_0, DType.q4_k }) |w| {
        prepareActivation(w, &x, &buf);
        dequantizeActivation(w, &buf, &back);
        const block: usize = if (activationFormat(w) == .q8) qk else qk_k;
        var b: usize = 0;
        while (b < x.len) : (b += block) {
            var amax: f32 = 0;
            for (x[b..][0..block]) |v| amax = @max(amax, @abs(v));
            // Half a step (d/2 = amax/254), plus for q8 the f16 rounding of d (|q| <= 127, relative
            // error 2^-11: at most amax * 2^-11); q8k keeps d in f32.
            const d16: f32 = if (activationFormat(w) == .q8) amax / 2048.0 else 0;
            for (x[b..][0..block], back[b..][0..block]) |v, q| try std.testing.expect(@abs(v - q) <= amax / 254.0 * 1.0001 + d16 + 1e-7);
        }
    }
}
