//! The plugin ABI: a backend is a shared library exporting `sparrow_backend_get`, which returns a
//! pointer to a `BackendApi` table. TypeScript dlopens the plugin, reads the pointer and hands it to
//! the core (`sp_session_create`); the core checks `api_version` and the required entries before use.
//!
//! Shape after ggml-backend: one versioned table of C-ABI functions plus an opaque context. The core,
//! not the backend, decides what runs where and splits rows over its own thread pool: `matvec` and
//! `matmul` compute a row range and may be called from several threads at once on disjoint ranges.
const std = @import("std");

/// Bump on any change to the layout or meaning of `BackendApi` or the structs it takes.
pub const api_version: u32 = 3;

/// The symbol every backend plugin exports: `fn () callconv(.c) *const BackendApi`.
pub const entry_symbol = "sparrow_backend_get";

pub const Op = enum(u32) {
    matvec = 0,
    matmul = 1,
    sparse_matvec = 2,
    axpy_rows = 3,
    /// `matvec` and `matmul` over matrices stored as row pairs (`Layout.row_pairs`) of this type.
    row_pairs = 4,
};

/// How a matrix's rows lie in memory.
pub const Layout = enum(u32) {
    /// Row r at data + r * row_bytes, its blocks in order (GGUF's layout).
    rows = 0,
    /// For 32-element block types with rows of whole 8-block batches and an even row count: rows
    /// 2p and 2p + 1 span the same 2 * row_bytes, as row 2p's first 8 blocks, row 2p + 1's first 8,
    /// row 2p's next 8, and so on (kernels/dot.zig `repackRowPairs`). The core asks for it only
    /// where the backend `supports(row_pairs, dtype)`, and hands such matrices to `matvec` and
    /// `matmul` only, on even row ranges.
    row_pairs = 1,
};

/// A weight matrix as the core holds it: rows of `n_cols` elements of `dtype`, `row_bytes` apart.
/// (n_rows, n_cols) in row-major order: y[r] = dot(row r, x).
pub const WeightView = extern struct {
    data: [*]const u8,
    row_bytes: u64,
    n_cols: u64,
    n_rows: u64,
    dtype: u32,
    /// A `Layout`.
    layout: u32 = 0,
};

/// Where a backend writes a message when `init` fails (the core's ErrorSink buffer).
pub const ErrorOut = extern struct {
    buf: [*]u8,
    cap: u64,
    len: u64,
};

pub fn writeError(out: *ErrorOut, comptime fmt: []const u8, args: anytype) void {
    const written = std.fmt.bufPrint(out.buf[0..out.cap], fmt, args) catch out.buf[0..out.cap];
    out.len = written.len;
}

pub const InitFn = *const fn (out_ctx: *?*anyopaque, err: *ErrorOut) callconv(.c) i32;
pub const DeinitFn = *const fn (ctx: ?*anyopaque) callconv(.c) void;
pub const SupportsFn = *const fn (ctx: ?*anyopaque, op: u32, dtype: u32) callconv(.c) bool;
/// An id for the format the kernels want the input vector in, for weights of `weight_dtype`. Opaque
/// to the core, which only compares ids: weights with equal ids share one prepared input.
pub const ActivationFormatFn = *const fn (ctx: ?*anyopaque, weight_dtype: u32) callconv(.c) u32;
/// Bytes needed to hold `n` input elements prepared for weights of `weight_dtype`.
pub const ActivationBytesFn = *const fn (ctx: ?*anyopaque, weight_dtype: u32, n: u64) callconv(.c) u64;
/// Converts `n` f32 inputs into the activation format for `weight_dtype`, at `out`.
pub const PrepareActivationFn = *const fn (ctx: ?*anyopaque, weight_dtype: u32, x: [*]const f32, n: u64, out: [*]u8) callconv(.c) void;
/// y[r] = dot(w row r, act) for r in [row_begin, row_end).
pub const MatvecFn = *const fn (ctx: ?*anyopaque, w: *const WeightView, act: [*]const u8, y: [*]f32, row_begin: u64, row_end: u64) callconv(.c) void;
/// For each of `n_tokens` inputs t (prepared, `act_stride` bytes apart):
/// y[t * y_stride + r] = dot(w row r, act t), for r in [row_begin, row_end).
pub const MatmulFn = *const fn (ctx: ?*anyopaque, w: *const WeightView, act: [*]const u8, act_stride: u64, n_tokens: u64, y: [*]f32, y_stride: u64, row_begin: u64, row_end: u64) callconv(.c) void;
pub const SyncFn = *const fn (ctx: ?*anyopaque) callconv(.c) void;
/// y[k] = dot(w row rows[k], act) for k in [0, n): the rows of a sparse FFN's active neurons.
pub const SparseMatvecFn = *const fn (ctx: ?*anyopaque, w: *const WeightView, act: [*]const u8, rows: [*]const u32, n: u64, y: [*]f32) callconv(.c) void;
/// y[0..w.n_cols] += sum over k < n of coeffs[k] * (w row rows[k]): a sparse FFN's down projection,
/// stored transposed so each neuron's column is a row.
pub const AxpyRowsFn = *const fn (ctx: ?*anyopaque, w: *const WeightView, rows: [*]const u32, coeffs: [*]const f32, n: u64, y: [*]f32) callconv(.c) void;

pub const BackendApi = extern struct {
    api_version: u32,
    /// @sizeOf(BackendApi) as the plugin was built: lets a core detect a truncated table.
    struct_size: u32,
    /// Required (null is tolerated in messages only).
    name: ?[*:0]const u8,
    /// Required.
    init: ?InitFn,
    /// Required.
    deinit: ?DeinitFn,
    /// Required.
    supports: ?SupportsFn,
    /// Required.
    activation_format: ?ActivationFormatFn,
    /// Required.
    activation_bytes: ?ActivationBytesFn,
    /// Required.
    prepare_activation: ?PrepareActivationFn,
    /// Required.
    matvec: ?MatvecFn,
    /// Optional; default: the core calls `matvec` once per token.
    matmul: ?MatmulFn,
    /// Optional; default: nothing to wait for (the backend computes synchronously).
    sync: ?SyncFn,
    /// Optional; without it (or axpy_rows) the backend cannot run sparse FFNs.
    sparse_matvec: ?SparseMatvecFn,
    /// Optional; see sparse_matvec.
    axpy_rows: ?AxpyRowsFn,
};

/// Checks a table handed over from TypeScript; on failure writes why into `why` and returns it.
/// Reads nothing past `api_version` until that matches: a table of another version may have
/// another layout, and its `name` may not be where this version keeps it.
pub fn validate(api: *const BackendApi, why: []u8) ?[]const u8 {
    if (api.api_version != api_version)
        return std.fmt.bufPrint(why, "backend table speaks plugin api_version {d}, this core speaks {d}: rebuild the plugin and the core from the same sources", .{ api.api_version, api_version }) catch why;
    const name: []const u8 = if (api.name) |n| std.mem.span(n) else "(unnamed)";
    if (api.struct_size < @sizeOf(BackendApi))
        return std.fmt.bufPrint(why, "backend '{s}' table is {d} bytes, expected {d}", .{ name, api.struct_size, @sizeOf(BackendApi) }) catch why;
    inline for (.{ "init", "deinit", "supports", "activation_format", "activation_bytes", "prepare_activation", "matvec" }) |field| {
        if (@field(api, field) == null)
            return std.fmt.bufPrint(why, "backend '{s}' lacks the required entry '{s}'", .{ name, field }) catch why;
    }
    return null;
}
