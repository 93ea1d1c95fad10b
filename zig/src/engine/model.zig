//! A loaded model: the mapped file plus validated views of every tensor the forward pass uses.
//! Immutable once opened, so any number of sessions may share it.
const std = @import("std");
const desc = @import("model_desc.zig");
const kernels = @import("kernels");
const DType = kernels.DType;
const api = @import("backend_api");
const WeightView = api.WeightView;
const Backend = @import("backend.zig").Backend;
const MappedFile = @import("../io/mapped_file.zig").MappedFile;
const huge_pages = @import("huge_pages.zig");
const ErrorSink = @import("../status.zig").ErrorSink;
const Status = @import("../status.zig").Status;

/// Upper limits on hyperparameters: far above any real model, low enough that products of them fit
/// in usize and a corrupt value is caught here rather than as an absurd allocation.
const limits = struct {
    const layers = 1024;
    const dim = 1 << 17;
    const heads = 1024;
    const head_dim = 1024;
    const vocab = 1 << 22;
    const ffn_dim = 1 << 20;
};

pub const Layer = struct {
    attn_norm: []const f32,
    attn_q: WeightView,
    attn_k: WeightView,
    attn_v: WeightView,
    attn_output: WeightView,
    ffn_norm: []const f32,
    ffn_gate: WeightView,
    ffn_up: WeightView,
    ffn_down: WeightView,
};

pub const Hparams = struct {
    n_layers: usize,
    dim: usize,
    ffn_dim: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    vocab_size: usize,
    ctx_train: usize,
    rope_dim: usize,
    rope_layout: desc.RopeLayout,
    activation: desc.Activation,
    rope_theta: f32,
    rms_eps: f32,

    pub fn qDim(self: Hparams) usize {
        return self.n_heads * self.head_dim;
    }
    pub fn kvDim(self: Hparams) usize {
        return self.n_kv_heads * self.head_dim;
    }
};

