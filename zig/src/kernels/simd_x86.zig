//! AVX2 building blocks for the integer dot products. Zig 0.14 has no target intrinsics and LLVM
//! does not turn generic i8 vector multiplies into `vpmaddubsw`, which is what makes 4- and 8-bit
//! dot products run at memory speed; so these few instructions are written as inline assembly.
//! Only compiled when the target has AVX2 (`available`); kernels fall back to portable `@Vector` code.
const std = @import("std");
const builtin = @import("builtin");

pub const available = builtin.cpu.arch == .x86_64 and std.Target.x86.featureSetHas(builtin.cpu.features, .avx2) and
    std.Target.x86.featureSetHas(builtin.cpu.features, .fma) and std.Target.x86.featureSetHas(builtin.cpu.features, .f16c);

pub const U8x32 = @Vector(32, u8);
pub const I8x32 = @Vector(32, i8);
pub const I16x16 = @Vector(16, i16);
pub const I32x8 = @Vector(8, i32);
pub const F32x8 = @Vector(8, f32);

/// Pairwise u8 x i8 products summed to i16 (saturating; callers keep |sum| < 32768).
pub inline fn maddubs(u: U8x32, s: I8x32) I16x16 {
    return asm ("vpmaddubsw %[s], %[u], %[r]"
        : [r] "=x" (-> I16x16),
        : [u] "x" (u),
          [s] "x" (s),
    );
}

/// Pairwise i16 x i16 products summed to i32.
pub inline fn maddwd(a: I16x16, b: I16x16) I32x8 {
    return asm ("vpmaddwd %[b], %[a], %[r]"
        : [r] "=x" (-> I32x8),
        : [a] "x" (a),
          [b] "x" (b),
    );
}

/// x with the sign of s applied (0 where s is 0): vpsignb.
pub inline fn signOf(x: I8x32, s: I8x32) I8x32 {
    return asm ("vpsignb %[s], %[x], %[r]"
        : [r] "=x" (-> I8x32),
        : [x] "x" (x),
          [s] "x" (s),
    );
}

const ones16: I16x16 = @splat(1);

/// Sums of u8 x i8 products in 8 groups of 4 adjacent pairs, as i32.
pub inline fn dotU8I8(u: U8x32, s: I8x32) I32x8 {
    return maddwd(maddubs(u, s), ones16);
}

/// Sums of i8 x i8 products in 8 groups of 4, as i32 (|a| must fit u8: a != -128 unless b is small).
pub inline fn dotI8I8(a: I8x32, b: I8x32) I32x8 {
    return dotU8I8(@bitCast(signOf(a, a)), signOf(b, a));
}

/// The 32 weights of a 4-bit block (16 bytes, low nibbles = elements 0..15) as unsigned bytes. The 16
/// bytes go to both 128-bit halves in one broadcast load; only the upper half is shifted right by 4
/// (one variable shift), then everything is masked. Cheaper than shift + vinserti128 + mask.
pub inline fn nibbles(qs: *align(1) const [16]u8) U8x32 {
    // The address goes in a register: Zig's "m" operands copy the value rather than naming the
    // original memory. Reading through a pointer the compiler does not see is sound here because
    // weights are never written while kernels run.
    const v = asm ("vbroadcasti128 (%[p]), %[r]"
        : [r] "=x" (-> @Vector(8, u32)),
        : [p] "r" (qs),
    );
    const shifted = v >> @Vector(8, u32){ 0, 0, 0, 0, 4, 4, 4, 4 };
    return @as(U8x32, @bitCast(shifted)) & @as(U8x32, @splat(0x0f));
}

pub inline fn toF32(v: I32x8) F32x8 {
    return @floatFromInt(v);
}

pub inline fn hsum(v: F32x8) f32 {
    return @reduce(.Add, v);
}

/// `nibbles` for the 16 bytes at base + `offset`, with the offset written into the instruction as a
/// displacement: inside an unrolled loop this saves the lea that a separate address would cost.
pub inline fn nibblesAt(base: [*]const u8, comptime offset: usize) U8x32 {
    const v = asm (std.fmt.comptimePrint("vbroadcasti128 {d}(%[p]), %[r]", .{offset})
        : [r] "=x" (-> @Vector(8, u32)),
        : [p] "r" (base),
    );
    const shifted = v >> @Vector(8, u32){ 0, 0, 0, 0, 4, 4, 4, 4 };
    return @as(U8x32, @bitCast(shifted)) & @as(U8x32, @splat(0x0f));
}

/// AVX-512 with VNNI (and BW for byte masks): four 32-element blocks per 512-bit register, one
/// `vpdpbusd` per 64 byte products (see dot.zig's `HalvesBatch`).
pub const avx512_vnni = available and std.Target.x86.featureSetHas(builtin.cpu.features, .avx512f) and
    std.Target.x86.featureSetHas(builtin.cpu.features, .avx512bw) and std.Target.x86.featureSetHas(builtin.cpu.features, .avx512vnni);

pub const U8x64 = @Vector(64, u8);
pub const I32x16 = @Vector(16, i32);

/// Sums of u8 x i8 products in 16 groups of 4 adjacent bytes, as i32 (`vpdpbusd` from zero; exact:
/// no intermediate saturation), with the i8 operand read from `s` + `offset` (64 bytes).
pub inline fn dotU8I8x64(u: U8x64, s: [*]const u8, comptime offset: usize) I32x16 {
    return asm (std.fmt.comptimePrint(
            \\vpxord %[r], %[r], %[r]
            \\vpdpbusd {d}(%[p]), %[u], %[r]
        , .{offset})
        : [r] "=&v" (-> I32x16),
        : [u] "v" (u),
          [p] "r" (s),
    );
}
