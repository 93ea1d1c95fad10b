//! Everything sparse FFNs need beyond the model, shared by all sessions on it: the neuron store
//! (hot-first order, transposed down projection), and per layer the predictor (two matrices from the
//! calibration sidecar, or PowerInfer's predictor file, copied into huge pages) and the thresholds.
const std = @import("std");
const kernels = @import("kernels");
const DType = kernels.DType;
const WeightView = @import("backend_api").WeightView;
const model_mod = @import("../engine/model.zig");
const Model = model_mod.Model;
const MappedFile = @import("../io/mapped_file.zig").MappedFile;
const NeuronStore = @import("neuron_store.zig").NeuronStore;
const huge_pages = @import("../engine/huge_pages.zig");
const OffloadStore = @import("../offload/offload_store.zig").OffloadStore;
const offload_desc = @import("../offload/offload_desc.zig");
const offload_ffn = @import("../offload/offload_ffn.zig");
const desc = @import("sparse_desc.zig");
const ErrorSink = @import("../status.zig").ErrorSink;
const Status = @import("../status.zig").Status;

pub const Predictor = struct {
    /// (rank, dim)
    fc1: WeightView,
    /// (ffn, rank), rows in the layer's hot-first order (see `orderScores`)
    fc2: WeightView,
    /// (ffn,) added to the scores, if present; hot-first order too
    bias: ?[]const f32,
    /// No relu between fc1 and fc2.
    linear: bool,
};

pub const LayerSparse = struct {
    predictor: ?Predictor,
    score_threshold: f32,
    cats_threshold: f32,
};

/// Where the FFN neurons come from when they are offloaded: a bundle file (core/bundle_format.ts).
pub const OffloadConfig = struct {
    desc: offload_desc.OffloadDesc,
    layers: []const offload_desc.LayerOffloadDesc,
    path: []const u8,
};

