//! The per-layer neuron layout sparse FFNs compute from: a hot-first order of the FFN's neurons
//! (from the calibration sidecar's activation frequencies, or the model's own order), the gate and up
//! rows copied into that order, and the down projection transposed into it, one row per neuron, so
//! an active neuron's contribution is one contiguous row (y += h * row).
//!
//! Why copy gate and up (the mapped model already holds each neuron's row contiguously): in the
//! hot-first order the rows a token selects crowd together at the front, so the gathered reads run
//! nearly sequentially, and the copies sit in huge pages, where the model's 4 KiB file pages cost a
//! TLB miss per gathered row. Measured on the 7B-shape synthetic ReLU model: see `build`.
//!
//! The transpose re-encodes W_down along the other axis. Float models keep their values exactly
//! (f32, f16); quantized models get Q8_0 by default, whose rounding (at most max|x|/254 per 32
//! values) is far below the 4-bit or 5-bit rounding the weights already carry. Q4_0 halves the
//! bytes each active neuron reads, at the price of a second 4-bit rounding (the caller's choice).
const std = @import("std");
const huge_pages = @import("../engine/huge_pages.zig");
const kernels = @import("kernels");
const DType = kernels.DType;
const quant = kernels.quant;
const api = @import("backend_api");
const WeightView = api.WeightView;
const weight_rows = @import("../engine/weight_rows.zig");
const Model = @import("../engine/model.zig").Model;
const ThreadPool = @import("../engine/thread_pool.zig").ThreadPool;
const ErrorSink = @import("../status.zig").ErrorSink;

pub const LayerStore = struct {
    /// (ffn rows, dim cols): row k is neuron perm[k]'s column of W_down.
    down_t: WeightView,
    /// (ffn rows, dim cols): row k is neuron perm[k]'s row of W_gate / W_up, in the model's type.
    gate: WeightView,
    up: WeightView,
    /// Position k in the hot-first order -> the neuron's index in the model.
    perm: []u32,
    /// The model's neuron index -> position in the hot-first order.
    inv: []u32,
};

pub const NeuronStore = struct {
    allocator: std.mem.Allocator,
    down_type: DType,
    layers: []LayerStore,
    /// Bytes allocated for the reordered gate/up rows and the transposed down projections.
    bytes: usize,

    pub const BuildError = error{ OutOfMemory, InvalidArgument };

    /// Builds the store for every layer of `model`. `perms` holds n_layers * ffn indices (each layer a
    /// permutation of 0..ffn), or is empty for the model's own order.
    pub fn build(allocator: std.mem.Allocator, model: *const Model, down_type: DType, perms: []const u32, threads: usize, sink: *ErrorSink) BuildError!*NeuronStore {
        const hp = model.hp;
        const ffn = hp.ffn_dim;
        if (!kernels.axpy.supported(down_type) or down_type.rowBytes(hp.dim) == null) {
            _ = sink.fail(.unsupported, "the transposed down projection cannot be stored as {s} for dim {d}", .{ down_type.name(), hp.dim });
            return error.InvalidArgument;
        }
        if (hp.dim % quant.qk != 0) {
            _ = sink.fail(.unsupported, "sparse FFNs need dim to be a multiple of {d}; this model's is {d}", .{ quant.qk, hp.dim });
            return error.InvalidArgument;
        }
        if (perms.len != 0 and perms.len != hp.n_layers * ffn) {
            _ = sink.fail(.invalid_argument, "neuron order has {d} entries, expected {d} layers x {d} neurons", .{ perms.len, hp.n_layers, ffn });
            return error.InvalidArgument;
        }
        const self = try allocator.create(NeuronStore);
        errdefer allocator.destroy(self);
        const layers = try allocator.alloc(LayerStore, hp.n_layers);
        errdefer allocator.free(layers);
        var built: usize = 0;
        errdefer for (layers[0..built]) |*l| freeLayer(allocator, l);
        var bytes: usize = 0;
        const row_bytes = down_type.rowBytes(hp.dim).?;
        const pool = ThreadPool.init(allocator, threads) catch return error.OutOfMemory;
        defer pool.deinit();
        const scratch = try allocator.alloc(f32, threads * quant.qk * ffn);
        defer allocator.free(scratch);

        for (layers, 0..) |*layer, l| {
            const perm = try allocator.alloc(u32, ffn);
            errdefer allocator.free(perm);
            const inv = try allocator.alloc(u32, ffn);
            errdefer allocator.free(inv);
            if (perms.len == 0) {
                for (perm, 0..) |*p, k| p.* = @intCast(k);
            } else {
                @memcpy(perm, perms[l * ffn ..][0..ffn]);
            }
            @memset(inv, std.math.maxInt(u32));
            for (perm, 0..) |i, k| {
                if (i >= ffn or inv[i] != std.math.maxInt(u32)) {
                    _ = sink.fail(.invalid_argument, "neuron order of layer {d} is not a permutation of 0..{d} (entry {d} = {d})", .{ l, ffn, k, i });
                    return error.InvalidArgument;
                }
                inv[i] = @intCast(k);
            }
            const data = try allocHuge(allocator, row_bytes * ffn);
            errdefer allocator.free(data);
            transposeDown(model, l, down_type, perm, data, pool, scratch);
            const gate = try reorderRows(allocator, &model.layers[l].ffn_gate, perm, pool);
            errdefer freeView(allocator, gate);
            const up = try reorderRows(allocator, &model.layers[l].ffn_up, perm, pool);
            layer.* = .{
                .down_t = .{ .data = data.ptr, .row_bytes = row_bytes, .n_cols = hp.dim, .n_rows = ffn, .dtype = @intFromEnum(down_type) },
                .gate = gate,
                .up = up,
                .perm = perm,
                .inv = inv,
            };
            built += 1;
            bytes += data.len + gate.row_bytes * ffn + up.row_bytes * ffn;
        }
        self.* = .{ .allocator = allocator, .down_type = down_type, .layers = layers, .bytes = bytes };
        return self;
    }

    pub fn destroy(self: *NeuronStore) void {
        const a = self.allocator;
        for (self.layers) |*l| freeLayer(a, l);
        a.free(self.layers);
        a.destroy(self);
    }

    fn freeLayer(a: std.mem.Allocator, l: *LayerStore) void {
        freeView(a, l.down_t);
        freeView(a, l.gate);
        freeView(a, l.up);
        a.free(l.perm);
        a.free(l.inv);
    }
};

