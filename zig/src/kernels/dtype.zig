//! Tensor element types, numbered as GGUF/ggml number them (the file format fixes these ids).
//!
//! The TypeScript GGUF reader (core/gguf_types.ts) holds the full table of names and block sizes;
//! this side only knows the types it can compute with. `core_test.ts` checks both tables agree.
const std = @import("std");

pub const DType = enum(u32) {
    f32 = 0,
    f16 = 1,
    q4_0 = 2,
    q4_1 = 3,
    q5_0 = 6,
    q5_1 = 7,
    q8_0 = 8,
    q8_1 = 9,
    q4_k = 12,
    q5_k = 13,
    q6_k = 14,
    q8_k = 15,
    bf16 = 30,
    _,

    /// Elements per block (1 for plain float types).
    pub fn blockElems(self: DType) ?usize {
        return switch (self) {
            .f32, .f16, .bf16 => 1,
            .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1 => 32,
            .q4_k, .q5_k, .q6_k, .q8_k => 256,
            _ => null,
        };
    }

    /// Bytes per block.
    pub fn blockBytes(self: DType) ?usize {
        return switch (self) {
            .f32 => 4,
            .f16, .bf16 => 2,
            .q4_0 => 18,
            .q4_1 => 20,
            .q5_0 => 22,
            .q5_1 => 24,
            .q8_0 => 34,
            .q8_1 => 36,
            .q4_k => 144,
            .q5_k => 176,
            .q6_k => 210,
            .q8_k => 292,
            _ => null,
        };
    }

    /// Bytes taken by a row of `n` elements, or null when `n` is not a whole number of blocks or the
    /// type is unknown.
    pub fn rowBytes(self: DType, n: usize) ?usize {
        const be = self.blockElems() orelse return null;
        const bb = self.blockBytes() orelse return null;
        if (n % be != 0) return null;
        return (n / be) * bb;
    }

    pub fn name(self: DType) []const u8 {
        return std.enums.tagName(DType, self) orelse "unknown";
    }

    /// True for the types a model weight may have in this build: those with a dequantize routine and
    /// a dot kernel (activation-only formats such as q8_1 excluded).
    pub fn isWeightType(self: DType) bool {
        return switch (self) {
            .f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_k, .q5_k, .q6_k => true,
            else => false,
        };
    }
};

test "row sizes follow the block layout" {
    try std.testing.expectEqual(@as(?usize, 18 * 2), DType.q4_0.rowBytes(64));
    try std.testing.expectEqual(@as(?usize, null), DType.q4_0.rowBytes(40));
    try std.testing.expectEqual(@as(?usize, 256), DType.f32.rowBytes(64));
    try std.testing.expectEqual(@as(?usize, 144), DType.q4_k.rowBytes(256));
    const unknown: DType = @enumFromInt(77);
    try std.testing.expectEqual(@as(?usize, null), unknown.rowBytes(32));
    try std.testing.expectEqualStrings("unknown", unknown.name());
}
