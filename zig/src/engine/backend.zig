//! The core's handle on a backend plugin: the validated function table plus the context its `init`
//! returned. Wraps the C-ABI calls in typed Zig methods for the engine.
const std = @import("std");
const api = @import("backend_api");
const DType = @import("kernels").DType;
const ErrorSink = @import("../status.zig").ErrorSink;
const Status = @import("../status.zig").Status;

pub const Backend = struct {
    table: *const api.BackendApi,
    ctx: ?*anyopaque,

    pub const InitError = error{ AbiMismatch, BackendInit };

    /// Validates the table and runs the plugin's init. On failure `sink` says why and `status_out`
    /// holds the status to report (the plugin's own for an init failure).
    pub fn init(table: *const api.BackendApi, sink: *ErrorSink, status_out: *Status) InitError!Backend {
        if (api.validate(table, &sink.buf)) |why| {
            sink.len = why.len;
            status_out.* = .abi_mismatch;
            return error.AbiMismatch;
        }
        var ctx: ?*anyopaque = null;
        var out = api.ErrorOut{ .buf = &sink.buf, .cap = sink.buf.len, .len = 0 };
        const rc = table.init.?(&ctx, &out);
        if (rc != 0) {
            sink.len = @min(out.len, sink.buf.len);
            status_out.* = std.meta.intToEnum(Status, rc) catch .internal;
            if (status_out.* == .ok) status_out.* = .internal;
            return error.BackendInit;
        }
        return .{ .table = table, .ctx = ctx };
    }

    pub fn deinit(self: *Backend) void {
        self.table.deinit.?(self.ctx);
    }

    pub fn name(self: *const Backend) []const u8 {
        return if (self.table.name) |n| std.mem.span(n) else "(unnamed)";
    }

    pub fn supports(self: *const Backend, op: api.Op, dtype: DType) bool {
        return self.table.supports.?(self.ctx, @intFromEnum(op), @intFromEnum(dtype));
    }

    pub fn activationBytes(self: *const Backend, weight: DType, n: usize) usize {
        return @intCast(self.table.activation_bytes.?(self.ctx, @intFromEnum(weight), n));
    }

    /// Opaque id of the prepared-input format for `weight`; equal ids can share one prepared input.
    pub fn activationFormat(self: *const Backend, weight: DType) u32 {
        return self.table.activation_format.?(self.ctx, @intFromEnum(weight));
    }

    pub fn prepareActivation(self: *const Backend, weight: DType, x: []const f32, out: [*]u8) void {
        self.table.prepare_activation.?(self.ctx, @intFromEnum(weight), x.ptr, x.len, out);
    }

    pub fn matvec(self: *const Backend, w: *const api.WeightView, act: [*]const u8, y: [*]f32, row_begin: usize, row_end: usize) void {
        self.table.matvec.?(self.ctx, w, act, y, row_begin, row_end);
    }

    /// Batched rows; falls back to one matvec per token when the plugin has no matmul.
    pub fn matmul(self: *const Backend, w: *const api.WeightView, act: [*]const u8, act_stride: usize, n_tokens: usize, y: [*]f32, y_stride: usize, row_begin: usize, row_end: usize) void {
        if (self.table.matmul) |mm| {
            mm(self.ctx, w, act, act_stride, n_tokens, y, y_stride, row_begin, row_end);
            return;
        }
        for (0..n_tokens) |t| self.table.matvec.?(self.ctx, w, act + t * act_stride, y + t * y_stride, row_begin, row_end);
    }

    /// Whether the plugin has the two operations sparse FFNs need, for rows of these types.
    pub fn supportsSparse(self: *const Backend, row_type: DType, down_type: DType) bool {
        if (self.table.sparse_matvec == null or self.table.axpy_rows == null) return false;
        return self.supports(.sparse_matvec, row_type) and self.supports(.axpy_rows, down_type);
    }

    pub fn sparseMatvec(self: *const Backend, w: *const api.WeightView, act: [*]const u8, rows: []const u32, y: [*]f32) void {
        self.table.sparse_matvec.?(self.ctx, w, act, rows.ptr, rows.len, y);
    }

    pub fn axpyRows(self: *const Backend, w: *const api.WeightView, rows: []const u32, coeffs: [*]const f32, y: [*]f32) void {
        self.table.axpy_rows.?(self.ctx, w, rows.ptr, coeffs, rows.len, y);
    }

    pub fn sync(self: *const Backend) void {
        if (self.table.sync) |f| f(self.ctx);
    }
};
