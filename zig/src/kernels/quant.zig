//! Block layouts of the quantized formats, their scalar dequantizers, and the 8-bit quantizers used
//! for activations. The scalar code here is the reference every SIMD kernel is tested against.
//!
//! Layouts are fixed by the GGUF format (ggml's block structs); sizes are asserted at compile time.
const std = @import("std");
const DType = @import("dtype.zig").DType;

pub const qk = 32; // elements per block of the 32-element formats

/// (32,) x = (q - 8) * d, q in 0..15: low nibbles hold elements 0..15, high nibbles 16..31.
pub const BlockQ4_0 = extern struct { d: f16 align(1), qs: [16]u8 };
/// (32,) x = q * d + m, q in 0..15, nibble order as Q4_0.
pub const BlockQ4_1 = extern struct { d: f16 align(1), m: f16 align(1), qs: [16]u8 };
/// (32,) x = q * d, q in -127..127 (weights), -128..127 possible.
pub const BlockQ8_0 = extern struct { d: f16 align(1), qs: [32]i8 };
/// (32,) x = (q - 16) * d, q = nibble | (bit j of qh) << 4; qh is a little-endian u32.
pub const BlockQ5_0 = extern struct { d: f16 align(1), qh: [4]u8, qs: [16]u8 };
/// (32,) x = q * d + m, q as in Q5_0.
pub const BlockQ5_1 = extern struct { d: f16 align(1), m: f16 align(1), qh: [4]u8, qs: [16]u8 };

pub const qk_k = 256; // elements per K-quant super-block

/// (256,) 8 sub-blocks of 32 with 6-bit scales and mins packed in `scales` (see scaleMinK4);
/// x = d * sc * q - dmin * m, q a nibble. Each 64 elements share 32 bytes of qs: low nibbles are
/// the first 32 elements, high nibbles the next 32.
pub const BlockQ4_K = extern struct { d: f16 align(1), dmin: f16 align(1), scales: [12]u8, qs: [128]u8 };
/// (256,) as Q4_K plus a fifth bit per element in qh: bit (2i) of qh[l] for element 64i + l,
/// bit (2i+1) for element 64i + 32 + l.
pub const BlockQ5_K = extern struct { d: f16 align(1), dmin: f16 align(1), scales: [12]u8, qh: [32]u8, qs: [128]u8 };
/// (256,) x = d * scales[g] * (q - 32), q 6 bits: low 4 in ql, high 2 in qh; 16 groups of 16.
pub const BlockQ6_K = extern struct { ql: [128]u8, qh: [64]u8, scales: [16]i8, d: f16 align(1) };
/// (256,) activation format paired with the K-quants: x = d * q, with bsums[g] = sum of q over
/// elements 16g..16g+15 (so the K-quants' min terms need no per-row pass over x).
pub const BlockQ8_K = extern struct { d: f32 align(1), qs: [256]i8, bsums: [16]i16 align(1) };

comptime {
    std.debug.assert(@sizeOf(BlockQ4_0) == DType.q4_0.blockBytes().?);
    std.debug.assert(@sizeOf(BlockQ4_1) == DType.q4_1.blockBytes().?);
    std.debug.assert(@sizeOf(BlockQ8_0) == DType.q8_0.blockBytes().?);
    std.debug.assert(@sizeOf(BlockQ5_0) == DType.q5_0.blockBytes().?);
    std.debug.assert(@sizeOf(BlockQ5_1) == DType.q5_1.blockBytes().?);
    std.debug.assert(@sizeOf(BlockQ4_K) == DType.q4_k.blockBytes().?);
    std.debug.assert(@sizeOf(BlockQ5_K) == DType.q5_k.blockBytes().?);
    std.debug.assert(@sizeOf(BlockQ6_K) == DType.q6_k.blockBytes().?);
    std.debug.assert(@sizeOf(BlockQ8_K) == DType.q8_k.blockBytes().?);
}