pub const Model = struct {
    allocator: std.mem.Allocator,
    file: MappedFile,
    hp: Hparams,
    token_embd: WeightView,
    output_norm: []const f32,
    output: WeightView,
    layers: []Layer,
    /// Every weight matrix above, for checks that apply to all of them (backend support, sizes).
    matrices: []WeightView,
    /// Sessions alive on this model; closing the model with sessions open is refused.
    sessions: std.atomic.Value(u32) = std.atomic.Value(u32).init(0),
    /// The weights copied out of the mapping by `copyWeights` (empty until then): those outside the
    /// FFNs, and the FFNs' too when `ffn_copied`.
    weights_copy: []align(64) u8 = &.{},
    ffn_copied: bool = false,
    /// Matrices of the copy stored as row pairs (`copyWeights` with a backend).
    row_pair_matrices: u32 = 0,
    sink: ErrorSink = .{},

    /// Maps `path` and validates `desc_bytes` (a ModelDesc followed by its LayerDescs) against it.
    /// On failure `sink` says why; nothing stays mapped or allocated.
    pub fn open(allocator: std.mem.Allocator, path: []const u8, desc_bytes: []const u8, sink: *ErrorSink) OpenError!*Model {
        if (desc_bytes.len < @sizeOf(desc.ModelDesc)) {
            _ = sink.fail(.invalid_argument, "model description is {d} bytes, expected at least {d}", .{ desc_bytes.len, @sizeOf(desc.ModelDesc) });
            return error.InvalidArgument;
        }
        var md: desc.ModelDesc = undefined;
        @memcpy(std.mem.asBytes(&md), desc_bytes[0..@sizeOf(desc.ModelDesc)]);
        if (md.version != desc.desc_version) {
            _ = sink.fail(.abi_mismatch, "model description version {d}, this core reads {d}", .{ md.version, desc.desc_version });
            return error.AbiMismatch;
        }
        const want_len = @sizeOf(desc.ModelDesc) + @as(usize, md.n_layers) * @sizeOf(desc.LayerDesc);
        if (md.n_layers == 0 or md.n_layers > limits.layers or desc_bytes.len != want_len) {
            _ = sink.fail(.invalid_argument, "model description for {d} layers is {d} bytes, expected {d}", .{ md.n_layers, desc_bytes.len, want_len });
            return error.InvalidArgument;
        }
        const hp = try checkHparams(&md, sink);

        var file = try MappedFile.open(path, sink);
        errdefer file.close();
        const self = allocator.create(Model) catch return outOfMemory(sink);
        errdefer allocator.destroy(self);
        const layers = allocator.alloc(Layer, hp.n_layers) catch return outOfMemory(sink);
        errdefer allocator.free(layers);
        const matrices = allocator.alloc(WeightView, 2 + layer_matrices.len * hp.n_layers) catch return outOfMemory(sink);
        errdefer allocator.free(matrices);

        var v = Validator{ .file = file.bytes, .path = path, .sink = sink };
        const q_dim = hp.qDim();
        const kv_dim = hp.kvDim();
        const token_embd = try v.matrix(&md.token_embd, hp.vocab_size, hp.dim);
        const output_norm = try v.norm(&md.output_norm, hp.dim);
        const output = if (md.output.present()) try v.matrix(&md.output, hp.vocab_size, hp.dim) else token_embd;
        for (layers, 0..) |*layer, i| {
            var ld: desc.LayerDesc = undefined;
            const off = @sizeOf(desc.ModelDesc) + i * @sizeOf(desc.LayerDesc);
            @memcpy(std.mem.asBytes(&ld), desc_bytes[off..][0..@sizeOf(desc.LayerDesc)]);
            layer.* = .{
                .attn_norm = try v.norm(&ld.attn_norm, hp.dim),
                .attn_q = try v.matrix(&ld.attn_q, q_dim, hp.dim),
                .attn_k = try v.matrix(&ld.attn_k, kv_dim, hp.dim),
                .attn_v = try v.matrix(&ld.attn_v, kv_dim, hp.dim),
                .attn_output = try v.matrix(&ld.attn_output, hp.dim, q_dim),
                .ffn_norm = try v.norm(&ld.ffn_norm, hp.dim),
                .ffn_gate = try v.matrix(&ld.ffn_gate, hp.ffn_dim, hp.dim),
                .ffn_up = try v.matrix(&ld.ffn_up, hp.ffn_dim, hp.dim),
                .ffn_down = try v.matrix(&ld.ffn_down, hp.dim, hp.ffn_dim),
            };
        }
        self.* = .{
            .allocator = allocator,
            .file = file,
            .hp = hp,
            .token_embd = token_embd,
            .output_norm = output_norm,
            .output = output,
            .layers = layers,
            .matrices = matrices,
        };
        self.listMatrices();
        return self;
    }

    const layer_matrices = .{ "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down" };
    const ffn_matrices = .{ "ffn_gate", "ffn_up", "ffn_down" };

    /// Fills `matrices` (what backend checks and activation sizes walk) from the views: token
    /// embeddings, output, then each layer's matrices in `layer_matrices` order.
    fn listMatrices(self: *Model) void {
        self.matrices[0] = self.token_embd;
        self.matrices[1] = self.output;
        for (self.layers, 0..) |layer, i| {
            inline for (layer_matrices, 0..) |f, j| self.matrices[2 + layer_matrices.len * i + j] = @field(layer, f);
        }
    }

    /// Copies weights out of the file mapping into anonymous memory in huge pages and points the
    /// model at the copies: those outside the FFNs (token embeddings, output, attention matrices,
    /// norms), and with `with_ffn` the FFN matrices too. Then drops the mapping's pages.
    ///
    /// Without the FFNs, for a model whose FFN neurons are offloaded to a bundle file under a memory
    /// limit: read through the mapping, those weights are page cache, which a memory cgroup near its
    /// limit reclaims and the next token faults back in from disk; anonymous memory stays. Measured
    /// on the offload bench (7B-shape synthetic, budget and cgroup limit 3279 MiB): 4.93 tok/s with
    /// 110.6 ms of I/O stall per token in the cgroup against 7.01 tok/s and 48.0 ms outside it, same
    /// budget; with the copies, 9.21 tok/s and 11.0 ms in the cgroup.
    ///
    /// With the FFNs, for a model that fits in memory (TypeScript's `weights: "copy"`): on a KVM
    /// guest (Xeon, 2 vCPUs) decode streamed the weights from the mapping at 60% of the speed it
    /// reached from anonymous memory, though the mapping was huge-page mapped throughout (7B-shape
    /// synthetic ReLU Q4_0, 2 threads, one process, token by token: dense 4.00 -> 6.27 tok/s,
    /// predictor-sparse 12.09 -> 16.46).
    ///
    /// The copy is made by `threads` threads, each over its own part of the bytes: faulting in fresh
    /// anonymous memory is most of its cost, and on a KVM guest whose memory had sat idle (its host
    /// backs freed memory lazily) touching 4 GiB took 10.4-10.6 s on one thread and 5.6-5.8 s on two
    /// (0.85-0.96 s and 0.35 s right after a run).
    ///
    /// With `backend` (the plugin the model's sessions will use), the attention, output and (with
    /// `with_ffn`) FFN matrices are stored as row pairs where the backend computes with them so
    /// (`api.Layout.row_pairs`): one stream per pair of rows for the matrix-vector product. Only
    /// before any session is open: a session reading a view while its data and layout change would
    /// mix the two.
    ///
    /// Once only (a second call does nothing). Without `backend`, safe while sessions run: the views
    /// move to the copies only once every byte is in place, the copies hold the same bytes, and the
    /// mapping stays mapped.
    pub fn copyWeights(self: *Model, with_ffn: bool, threads: usize, backend: ?*const Backend) error{OutOfMemory}!void {
        if (self.weights_copy.len != 0) return;
        const tied = self.output.data == self.token_embd.data;
        const pieces = try self.allocator.alloc(CopyPiece, 3 + 9 * self.layers.len);
        defer self.allocator.free(pieces);
        var plan = CopyPlan{ .pieces = pieces };
        plan.view(&self.token_embd);
        if (!tied) plan.view(&self.output);
        plan.norm(&self.output_norm);
        for (self.layers) |*layer| {
            plan.norm(&layer.attn_norm);
            plan.norm(&layer.ffn_norm);
            inline for (.{ "attn_q", "attn_k", "attn_v", "attn_output" }) |f| plan.view(&@field(layer.*, f));
            if (with_ffn) {
                inline for (ffn_matrices) |f| plan.view(&@field(layer.*, f));
            }
        }
        const dst = try self.allocator.alignedAlloc(u8, 64, plan.total);
        huge_pages.advise(dst);
        plan.copyAll(self.file.bytes, dst, @max(threads, 1));
        for (plan.pieces[0..plan.n]) |piece| piece.retarget(dst);
        if (backend) |b| {
            var pairs = RowPairs{};
            if (!tied) pairs.add(b, &self.output);
            for (self.layers) |*layer| {
                inline for (.{ "attn_q", "attn_k", "attn_v", "attn_output" }) |f| pairs.add(b, &@field(layer.*, f));
                if (with_ffn) {
                    inline for (ffn_matrices) |f| pairs.add(b, &@field(layer.*, f));
                }
            }
            pairs.repackAll(@max(threads, 1));
            self.row_pair_matrices = @intCast(pairs.n);
        }
        if (tied) self.output.data = self.token_embd.data;
        self.listMatrices();
        // Whatever was not copied (the FFNs, when offloaded) is not read from the mapping either:
        // drop every page.
        advise(self.file.bytes, self.file.bytes, .DONTNEED);
        self.weights_copy = dst;
        self.ffn_copied = with_ffn;
    }

    pub fn close(self: *Model) void {
        std.debug.assert(self.sessions.load(.acquire) == 0);
        const allocator = self.allocator;
        self.file.close();
        allocator.free(self.weights_copy);
        allocator.free(self.layers);
        allocator.free(self.matrices);
        allocator.destroy(self);
    }
};

