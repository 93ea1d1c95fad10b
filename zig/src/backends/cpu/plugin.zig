//! The `cpu` backend plugin: SIMD row kernels (kernels/dot.zig: @Vector code that LLVM lowers to
//! AVX2/AVX-512 on x86-64 and NEON on aarch64, with scalar tails) behind the plugin ABI.
//! Stateless: the core splits rows over its own threads and calls in concurrently.
const std = @import("std");
const api = @import("backend_api");
const kernels = @import("kernels");
const DType = kernels.DType;
const dot = kernels.dot;

fn init(out_ctx: *?*anyopaque, err: *api.ErrorOut) callconv(.c) i32 {
    _ = err;
    out_ctx.* = null;
    return 0;
}

fn deinit(ctx: ?*anyopaque) callconv(.c) void {
    _ = ctx;
}

fn supports(ctx: ?*anyopaque, op: u32, dtype: u32) callconv(.c) bool {
    _ = ctx;
    const t: DType = @enumFromInt(dtype);
    const o = std.meta.intToEnum(api.Op, op) catch return false;
    return switch (o) {
        .matvec, .matmul, .sparse_matvec => t.isWeightType(),
        .axpy_rows => kernels.axpy.supported(t),
        .row_pairs => dot.rowPairsFit(t, 2, 8 * 32),
    };
}

fn activationFormat(ctx: ?*anyopaque, weight_dtype: u32) callconv(.c) u32 {
    _ = ctx;
    return @intFromEnum(dot.activationFormat(@enumFromInt(weight_dtype)));
}

fn activationBytes(ctx: ?*anyopaque, weight_dtype: u32, n: u64) callconv(.c) u64 {
    _ = ctx;
    return dot.activationBytes(@enumFromInt(weight_dtype), n);
}

fn prepareActivation(ctx: ?*anyopaque, weight_dtype: u32, x: [*]const f32, n: u64, out: [*]u8) callconv(.c) void {
    _ = ctx;
    const wt: DType = @enumFromInt(weight_dtype);
    dot.prepareActivation(wt, x[0..n], out[0..dot.activationBytes(wt, n)]);
}

fn matvec(ctx: ?*anyopaque, w: *const api.WeightView, act: [*]const u8, y: [*]f32, row_begin: u64, row_end: u64) callconv(.c) void {
    _ = ctx;
    if (w.layout == @intFromEnum(api.Layout.row_pairs))
        return dot.matvecRowPairs(@enumFromInt(w.dtype), w.data, w.row_bytes, w.n_cols, act, y, row_begin, row_end);
    dot.matvecRows(@enumFromInt(w.dtype), w.data, w.row_bytes, w.n_cols, act, y, row_begin, row_end);
}

/// Tiles of rows x tokens (kernels/matmul.zig): each weight block is read and unpacked once for
/// several tokens.
fn matmul(ctx: ?*anyopaque, w: *const api.WeightView, act: [*]const u8, act_stride: u64, n_tokens: u64, y: [*]f32, y_stride: u64, row_begin: u64, row_end: u64) callconv(.c) void {
    _ = ctx;
    kernels.matmul.matmul(@enumFromInt(w.dtype), w.data, w.row_bytes, w.n_cols, act, act_stride, n_tokens, y, y_stride, row_begin, row_end, w.layout == @intFromEnum(api.Layout.row_pairs));
}

fn sparseMatvec(ctx: ?*anyopaque, w: *const api.WeightView, act: [*]const u8, rows: [*]const u32, n: u64, y: [*]f32) callconv(.c) void {
    _ = ctx;
    dot.gatheredRows(@enumFromInt(w.dtype), w.data, w.row_bytes, w.n_cols, act, rows[0..n], y);
}

fn axpyRows(ctx: ?*anyopaque, w: *const api.WeightView, rows: [*]const u32, coeffs: [*]const f32, n: u64, y: [*]f32) callconv(.c) void {
    _ = ctx;
    kernels.axpy.axpyRows(@enumFromInt(w.dtype), w.data, w.row_bytes, rows[0..n], coeffs, y, w.n_cols);
}

const table = api.BackendApi{
    .api_version = api.api_version,
    .struct_size = @sizeOf(api.BackendApi),
    .name = "cpu",
    .init = init,
    .deinit = deinit,
    .supports = supports,
    .activation_format = activationFormat,
    .activation_bytes = activationBytes,
    .prepare_activation = prepareActivation,
    .matvec = matvec,
    .matmul = matmul,
    .sync = null,
    .sparse_matvec = sparseMatvec,
    .axpy_rows = axpyRows,
};

export fn sparrow_backend_get() *const api.BackendApi {
    return &table;
}