/// Scale and min of sub-block j (0..7) of a Q4_K/Q5_K block, unpacked from its 12 bytes: sub-blocks
/// 0..3 keep 6 bits in the low bits of bytes j and j+4; 4..7 keep 4 low bits in byte j+4 and their
/// top 2 bits in the top bits of bytes j-4 and j.
pub inline fn scaleMinK4(j: usize, q: *const [12]u8) struct { sc: u8, m: u8 } {
    if (j < 4) return .{ .sc = q[j] & 63, .m = q[j + 4] & 63 };
    return .{
        .sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
        .m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
    };
}

/// Byte offset of the first f16 scale in a block of `dtype` (Q6_K keeps its d at the end).
pub fn scaleOffset(dtype: DType) usize {
    return switch (dtype) {
        .q6_k => 208,
        else => 0,
    };
}

/// Whether blocks of `dtype` carry an f16 offset/min right after the scale.
pub fn hasMin(dtype: DType) bool {
    return switch (dtype) {
        .q4_1, .q5_1, .q4_k, .q5_k => true,
        else => false,
    };
}

pub inline fn bf16ToF32(bits: u16) f32 {
    return @bitCast(@as(u32, bits) << 16);
}

/// Round-to-nearest-even, NaN kept quiet (what PyTorch and ggml do).
pub fn f32ToBf16(x: f32) u16 {
    const bits: u32 = @bitCast(x);
    if ((bits & 0x7fff_ffff) > 0x7f80_0000) return @truncate((bits >> 16) | 0x40);
    const rounding = 0x7fff + ((bits >> 16) & 1);
    return @truncate((bits +% rounding) >> 16);
}

fn readF16(bytes: []const u8) f32 {
    return @floatCast(@as(f16, @bitCast(std.mem.readInt(u16, bytes[0..2], .little))));
}