/// The matrices of a copy to store as row pairs (kernels/dot.zig `repackRowPairs`), repacked in
/// place on several threads, each over its own share of the pairs.
const RowPairs = struct {
    views: [max_views]*WeightView = undefined,
    n: usize = 0,
    pairs: usize = 0,

    const max_views = 7 * 1024 + 1;
    /// Scratch per thread: a pair of rows (dim 8192 in Q8_0 takes 17 KiB).
    const max_pair_bytes = 64 * 1024;

    fn add(self: *RowPairs, backend: *const Backend, v: *WeightView) void {
        const t: DType = @enumFromInt(v.dtype);
        if (self.n == max_views or !kernels.dot.rowPairsFit(t, v.n_rows, v.n_cols) or 2 * v.row_bytes > max_pair_bytes) return;
        if (!backend.supports(.row_pairs, t)) return;
        self.views[self.n] = v;
        self.n += 1;
        self.pairs += v.n_rows / 2;
    }

    fn repackAll(self: *RowPairs, threads: usize) void {
        onThreads(threads, @as(*const RowPairs, self), repackShare);
        for (self.views[0..self.n]) |v| v.layout = @intFromEnum(api.Layout.row_pairs);
    }

    /// Pairs [k * pairs / n, (k + 1) * pairs / n) counted across the views in order.
    fn repackShare(self: *const RowPairs, k: usize, n: usize) void {
        var scratch: [max_pair_bytes]u8 = undefined;
        const lo = self.pairs * k / n;
        const hi = self.pairs * (k + 1) / n;
        var first: usize = 0;
        for (self.views[0..self.n]) |v| {
            const count = v.n_rows / 2;
            const a = @max(lo, first);
            const b = @min(hi, first + count);
            if (a < b) kernels.dot.repackRowPairs(@enumFromInt(v.dtype), @constCast(v.data), v.row_bytes, 2 * (a - first), 2 * (b - first), &scratch);
            first += count;
        }
    }
};