pub const SparseModel = struct {
    allocator: std.mem.Allocator,
    model: *Model,
    /// In memory: the neuron store (transposed down, hot-first order). Offloaded: null.
    store: ?*NeuronStore,
    /// Offloaded: the neuron cache over the bundle file, and its pipeline scratch.
    offload: ?*OffloadStore = null,
    offload_scratch: ?offload_ffn.Scratch = null,
    queue_depth: usize = 0,
    /// Every predictor's matrices and bias, copied out of the sidecar (see `copyPredictors`).
    predictors: []align(64) u8 = &.{},
    layers: []LayerSparse,
    /// Largest predictor rank (sizes the sessions' scratch).
    max_rank: usize,
    /// Sessions using this; destroying it while any do is refused.
    users: std.atomic.Value(u32) = std.atomic.Value(u32).init(0),

    pub const CreateError = error{Failed};

    /// Builds the neuron store (or, with `offload`, the neuron cache over the bundle file, whose hot
    /// region `loadHot` then fills) and copies the predictors. `sidecar_path` may be empty when no layer
    /// has a predictor. On failure `sink` and `status_out` say why.
    pub fn create(allocator: std.mem.Allocator, model: *Model, sidecar_path: []const u8, desc_bytes: []const u8, perms: []const u32, threads: usize, offload: ?OffloadConfig, sink: *ErrorSink, status_out: *Status) CreateError!*SparseModel {
        const hp = model.hp;
        if (desc_bytes.len < @sizeOf(desc.SparseDesc)) return fail(status_out, sink.fail(.invalid_argument, "sparse description is {d} bytes", .{desc_bytes.len}));
        var sd: desc.SparseDesc = undefined;
        @memcpy(std.mem.asBytes(&sd), desc_bytes[0..@sizeOf(desc.SparseDesc)]);
        if (sd.version != desc.sparse_desc_version) return fail(status_out, sink.fail(.abi_mismatch, "sparse description version {d}, this core reads {d}", .{ sd.version, desc.sparse_desc_version }));
        if (sd.n_layers != hp.n_layers or desc_bytes.len != @sizeOf(desc.SparseDesc) + hp.n_layers * @sizeOf(desc.LayerSparseDesc))
            return fail(status_out, sink.fail(.invalid_argument, "sparse description covers {d} layers ({d} bytes); the model has {d}", .{ sd.n_layers, desc_bytes.len, hp.n_layers }));
        const down_type: DType = @enumFromInt(sd.down_type);

        const self = allocator.create(SparseModel) catch return fail(status_out, sink.fail(.out_of_memory, "out of memory", .{}));
        errdefer allocator.destroy(self);
        const layers = allocator.alloc(LayerSparse, hp.n_layers) catch return fail(status_out, sink.fail(.out_of_memory, "out of memory", .{}));
        errdefer allocator.free(layers);

        var sidecar: ?MappedFile = null;
        errdefer if (sidecar) |*f| f.close();
        var max_rank: usize = 0;
        for (layers, 0..) |*layer, l| {
            var ld: desc.LayerSparseDesc = undefined;
            @memcpy(std.mem.asBytes(&ld), desc_bytes[@sizeOf(desc.SparseDesc) + l * @sizeOf(desc.LayerSparseDesc) ..][0..@sizeOf(desc.LayerSparseDesc)]);
            if (!std.math.isFinite(ld.score_threshold) or !(ld.cats_threshold >= 0) or !std.math.isFinite(ld.cats_threshold))
                return fail(status_out, sink.fail(.invalid_argument, "layer {d}: thresholds {d} / {d} are not usable", .{ l, ld.score_threshold, ld.cats_threshold }));
            layer.* = .{ .predictor = null, .score_threshold = ld.score_threshold, .cats_threshold = ld.cats_threshold };
            if (!ld.fc1.present()) continue;
            if (sidecar == null) {
                sidecar = MappedFile.open(sidecar_path, sink) catch |e| return fail(status_out, if (e == error.Io) .io else .bad_model);
            }
            const rank: usize = @intCast(ld.fc1.ne[1]);
            if (rank == 0 or rank > 1 << 16) return fail(status_out, sink.fail(.bad_model, "predictor '{s}' has rank {d}", .{ ld.fc1.nameSlice(), rank }));
            var v = model_mod.Validator{ .file = sidecar.?.bytes, .path = sidecar_path, .sink = sink };
            const fc1 = v.matrix(&ld.fc1, rank, hp.dim) catch |e| return fail(status_out, model_mod.status(e));
            const fc2 = v.matrix(&ld.fc2, hp.ffn_dim, rank) catch |e| return fail(status_out, model_mod.status(e));
            const bias = if (ld.fc2_bias.present()) v.norm(&ld.fc2_bias, hp.ffn_dim) catch |e| return fail(status_out, model_mod.status(e)) else null;
            layer.predictor = .{ .fc1 = fc1, .fc2 = fc2, .bias = bias, .linear = ld.flags & desc.flag_linear_predictor != 0 };
            max_rank = @max(max_rank, rank);
        }
        var predictors: []align(64) u8 = &.{};
        if (sidecar) |*f| {
            const copied = copyPredictors(allocator, layers);
            f.close();
            sidecar = null;
            predictors = copied catch return fail(status_out, sink.fail(.out_of_memory, "out of memory copying the predictors", .{}));
        }
        errdefer allocator.free(predictors);
        if (offload) |o| {
            // FFN weights copied into memory would sit outside the budget the bundles are read within.
            if (model.ffn_copied) return fail(status_out, sink.fail(.invalid_argument, "the model's FFN weights were copied into memory when it was loaded (weights \"copy\"); load it with weights \"map\" to offload its FFN neurons", .{}));
            model.copyWeights(false, std.Thread.getCpuCount() catch 1, null) catch return fail(status_out, sink.fail(.out_of_memory, "out of memory copying the weights outside the FFNs", .{}));
            for (layers, 0..) |layer, l| {
                if (layer.predictor == null) return fail(status_out, sink.fail(.invalid_argument, "offloaded FFNs need a predictor for every layer; layer {d} has none", .{l}));
            }
            if (o.desc.version != offload_desc.offload_desc_version) return fail(status_out, sink.fail(.abi_mismatch, "offload description version {d}, this core reads {d}", .{ o.desc.version, offload_desc.offload_desc_version }));
            if (o.desc.n_layers != hp.n_layers) return fail(status_out, sink.fail(.invalid_argument, "the bundle file has {d} layers; the model has {d}", .{ o.desc.n_layers, hp.n_layers }));
            for (model.layers, 0..) |*ml, l| {
                if (ml.ffn_gate.dtype != o.desc.gate_type or ml.ffn_up.dtype != o.desc.up_type)
                    return fail(status_out, sink.fail(.bad_model, "the bundle file stores gate/up rows as types {d}/{d}; layer {d} of the model has {d}/{d}", .{ o.desc.gate_type, o.desc.up_type, l, ml.ffn_gate.dtype, ml.ffn_up.dtype }));
            }
            const st = OffloadStore.create(allocator, hp.dim, hp.ffn_dim, o.desc, o.layers, perms, o.path, sink) catch |e| return fail(status_out, switch (e) {
                error.OutOfMemory => .out_of_memory,
                error.InvalidArgument => .invalid_argument,
                error.Io => .io,
            });
            errdefer st.destroy();
            const qd: usize = @max(o.desc.queue_depth, 1);
            const scratch = offload_ffn.Scratch.init(allocator, hp.ffn_dim, qd) catch return fail(status_out, sink.fail(.out_of_memory, "out of memory allocating the offload pipeline's scratch for {d} neurons per layer", .{hp.ffn_dim}));
            self.* = .{ .allocator = allocator, .model = model, .store = null, .offload = st, .offload_scratch = scratch, .queue_depth = qd, .predictors = predictors, .layers = layers, .max_rank = max_rank };
        } else {
            const store = NeuronStore.build(allocator, model, down_type, perms, threads, sink) catch |e| return fail(status_out, switch (e) {
                error.OutOfMemory => sink.fail(.out_of_memory, "out of memory building the sparse neuron store", .{}),
                error.InvalidArgument => .invalid_argument,
            });
            self.* = .{ .allocator = allocator, .model = model, .store = store, .predictors = predictors, .layers = layers, .max_rank = max_rank };
        }
        errdefer if (self.store) |st| st.destroy() else {
            self.offload.?.destroy();
            self.offload_scratch.?.deinit(allocator);
        };
        self.orderScores() catch return fail(status_out, sink.fail(.out_of_memory, "out of memory ordering the predictors' rows", .{}));
        _ = model.sessions.fetchAdd(1, .acq_rel); // the model must outlive this
        return self;
    }

    pub fn destroy(self: *SparseModel) void {
        std.debug.assert(self.users.load(.acquire) == 0);
        const a = self.allocator;
        if (self.store) |st| st.destroy();
        if (self.offload) |st| st.destroy();
        if (self.offload_scratch) |*sc| sc.deinit(a);
        a.free(self.predictors);
        a.free(self.layers);
        _ = self.model.sessions.fetchSub(1, .acq_rel);
        a.destroy(self);
    }

    pub fn downType(self: *const SparseModel) DType {
        return if (self.store) |st| st.down_type else @enumFromInt(self.offload.?.down.dtype);
    }

    /// Puts the rows of every predictor's fc2 (and its bias) in the layer's hot-first order, so the
    /// scores come out in the order the sparse FFN selects in: one ordered scan of them is the
    /// selection, where scores in model order went through a bitmap of positions. (Simpler; on the
    /// 7B-shape synthetic model no faster that could be measured.)
    fn orderScores(self: *SparseModel) error{OutOfMemory}!void {
        var largest: usize = 0;
        for (self.layers) |layer| {
            if (layer.predictor) |p| largest = @max(largest, p.fc2.row_bytes * p.fc2.n_rows);
        }
        if (largest == 0) return;
        const tmp = try self.allocator.alloc(u8, largest);
        defer self.allocator.free(tmp);
        for (self.layers, 0..) |*layer, l| {
            const p = if (layer.predictor) |*pred| pred else continue;
            const perm = self.order(l);
            const rb = p.fc2.row_bytes;
            const rows: [*]u8 = @constCast(p.fc2.data);
            for (perm, 0..) |i, k| @memcpy(tmp[k * rb ..][0..rb], rows[i * rb ..][0..rb]);
            @memcpy(rows[0 .. rb * perm.len], tmp[0 .. rb * perm.len]);
            if (p.bias) |b| {
                const ordered: []f32 = @as([*]f32, @ptrCast(@alignCast(tmp.ptr)))[0..b.len];
                for (perm, ordered) |i, *v| v.* = b[i];
                @memcpy(@constCast(b), ordered);
            }
        }
    }

    /// Hot-first position -> the model's neuron index, for layer `l`.
    pub fn order(self: *const SparseModel, l: usize) []const u32 {
        return if (self.store) |st| st.layers[l].perm else self.offload.?.layers[l].perm;
    }

    /// The model's neuron index -> hot-first position, for layer `l`.
    pub fn position(self: *const SparseModel, l: usize) []const u32 {
        return if (self.store) |st| st.layers[l].inv else self.offload.?.layers[l].inv;
    }
};

