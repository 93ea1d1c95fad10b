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
/// (32,) activation format paired with Q4_1: s = d * sum(qs) carries the offset term.
pub const BlockQ8_1 = extern struct { d: f16 align(1), s: f16 align(1), qs: [32]i8 };

comptime {
    std.debug.assert(@sizeOf(BlockQ4_0) == DType.q4_0.blockBytes().?);
    std.debug.assert(@sizeOf(BlockQ4_1) == DType.q4_1.blockBytes().?);
    std.debug.assert(@sizeOf(BlockQ8_0) == DType.q8_0.blockBytes().?);
    std.debug.assert(@sizeOf(BlockQ8_1) == DType.q8_1.blockBytes().?);
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
        .q8_1 => {
            const blocks: [*]const BlockQ8_1 = @ptrCast(src);
            for (0..n / qk) |b| {
                const d: f32 = @floatCast(blocks[b].d);
                for (0..qk) |j| dst[b * qk + j] = @as(f32, @floatFromInt(blocks[b].qs[j])) * d;
            }
        },
        else => unreachable, // load-time checks keep other types away from here
    }
}

/// Quantizes 32 floats the way the dot kernels expect activations: d = max|x| / 127, q = round(x / d).
/// Error per element is at most d / 2 = max|x| / 254 within the block.
fn quantizeBlock8(x: *const [qk]f32, qs: *[qk]i8) f32 {
    var amax: f32 = 0;
    for (x) |v| amax = @max(amax, @abs(v));
    const d = amax / 127.0;
    const id: f32 = if (d != 0) 1.0 / d else 0;
    for (x, qs) |v, *q| q.* = @intFromFloat(@round(v * id));
    return d;
}

/// Activations for Q4_0 and Q8_0 weights. `x.len` is a multiple of 32.
pub fn quantizeRowQ8_0(x: []const f32, out: []BlockQ8_0) void {
    std.debug.assert(x.len == out.len * qk);
    for (out, 0..) |*blk, b| {
        const d = quantizeBlock8(x[b * qk ..][0..qk], &blk.qs);
        blk.d = @floatCast(d);
    }
}

/// Activations for Q4_1 weights: like Q8_0 plus s = d * sum(q), which carries the weights' offset m.
pub fn quantizeRowQ8_1(x: []const f32, out: []BlockQ8_1) void {
    std.debug.assert(x.len == out.len * qk);
    for (out, 0..) |*blk, b| {
        const d = quantizeBlock8(x[b * qk ..][0..qk], &blk.qs);
        var sum: i32 = 0;
        for (blk.qs) |q| sum += q;
        blk.d = @floatCast(d);
        blk.s = @floatCast(d * @as(f32, @floatFromInt(sum)));
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

test "q8_1 carries d * sum(q)" {
    var x: [32]f32 = undefined;
    for (&x, 0..) |*v, i| v.* = @as(f32, @floatFromInt(i)) - 10;
    var blk: [1]BlockQ8_1 = undefined;
    quantizeRowQ8_1(&x, &blk);
    var back: [32]f32 = undefined;
    dequantizeRow(.q8_1, @ptrCast(&blk), &back);
    var sum: f32 = 0;
    for (back, x) |b, v| {
        try std.testing.expectApproxEqAbs(v, b, 21.0 / 254.0 + 1e-6);
        sum += b;
    }
    try std.testing.expectApproxEqRel(sum, @as(f32, @floatCast(blk[0].s)), 1e-3);
}