/// Runs `work(context, k, n)` for every share k of n = min(threads, 64), on n threads: the caller
/// and n - 1 it starts for the call (loading a model has no thread pool yet). A thread that cannot
/// be started leaves its share to the caller.
fn onThreads(threads: usize, context: anytype, comptime work: fn (@TypeOf(context), usize, usize) void) void {
    const n = std.math.clamp(threads, 1, 64);
    var workers: [64]?std.Thread = .{null} ** 64;
    for (1..n) |k| workers[k] = std.Thread.spawn(.{}, work, .{ context, k, n }) catch null;
    work(context, 0, n);
    for (1..n) |k| {
        if (workers[k]) |t| t.join() else work(context, k, n);
    }
}

/// The bytes a view spans in its mapping or copy.
fn viewBytes(v: WeightView) []const u8 {
    return v.data[0 .. v.row_bytes * v.n_rows];
}

/// One weight to copy: its bytes in the mapping, where they go in the copy, and what points at them.
const CopyPiece = struct {
    src: []const u8,
    at: usize,
    target: union(enum) { view: *WeightView, norm: *[]const f32 },

    /// Points the weight at its copy in `dst`.
    fn retarget(self: CopyPiece, dst: []align(64) u8) void {
        const copy = dst[self.at..][0..self.src.len];
        switch (self.target) {
            .view => |v| v.data = copy.ptr,
            .norm => |n| n.* = @as([*]const f32, @ptrCast(@alignCast(copy.ptr)))[0..n.len],
        }
    }
};