/// Scalar reference: expands `n` elements of a row of type `dtype` at `src` into `dst`.
/// `n` must be a whole number of blocks (checked at model load).
pub fn dequantizeRow(dtype: DType, src: [*]const u8, dst: []f32) void {
    const n = dst.len;
    switch (dtype) {
        .f32 => for (dst, 0..) |*o, i| {
            o.* = @bitCast(std.mem.readInt(u32, src[i * 4 ..][0..4], .little));
        },
        .f16 => for (dst, 0..) |*o, i| {
            o.* = readF16(src[i * 2 ..][0..2]);
        },
        .bf16 => for (dst, 0..) |*o, i| {
            o.* = bf16ToF32(std.mem.readInt(u16, src[i * 2 ..][0..2], .little));
        },
        .q4_0 => {
            const blocks: [*]const BlockQ4_0 = @ptrCast(src);
            for (0..n / qk) |b| {
                const blk = blocks[b];
                const d: f32 = @floatCast(blk.d);
                for (0..16) |j| {
                    dst[b * qk + j] = (@as(f32, @floatFromInt(blk.qs[j] & 0x0f)) - 8) * d;
                    dst[b * qk + j + 16] = (@as(f32, @floatFromInt(blk.qs[j] >> 4)) - 8) * d;
                }
            }
        },
        .q4_1 => {
            const blocks: [*]const BlockQ4_1 = @ptrCast(src);
            for (0..n / qk) |b| {
                const blk = blocks[b];
                const d: f32 = @floatCast(blk.d);
                const m: f32 = @floatCast(blk.m);
                for (0..16) |j| {
                    dst[b * qk + j] = @as(f32, @floatFromInt(blk.qs[j] & 0x0f)) * d + m;
                    dst[b * qk + j + 16] = @as(f32, @floatFromInt(blk.qs[j] >> 4)) * d + m;
                }
            }
        },
        .q8_0 => {
            const blocks: [*]const BlockQ8_0 = @ptrCast(src);
            for (0..n / qk) |b| {
                const d: f32 = @floatCast(blocks[b].d);
                for (0..qk) |j| dst[b * qk + j] = @as(f32, @floatFromInt(blocks[b].qs[j])) * d;
            }
        },
        .q5_0, .q5_1 => {
            // q5_0: {d, qh[4], qs[16]}; q5_1: {d, m, qh[4], qs[16]}
            const qh_at: usize = if (dtype == .q5_1) 4 else 2;
            for (0..n / qk) |b| {
                const blk = src + b * dtype.blockBytes().?;
                const d = readF16(blk[0..2]);
                const m: f32 = if (dtype == .q5_1) readF16(blk[2..4]) else -16 * d;
                const qh = std.mem.readInt(u32, blk[qh_at..][0..4], .little);
                const qs = blk[qh_at + 4 ..][0..16];
                for (0..16) |j| {
                    const lo: u32 = (qs[j] & 0x0f) | (((qh >> @intCast(j)) & 1) << 4);
                    const hi: u32 = (qs[j] >> 4) | (((qh >> @intCast(j + 16)) & 1) << 4);
                    dst[b * qk + j] = @as(f32, @floatFromInt(lo)) * d + m;
                    dst[b * qk + j + 16] = @as(f32, @floatFromInt(hi)) * d + m;
                }
            }
        },
        .q4_k, .q5_k => {
            const bb = dtype.blockBytes().?;
            for (0..n / qk_k) |b| {
                const blk = src + b * bb;
                const d = readF16(blk[0..2]);
                const dmin = readF16(blk[2..4]);
                const scales = blk[4..16];
                const qh: ?*const [32]u8 = if (dtype == .q5_k) blk[16..48] else null;
                const qs = blk[if (dtype == .q5_k) 48 else 16..][0..128];
                const out = dst[b * qk_k ..][0..qk_k];
                for (0..4) |c| { // chunks of 64 elements sharing 32 bytes of qs
                    const lo = scaleMinK4(2 * c, scales);
                    const hi = scaleMinK4(2 * c + 1, scales);
                    for (0..32) |l| {
                        var q0: u32 = qs[32 * c + l] & 0x0f;
                        var q1: u32 = qs[32 * c + l] >> 4;
                        if (qh) |h| {
                            q0 |= @as(u32, (h[l] >> @intCast(2 * c)) & 1) << 4;
                            q1 |= @as(u32, (h[l] >> @intCast(2 * c + 1)) & 1) << 4;
                        }
                        out[64 * c + l] = d * @as(f32, @floatFromInt(lo.sc)) * @as(f32, @floatFromInt(q0)) - dmin * @as(f32, @floatFromInt(lo.m));
                        out[64 * c + 32 + l] = d * @as(f32, @floatFromInt(hi.sc)) * @as(f32, @floatFromInt(q1)) - dmin * @as(f32, @floatFromInt(hi.m));
                    }
                }
            }
        },
        .q6_k => {
            const blocks: [*]align(1) const BlockQ6_K = @ptrCast(src);
            for (0..n / qk_k) |b| {
                const blk = &blocks[b];
                const d: f32 = @floatCast(blk.d);
                const out = dst[b * qk_k ..][0..qk_k];
                for (0..2) |half| { // two halves of 128 elements: 64 bytes of ql, 32 of qh each
                    const ql = blk.ql[64 * half ..][0..64];
                    const qh = blk.qh[32 * half ..][0..32];
                    const sc = blk.scales[8 * half ..][0..8];
                    for (0..32) |l| {
                        const g = l / 16;
                        const q = [4]i32{
                            @as(i32, (ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32,
                            @as(i32, (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32,
                            @as(i32, (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32,
                            @as(i32, (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32,
                        };
                        inline for (0..4) |k| {
                            out[128 * half + 32 * k + l] = d * @as(f32, @floatFromInt(sc[g + 2 * k])) * @as(f32, @floatFromInt(q[k]));
                        }
                    }
                }
            }
        },
        .q8_k => {
            const blocks: [*]align(1) const BlockQ8_K = @ptrCast(src);
            for (0..n / qk_k) |b| {
                for (0..qk_k) |j| dst[b * qk_k + j] = @as(f32, @floatFromInt(blocks[b].qs[j])) * blocks[b].d;
            }
        },
        else => unreachable, // load-time checks keep other types away from here
    }
}

/// Quantizes 32 floats the way the dot kernels expect activations: d = max|x| / 127, q = round(x / d).
/// Error per element is at most d / 2 = max|x| / 254 within the block.
///
/// In whole vectors: element by element, the scalar loops compiled to scalar code (`@max` keeps
/// NaN semantics that LLVM would not vectorize), and preparing the inputs took ~1 ms of a 56 ms
/// 7B-shape sparse token on one thread while the others waited. Every element's arithmetic is the
/// same, and a maximum is exact in any order, so the values are too.
fn quantizeBlock8(x: *const [qk]f32, qs: *[qk]i8) f32 {
    const V = @Vector(qk, f32);
    const v: V = x.*;
    const amax = @reduce(.Max, @abs(v));
    const d = amax / 127.0;
    const id: f32 = if (d != 0) 1.0 / d else 0;
    const q: @Vector(qk, i8) = @intFromFloat(@round(v * @as(V, @splat(id))));
    qs.* = q;
    return d;
}

/// Quantizes 32 values into one Q8_0 block (d = max|x| / 127, stored as f16).
pub fn quantizeBlockQ8_0(x: *const [qk]f32, out: *align(1) BlockQ8_0) void {
    var qs: [qk]i8 = undefined;
    const d = quantizeBlock8(x, &qs);
    out.* = .{ .d = @floatCast(d), .qs = qs };
}

/// Quantizes 32 values into one Q4_0 block by ggml's rule: d = m / -8 where m is the value of
/// largest magnitude (so m itself maps exactly to q = 0), q = clamp(round-half-up(x / d) + 8, 0, 15).
/// Used for the transposed down projection of sparse FFNs when the user trades accuracy for size.
pub fn quantizeBlockQ4_0(x: *const [qk]f32, out: *align(1) BlockQ4_0) void {
    var m: f32 = 0;
    for (x) |v| {
        if (@abs(v) > @abs(m)) m = v;
    }
    const d = m / -8.0;
    const id: f32 = if (d != 0) 1.0 / d else 0;
    var qs: [16]u8 = undefined;
    for (0..16) |j| {
        const lo: u8 = @intFromFloat(@min(15.0, @max(0.0, @floor(x[j] * id + 8.5))));
        const hi: u8 = @intFromFloat(@min(15.0, @max(0.0, @floor(x[j + 16] * id + 8.5))));
        qs[j] = lo | (hi << 4);
    }
    out.* = .{ .d = @floatCast(d), .qs = qs };
}

/// Activations for the 32-element weight types, in three arrays: per block the scale d (rounded to
/// f16 and back, as a Q8_0 block would store it), the sum d*sum(q) (the offset terms of Q4_0/Q5_0 and
/// the mins of Q4_1/Q5_1 multiply it, once per row instead of once per row and element), and the 32
/// values. Keeping the values apart, 32-byte aligned, means no vector load of them straddles a cache
/// line (inside 34-byte Q8_0 blocks half of them did). `x.len` is a multiple of 32.
pub fn quantizeRowQ8Split(x: []const f32, qs: [][qk]i8, d: []f32, sums: []f32) void {
    std.debug.assert(x.len == qs.len * qk and d.len == qs.len and sums.len == qs.len);
    for (qs, d, sums, 0..) |*q, *db, *sum, b| {
        const raw = quantizeBlock8(x[b * qk ..][0..qk], q);
        db.* = @floatCast(@as(f16, @floatCast(raw)));
        const isum = @reduce(.Add, @as(@Vector(qk, i32), q.*));
        sum.* = db.* * @as(f32, @floatFromInt(isum));
    }
}

/// Activations for the K-quants: d = max|x| / 127 per 256 elements, plus the 16-element sums.
pub fn quantizeRowQ8K(x: []const f32, out: []align(1) BlockQ8_K) void {
    std.debug.assert(x.len == out.len * qk_k);
    for (out, 0..) |*blk, b| {
        const v = x[b * qk_k ..][0..qk_k];
        var amax: f32 = 0;
        for (v) |e| amax = @max(amax, @abs(e));
        const d = amax / 127.0;
        const id: f32 = if (d != 0) 1.0 / d else 0;
        var qs: [qk_k]i8 = undefined;
        for (v, &qs) |e, *q| q.* = @intFromFloat(@round(e * id));
        blk.qs = qs;
        blk.d = d;
        var bsums: [16]i16 = undefined;
        for (&bsums, 0..) |*bs, g| {
            var s: i16 = 0;
            for (qs[16 * g ..][0..16]) |q| s += q;
            bs.* = s;
        }
        blk.bsums = bsums;
    }
}

test "q4_0 dequantizes with the -8 offset and nibble order" {
    var blk: BlockQ4_0 = .{ .d = 0.5, .qs = undefined };
    for (&blk.qs, 0..) |*q, j| q.* = @intCast((j & 0xf) | ((15 - (j & 0xf)) << 4));
    var out: [32]f32 = undefined;
    dequantizeRow(.q4_0, @ptrCast(&blk), &out);
    try std.testing.expectEqual(@as(f32, -4.0), out[0]); // (0 - 8) * 0.5
    try std.testing.expectEqual(@as(f32, 3.5), out[15]); // (15 - 8) * 0.5
    try std.testing.expectEqual(@as(f32, 3.5), out[16]); // high nibble of byte 0 = 15
}

test "bf16 round trip rounds to nearest even" {
    try std.testing.expectEqual(@as(u16, 0x3f80), f32ToBf16(1.0));
    try std.testing.expectEqual(@as(f32, 1.0), bf16ToF32(0x3f80));
    // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even mantissa (1.0).
    try std.testing.expectEqual(@as(u16, 0x3f80), f32ToBf16(1.0 + 1.0 / 256.0));
}

test "q8 activations carry d * sum(q) per block" {
    var x: [64]f32 = undefined;
    for (&x, 0..) |*v, i| v.* = @as(f32, @floatFromInt(i)) - 10;
    var qs: [2][qk]i8 = undefined;
    var d: [2]f32 = undefined;
    var sums: [2]f32 = undefined;
    quantizeRowQ8Split(&x, &qs, &d, &sums);
    for (0..2) |b| {
        var sum: f32 = 0;
        for (qs[b], x[32 * b ..][0..32]) |q, v| {
            const back = @as(f32, @floatFromInt(q)) * d[b];
            try std.testing.expectApproxEqAbs(v, back, 54.0 / 254.0 + 54.0 / 2048.0 + 1e-6);
            sum += back;
        }
        try std.testing.expectApproxEqRel(sum, sums[b], 1e-5);
    }
}

test "q4_k scale/min unpacking follows the 6-bit packing" {
    // Sub-block 5: scale = low 4 bits of byte 9 | top 2 bits of byte 1 << 4; min = high 4 bits of
    // byte 9 | top 2 bits of byte 5 << 4.
    var q = [_]u8{0} ** 12;
    q[9] = 0xa7;
    q[1] = 0b1100_0000;
    q[5] = 0b0100_0000;
    const r = scaleMinK4(5, &q);
    try std.testing.expectEqual(@as(u8, 0x7 | (3 << 4)), r.sc);
    try std.testing.expectEqual(@as(u8, 0xa | (1 << 4)), r.m);
}

test "q6_k dequantizes its 6-bit values around 32" {
    var blk = std.mem.zeroes(BlockQ6_K);
    blk.d = 1.0;
    for (&blk.scales) |*s| s.* = 1;
    blk.ql[0] = 0x0f; // element 0: low 4 bits 15, element 64: high nibble 0
    blk.qh[0] = 0b11; // element 0 gets 3 << 4 -> q = 63
    var out: [256]f32 = undefined;
    dequantizeRow(.q6_k, @ptrCast(&blk), &out);
    try std.testing.expectEqual(@as(f32, 31), out[0]);
    try std.testing.expectEqual(@as(f32, -32), out[64]);
    try std.testing.expectEqual(@as(f32, -32), out[1]);
}
