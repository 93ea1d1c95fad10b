//! SIMD building blocks shared by the row kernels (dot.zig) and the tiled kernels (matmul.zig): the
//! integer dot cores, nibble and scale unpacking. Each has an AVX2 path (simd_x86.zig) and a
//! portable `@Vector` path, which is what aarch64 (NEON) and other targets compile.
const std = @import("std");
const quant = @import("quant.zig");
pub const x86 = @import("simd_x86.zig");

pub const U8x32 = @Vector(32, u8);
pub const I8x32 = @Vector(32, i8);
pub const I32x8 = @Vector(8, i32);
pub const I16x16 = @Vector(16, i16);
pub const F32x8 = @Vector(8, f32);

// ---------------------------------------------------------------------------------------------
// The integer core: 32 (u8 or i8) x i8 products summed in 8 groups of 4 adjacent pairs.

pub inline fn dotU8I8(u: U8x32, s: I8x32) I32x8 {
    if (x86.available) return x86.dotU8I8(u, s);
    const p = @as(@Vector(32, i32), u) * @as(@Vector(32, i32), s);
    return groupsOf4(p);
}

/// Pairwise u8 x i8 products summed to i16 (callers keep sums within i16: x86 saturates).
pub inline fn maddubs(u: U8x32, s: I8x32) I16x16 {
    if (x86.available) return x86.maddubs(u, s);
    const p = @as(@Vector(32, i16), u) * @as(@Vector(32, i16), s);
    return @shuffle(i16, p, undefined, evens16) + @shuffle(i16, p, undefined, odds16);
}

/// Pairwise i16 x i16 products summed to i32.
pub inline fn maddwd(a: I16x16, b: I16x16) I32x8 {
    if (x86.available) return x86.maddwd(a, b);
    const p = @as(@Vector(16, i32), a) * @as(@Vector(16, i32), b);
    return @shuffle(i32, p, undefined, evens8) + @shuffle(i32, p, undefined, odds8);
}

// Shuffle masks, computed once here: built inside the inline kernels they would count against the
// comptime branch quota of every unrolled loop that calls them.
const evens16 = evens(16);
const odds16 = odds(16);
const evens8 = evens(8);
const odds8 = odds(8);
const groups4 = [4][8]i32{ groupOf4(0), groupOf4(1), groupOf4(2), groupOf4(3) };

fn groupOf4(comptime k: i32) [8]i32 {
    var out: [8]i32 = undefined;
    for (&out, 0..) |*o, j| o.* = 4 * @as(i32, @intCast(j)) + k;
    return out;
}

fn evens(comptime n: usize) [n]i32 {
    var out: [n]i32 = undefined;
    for (&out, 0..) |*o, i| o.* = @intCast(2 * i);
    return out;
}

fn odds(comptime n: usize) [n]i32 {
    var out: [n]i32 = undefined;
    for (&out, 0..) |*o, i| o.* = @intCast(2 * i + 1);
    return out;
}

/// |a| as bytes, to be read as u8 (so |-128| = 128 comes out as the byte 0x80, as on x86).
pub inline fn absI8(a: I8x32) I8x32 {
    if (x86.available) return x86.signOf(a, a);
    return @bitCast(@abs(a));
}

/// b with the sign of a applied (0 where a is 0).
pub inline fn signOf(b: I8x32, a: I8x32) I8x32 {
    if (x86.available) return x86.signOf(b, a);
    const zero: I8x32 = @splat(0);
    return @select(i8, a < zero, zero -% b, @select(i8, a == zero, zero, b));
}

pub inline fn dotI8I8(a: I8x32, b: I8x32) I32x8 {
    if (x86.available) return x86.dotI8I8(a, b);
    const p = @as(@Vector(32, i32), a) * @as(@Vector(32, i32), b);
    return groupsOf4(p);
}

inline fn groupsOf4(p: @Vector(32, i32)) I32x8 {
    return @shuffle(i32, p, undefined, groups4[0]) + @shuffle(i32, p, undefined, groups4[1]) +
        @shuffle(i32, p, undefined, groups4[2]) + @shuffle(i32, p, undefined, groups4[3]);
}