/// What `Model.copyWeights` copies, in order, each piece 64-byte aligned in the copy.
const CopyPlan = struct {
    pieces: []CopyPiece,
    n: usize = 0,
    total: usize = 0,

    fn add(self: *CopyPlan, src: []const u8, target: @FieldType(CopyPiece, "target")) void {
        self.pieces[self.n] = .{ .src = src, .at = self.total, .target = target };
        self.n += 1;
        self.total += std.mem.alignForward(usize, src.len, 64);
    }

    fn view(self: *CopyPlan, v: *WeightView) void {
        self.add(viewBytes(v.*), .{ .view = v });
    }

    fn norm(self: *CopyPlan, n: *[]const f32) void {
        self.add(std.mem.sliceAsBytes(n.*), .{ .norm = n });
    }

    /// Copies every piece into `dst` on `threads` threads, each taking a contiguous share of the
    /// copy's bytes, split on 2 MiB boundaries so that each huge page is faulted by one thread.
    fn copyAll(self: *const CopyPlan, file: []align(std.heap.page_size_min) const u8, dst: []align(64) u8, threads: usize) void {
        const Copy = struct {
            plan: *const CopyPlan,
            file: []align(std.heap.page_size_min) const u8,
            dst: []align(64) u8,

            fn share(c: *const @This(), k: usize, n: usize) void {
                const r = c.plan.share(k, n);
                c.plan.copyRange(c.file, c.dst, r.lo, r.hi);
            }
        };
        const copy = Copy{ .plan = self, .file = file, .dst = dst };
        onThreads(threads, &copy, Copy.share);
    }

    fn share(self: *const CopyPlan, k: usize, n: usize) struct { lo: usize, hi: usize } {
        const huge = 2 << 20;
        const cut = struct {
            fn at(total: usize, i: usize, count: usize) usize {
                return if (i == count) total else @min(total, std.mem.alignForward(usize, total * i / count, huge));
            }
        }.at;
        return .{ .lo = cut(self.total, k, n), .hi = cut(self.total, k + 1, n) };
    }

    /// Copies the bytes of the copy in [lo, hi): the parts of the pieces that fall there. Asks for
    /// each source range at once (a cold page cache is then filled by readahead, not fault by fault)
    /// and drops it from the mapping after, so the resident set never holds both.
    fn copyRange(self: *const CopyPlan, file: []align(std.heap.page_size_min) const u8, dst: []align(64) u8, lo: usize, hi: usize) void {
        for (self.pieces[0..self.n]) |p| {
            const a = @max(lo, p.at);
            const b = @min(hi, p.at + p.src.len);
            if (a >= b) continue;
            const src = p.src[a - p.at .. b - p.at];
            advise(file, src, .WILLNEED);
            @memcpy(dst[a..b], src);
            advise(file, src, .DONTNEED);
        }
    }
};

/// madvise over the whole pages inside `range` (a part of the mapping `file`). DONTNEED drops them
/// from this process's page tables: the page cache may keep them, but they no longer count in the
/// resident set. WILLNEED starts reading them.
fn advise(file: []align(std.heap.page_size_min) const u8, range: []const u8, comptime how: enum { WILLNEED, DONTNEED }) void {
    if (@import("builtin").os.tag != .linux) return;
    const page = std.heap.pageSize();
    const begin = std.mem.alignForward(usize, @intFromPtr(range.ptr), page);
    const end = std.mem.alignBackward(usize, @intFromPtr(range.ptr) + range.len, page);
    if (end <= begin or begin < @intFromPtr(file.ptr) or end > @intFromPtr(file.ptr) + file.len) return;
    const ptr: [*]align(std.heap.page_size_min) u8 = @ptrFromInt(begin);
    std.posix.madvise(ptr, end - begin, @field(std.posix.MADV, @tagName(how))) catch {};
}

/// Why opening failed; the sink holds the message. `status` maps each to the FFI status code.
pub const OpenError = error{ BadModel, Unsupported, InvalidArgument, AbiMismatch, OutOfMemory, Io };
const ModelError = OpenError;

pub fn status(e: OpenError) Status {
    return switch (e) {
        error.BadModel => .bad_model,
        error.Unsupported => .unsupported,
        error.InvalidArgument => .invalid_argument,
        error.AbiMismatch => .abi_mismatch,
        error.OutOfMemory => .out_of_memory,
        error.Io => .io,
    };
}

fn outOfMemory(sink: *ErrorSink) error{OutOfMemory} {
    _ = sink.fail(.out_of_memory, "out of memory creating the model", .{});
    return error.OutOfMemory;
}