/// Copies every layer's predictor (fc1, fc2, bias) into one allocation in huge pages and points the
/// layers at the copies. The sidecar's mapping cannot be relied on for huge pages: reading its
/// frequency tensors (TypeScript does, to order the neurons) fills the page cache with small folios.
/// With 4 KiB pages, fc2's 1.9 MB per 7B layer cost a TLB miss every 30 rows (measured: fc2 7.7-8.4
/// -> 5.8-7.7 ms per token, before fc2's rows were prefetched).
fn copyPredictors(allocator: std.mem.Allocator, layers: []LayerSparse) error{OutOfMemory}![]align(64) u8 {
    const piece = struct {
        fn bytes(p: Predictor) [3]usize {
            return .{
                std.mem.alignForward(usize, p.fc1.row_bytes * p.fc1.n_rows, 64),
                std.mem.alignForward(usize, p.fc2.row_bytes * p.fc2.n_rows, 64),
                if (p.bias) |b| std.mem.alignForward(usize, b.len * 4, 64) else 0,
            };
        }
    };
    var total: usize = 0;
    for (layers) |layer| {
        if (layer.predictor) |p| {
            for (piece.bytes(p)) |n| total += n;
        }
    }
    const data = try allocator.alignedAlloc(u8, 64, total);
    huge_pages.advise(data);
    var at: usize = 0;
    for (layers) |*layer| {
        const p = if (layer.predictor) |*pred| pred else continue;
        const sizes = piece.bytes(p.*);
        inline for (.{ &p.fc1, &p.fc2 }, 0..) |w, i| {
            const n = w.row_bytes * w.n_rows;
            @memcpy(data[at..][0..n], w.data[0..n]);
            w.data = data[at..].ptr;
            at += sizes[i];
        }
        if (p.bias) |b| {
            const dst: [*]f32 = @ptrCast(@alignCast(data[at..].ptr));
            @memcpy(dst[0..b.len], b);
            p.bias = dst[0..b.len];
            at += sizes[2];
        }
    }
    return data;
}

fn fail(status_out: *Status, s: Status) error{Failed} {
    status_out.* = s;
    return error.Failed;
}