/// The 32 4-bit values of a 16-byte block, in element order (low nibbles first).
pub inline fn nibbles(qs: *align(1) const [16]u8) U8x32 {
    if (x86.available) return x86.nibbles(qs);
    const bytes: @Vector(16, u8) = qs.*;
    return std.simd.join(bytes & @as(@Vector(16, u8), @splat(0x0f)), bytes >> @splat(4));
}

/// The f16 values at the start of 8 consecutive blocks (`stride` bytes apart), as f32: one vector
/// conversion instead of eight scalar ones.
pub inline fn scales8(p: [*]const u8, comptime stride: usize) F32x8 {
    var v: @Vector(8, u16) = undefined;
    inline for (0..8) |j| v[j] = std.mem.readInt(u16, p[j * stride ..][0..2], .little);
    return @floatCast(@as(@Vector(8, f16), @bitCast(v)));
}

/// 16 where bit j of `bits` is set, for each byte j of 32: the fifth bit of Q5_0/Q5_1 elements.
pub inline fn fifthBits(bits: u32) U8x32 {
    const bytes: @Vector(4, u8) = @bitCast(bits);
    const spread = @shuffle(u8, bytes, undefined, [32]i32{ 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3 });
    const mask = U8x32{ 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128 };
    return @select(u8, (spread & mask) != @as(U8x32, @splat(0)), @as(U8x32, @splat(16)), @as(U8x32, @splat(0)));
}

pub inline fn f16At(p: [*]const u8) f32 {
    return @floatCast(@as(f16, @bitCast(std.mem.readInt(u16, p[0..2], .little))));
}

/// The 32 4-bit values of the 16 bytes at base + `offset` (see `nibbles`).
pub inline fn nibblesAt(base: [*]const u8, comptime offset: usize) U8x32 {
    if (x86.available) return x86.nibblesAt(base, offset);
    return nibbles(base[offset..][0..16]);
}

/// Makes `v` readable lane by lane from memory: a volatile store, so LLVM keeps the values in memory
/// and each later `@splat(out[j])` becomes one broadcast load (from a register it would be two
/// shuffle instructions per lane).
pub inline fn spill8(v: F32x8, out: *align(32) [8]f32) void {
    const p: *volatile F32x8 = @ptrCast(out);
    p.* = v;
}

pub inline fn fma8(d: f32, p: I32x8, acc: F32x8) F32x8 {
    return @mulAdd(F32x8, @splat(d), @floatFromInt(p), acc);
}

/// The 8 six-bit scales and 8 mins of a Q4_K/Q5_K super-block (see quant.scaleMinK4), unpacked
/// four at a time with 32-bit masks instead of one at a time.
pub inline fn scalesMinsK4(p: *const [12]u8) struct { sc: [8]u8, m: [8]u8 } {
    const w0 = std.mem.readInt(u32, p[0..4], .little);
    const w1 = std.mem.readInt(u32, p[4..8], .little);
    const w2 = std.mem.readInt(u32, p[8..12], .little);
    const low6: u32 = 0x3f3f3f3f;
    const low4: u32 = 0x0f0f0f0f;
    const low2: u32 = 0x03030303;
    const sc_lo = w0 & low6; // sub-blocks 0..3: 6 bits in bytes 0..3
    const sc_hi = (w2 & low4) | (((w0 >> 6) & low2) << 4); // 4..7: low 4 bits in bytes 8..11, top 2 in 0..3
    const m_lo = w1 & low6; // mins 0..3: bytes 4..7
    const m_hi = ((w2 >> 4) & low4) | (((w1 >> 6) & low2) << 4); // mins 4..7
    return .{
        .sc = @bitCast([2]u32{ sc_lo, sc_hi }),
        .m = @bitCast([2]u32{ m_lo, m_hi }),
    };
}

/// Sums of the 16-element activation sums in pairs: the sum over each 32-element sub-block.
pub inline fn pairSums(bsums: [16]i16) I32x8 {
    return maddwd(bsums, @splat(1));
}