fn checkHparams(md: *const desc.ModelDesc, sink: *ErrorSink) ModelError!Hparams {
    const Check = struct {
        fn range(s: *ErrorSink, what: []const u8, value: u32, lo: u32, hi: u32) ModelError!void {
            if (value < lo or value > hi) {
                _ = s.fail(.bad_model, "hyperparameter {s} = {d} is outside [{d}, {d}]", .{ what, value, lo, hi });
                return error.BadModel;
            }
        }
    };
    try Check.range(sink, "dim", md.dim, 1, limits.dim);
    try Check.range(sink, "ffn_dim", md.ffn_dim, 1, limits.ffn_dim);
    try Check.range(sink, "n_heads", md.n_heads, 1, limits.heads);
    try Check.range(sink, "n_kv_heads", md.n_kv_heads, 1, md.n_heads);
    try Check.range(sink, "head_dim", md.head_dim, 2, limits.head_dim);
    try Check.range(sink, "vocab_size", md.vocab_size, 1, limits.vocab);
    try Check.range(sink, "rope_dim", md.rope_dim, 0, md.head_dim);
    if (md.n_heads % md.n_kv_heads != 0) {
        _ = sink.fail(.bad_model, "n_heads {d} is not a multiple of n_kv_heads {d}", .{ md.n_heads, md.n_kv_heads });
        return error.BadModel;
    }
    if (md.head_dim % 2 != 0 or md.rope_dim % 2 != 0) {
        _ = sink.fail(.bad_model, "head_dim {d} and rope_dim {d} must be even", .{ md.head_dim, md.rope_dim });
        return error.BadModel;
    }
    const rope_layout = std.meta.intToEnum(desc.RopeLayout, md.rope_layout) catch {
        _ = sink.fail(.invalid_argument, "unknown rope layout {d}", .{md.rope_layout});
        return error.InvalidArgument;
    };
    const activation = std.meta.intToEnum(desc.Activation, md.activation) catch {
        _ = sink.fail(.invalid_argument, "unknown FFN activation {d}", .{md.activation});
        return error.InvalidArgument;
    };
    if (!(md.rms_eps > 0 and md.rms_eps < 1) or !(md.rope_theta > 0) or !std.math.isFinite(md.rope_theta)) {
        _ = sink.fail(.bad_model, "rms_eps {d} or rope_theta {d} is not usable", .{ md.rms_eps, md.rope_theta });
        return error.BadModel;
    }
    return .{
        .n_layers = md.n_layers,
        .dim = md.dim,
        .ffn_dim = md.ffn_dim,
        .n_heads = md.n_heads,
        .n_kv_heads = md.n_kv_heads,
        .head_dim = md.head_dim,
        .vocab_size = md.vocab_size,
        .ctx_train = md.ctx_train,
        .rope_dim = md.rope_dim,
        .rope_layout = rope_layout,
        .activation = activation,
        .rope_theta = md.rope_theta,
        .rms_eps = md.rms_eps,
    };
}