fn allocHuge(a: std.mem.Allocator, n: usize) error{OutOfMemory}![]align(64) u8 {
    const data = try a.alignedAlloc(u8, 64, n);
    huge_pages.advise(data);
    return data;
}

fn freeView(a: std.mem.Allocator, v: WeightView) void {
    a.free(@as([*]align(64) const u8, @alignCast(v.data))[0 .. v.row_bytes * v.n_rows]);
}

/// A copy of `src` with row k = src row perm[k], in huge pages.
fn reorderRows(a: std.mem.Allocator, src: *const WeightView, perm: []const u32, pool: *ThreadPool) error{OutOfMemory}!WeightView {
    const data = try allocHuge(a, src.row_bytes * src.n_rows);
    var job = ReorderJob{ .src = src, .dst = data, .perm = perm };
    pool.run(&job, ReorderJob.run, perm.len, 256);
    var out = src.*;
    out.data = data.ptr;
    // Rows one after another, whatever the model's copy keeps (the gathered-row kernels read them so).
    out.layout = @intFromEnum(api.Layout.rows);
    return out;
}

const ReorderJob = struct {
    src: *const WeightView,
    dst: []u8,
    perm: []const u32,

    fn run(ctx: *anyopaque, begin: usize, end: usize, _: usize) void {
        const self: *ReorderJob = @ptrCast(@alignCast(ctx));
        const rb = self.src.row_bytes;
        for (begin..end) |k| weight_rows.copyRow(self.src, self.perm[k], self.dst[k * rb ..][0..rb]);
    }
};

/// Writes layer `l`'s W_down transposed, rows in `perm` order, as `down_type` rows (ffn of them,
/// rowBytes(dim) each) into `out`: the bytes the neuron store holds, and what bundle packing writes.
/// `scratch` holds pool.threadCount() * 32 * ffn floats.
pub fn transposeDown(model: *const Model, l: usize, down_type: DType, perm: []const u32, out: []u8, pool: *ThreadPool, scratch: []f32) void {
    const hp = model.hp;
    const row_bytes = down_type.rowBytes(hp.dim).?;
    std.debug.assert(out.len >= row_bytes * hp.ffn_dim and perm.len == hp.ffn_dim and scratch.len >= pool.threadCount() * quant.qk * hp.ffn_dim);
    var job = TransposeJob{ .src = &model.layers[l].ffn_down, .dst = out, .dst_row_bytes = row_bytes, .dst_type = down_type, .perm = perm, .scratch = scratch, .ffn = hp.ffn_dim };
    pool.run(&job, TransposeJob.run, hp.dim / quant.qk, 1);
}

/// One item = 32 rows of W_down (32 columns of the transpose): dequantize them, then write that
/// 32-element block of every neuron's transposed row.
const TransposeJob = struct {
    src: *const WeightView,
    dst: []u8,
    dst_row_bytes: usize,
    dst_type: DType,
    perm: []const u32,
    scratch: []f32,
    ffn: usize,

    fn run(ctx: *anyopaque, begin: usize, end: usize, thread: usize) void {
        const self: *TransposeJob = @ptrCast(@alignCast(ctx));
        const qk = quant.qk;
        const tile = self.scratch[thread * qk * self.ffn ..][0 .. qk * self.ffn];
        for (begin..end) |jb| {
            for (0..qk) |r| weight_rows.dequantizeRow(self.src, jb * qk + r, tile[r * self.ffn ..][0..self.ffn]);
            for (self.perm, 0..) |i, k| {
                var v: [qk]f32 = undefined;
                for (&v, 0..) |*e, r| e.* = tile[r * self.ffn + i];
                const row = self.dst[k * self.dst_row_bytes ..];
                switch (self.dst_type) {
                    .f32 => @memcpy(row[jb * qk * 4 ..][0 .. qk * 4], std.mem.asBytes(&v)),
                    .f16 => for (v, 0..) |e, j| {
                        std.mem.writeInt(u16, row[(jb * qk + j) * 2 ..][0..2], @bitCast(@as(f16, @floatCast(e))), .little);
                    },
                    .q8_0 => quant.quantizeBlockQ8_0(&v, @ptrCast(row[jb * @sizeOf(quant.BlockQ8_0) ..].ptr)),
                    .q4_0 => quant.quantizeBlockQ4_0(&v, @ptrCast(row[jb * @sizeOf(quant.BlockQ4_0) ..].ptr)),
                    else => unreachable,
                }
            }
        }
    }
};
