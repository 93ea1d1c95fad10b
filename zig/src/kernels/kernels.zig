//! The compute kernels, shared by the core (embedding lookup, norms, attention) and the CPU backend
//! plugin (matrix products). A named module in build.zig, so both libraries compile the same source.
pub const DType = @import("dtype.zig").DType;
pub const quant = @import("quant.zig");
pub const dot = @import("dot.zig");
pub const simd = @import("simd.zig");
pub const matmul = @import("matmul.zig");
pub const axpy = @import("axpy.zig");
pub const gemm_f32 = @import("gemm_f32.zig");
pub const ops = @import("ops.zig");
pub const attention = @import("attention.zig");

test {
    @import("std").testing.refAllDecls(@This());
}