/// Checks tensor descriptions against the mapped file; every failure names the tensor.
pub const Validator = struct {
    file: []const u8,
    path: []const u8,
    sink: *ErrorSink,

    pub fn matrix(self: *Validator, t: *const desc.TensorDesc, rows: usize, cols: usize) ModelError!WeightView {
        const name = t.nameSlice();
        if (t.n_dims != 2 or t.ne[0] != cols or t.ne[1] != rows) {
            _ = self.sink.fail(.bad_model, "tensor '{s}' in '{s}' has shape [{d}, {d}] ({d} dims), expected [{d}, {d}]", .{ name, self.path, t.ne[0], t.ne[1], t.n_dims, cols, rows });
            return error.BadModel;
        }
        const dtype: DType = @enumFromInt(t.dtype);
        if (!dtype.isWeightType()) {
            _ = self.sink.fail(.unsupported, "tensor '{s}' in '{s}' has type {s} (id {d}), which this build cannot compute with", .{ name, self.path, dtype.name(), t.dtype });
            return error.Unsupported;
        }
        const row_bytes = dtype.rowBytes(cols) orelse {
            _ = self.sink.fail(.unsupported, "tensor '{s}': rows of {d} elements are not a whole number of {s} blocks", .{ name, cols, dtype.name() });
            return error.Unsupported;
        };
        try self.inFile(t, row_bytes * rows);
        return .{ .data = self.file.ptr + t.offset, .row_bytes = row_bytes, .n_cols = cols, .n_rows = rows, .dtype = t.dtype };
    }

    pub fn norm(self: *Validator, t: *const desc.TensorDesc, n: usize) ModelError![]const f32 {
        const name = t.nameSlice();
        if (t.n_dims != 1 or t.ne[0] != n) {
            _ = self.sink.fail(.bad_model, "tensor '{s}' in '{s}' has {d} dims [{d}, ...], expected a vector of {d}", .{ name, self.path, t.n_dims, t.ne[0], n });
            return error.BadModel;
        }
        if (@as(DType, @enumFromInt(t.dtype)) != .f32) {
            _ = self.sink.fail(.unsupported, "norm tensor '{s}' has type id {d}; only f32 norms are supported", .{ name, t.dtype });
            return error.Unsupported;
        }
        if (t.offset % 4 != 0) {
            _ = self.sink.fail(.bad_model, "tensor '{s}' data offset {d} is not 4-byte aligned", .{ name, t.offset });
            return error.BadModel;
        }
        try self.inFile(t, n * 4);
        const ptr: [*]const f32 = @ptrCast(@alignCast(self.file.ptr + t.offset));
        return ptr[0..n];
    }

    fn inFile(self: *Validator, t: *const desc.TensorDesc, n_bytes: usize) ModelError!void {
        if (t.offset > self.file.len or n_bytes > self.file.len - t.offset) {
            _ = self.sink.fail(.bad_model, "tensor '{s}' spans bytes [{d}, {d}) but '{s}' is {d} bytes", .{ t.nameSlice(), t.offset, t.offset +| n_bytes, self.path, self.file.len });
            return error.BadModel;
        }
    }
};

test "CopyPlan.copyAll copies every piece whole, for any thread count" {
    const gpa = std.testing.allocator;
    const page = std.heap.pageSize();
    // A stand-in for the mapping: anonymous memory, which DONTNEED zeroes after each range is
    // copied, so it is refilled before every round.
    const file_len = 9 << 20;
    const file = try gpa.alignedAlloc(u8, std.heap.page_size_min, file_len);
    defer gpa.free(file);
    std.debug.assert(file_len % page == 0);
    // Pieces of odd sizes and places, some spanning 2 MiB boundaries of the copy.
    const spans = [_][2]usize{ .{ 0, 3 << 20 }, .{ (3 << 20) + 17, 1234 }, .{ 4 << 20, (2 << 20) + 4099 }, .{ 7 << 20, 4096 }, .{ (7 << 20) + 5000, (2 << 20) - 5000 } };
    var views: [spans.len]WeightView = undefined;
    for ([_]usize{ 1, 2, 3, 5 }) |threads| {
        var prng = std.Random.DefaultPrng.init(threads);
        prng.random().bytes(file);
        const want = try gpa.dupe(u8, file);
        defer gpa.free(want);
        var pieces: [spans.len]CopyPiece = undefined;
        var plan = CopyPlan{ .pieces = &pieces };
        for (spans, &views) |sp, *v| {
            v.* = .{ .data = file.ptr + sp[0], .row_bytes = sp[1], .n_cols = sp[1], .n_rows = 1, .dtype = 0 };
            plan.view(v);
        }
        const dst = try gpa.alignedAlloc(u8, 64, plan.total);
        defer gpa.free(dst);
        plan.copyAll(file, dst, threads);
        for (plan.pieces[0..plan.n]) |p| p.retarget(dst);
        for (spans, views) |sp, v| try std.testing.expectEqualSlices(u8, want[sp[0]..][0..sp[1]], v.data[0..sp[1]]);
    }
}
