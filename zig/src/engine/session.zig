//! A session: one sequence being generated on a model. Owns the KV cache, every scratch buffer the
//! forward pass needs, the thread pool and the backend binding. Everything is allocated here, at
//! creation; evaluating tokens allocates nothing.
const std = @import("std");
const Model = @import("model.zig").Model;
const Backend = @import("backend.zig").Backend;
const ThreadPool = @import("thread_pool.zig").ThreadPool;
const api = @import("backend_api");
const kernels = @import("kernels");
const DType = kernels.DType;
const ErrorSink = @import("../status.zig").ErrorSink;
const sparse_ffn = @import("../sparse/sparse_ffn.zig");
const SparseModel = @import("../sparse/sparse_model.zig").SparseModel;
const Capture = @import("../sparse/capture.zig").Capture;
const Status = @import("../status.zig").Status;

/// Options as TypeScript passes them (core/ffi.ts `SessionOptions`).
pub const SessionOptions = extern struct {
    /// Positions the KV cache holds.
    n_ctx: u32,
    /// Threads in all, the calling thread included.
    n_threads: u32,
    /// Most tokens evaluated in one batch (prompt chunks); decode uses 1.
    max_batch: u32,
    /// Bit 0: keep logits for every token of a batch, not only the last; bit 1: an f16 KV cache.
    flags: u32,
};

pub const flag_all_logits: u32 = 1;
/// Most position ranges one decoded token's attention is split into (forward.zig's attentionRanges).
pub const max_attention_ranges = 16;
/// Bit 1: keep keys and values in f16 (half the memory and the attention reads) instead of f32.
pub const flag_kv_f16: u32 = 2;

/// The KV cache: (layer, kv head, n_ctx, head_dim), so one head's positions lie one after the other
/// (see forward.zig's AttentionJob), in the element type the session was created with.
pub const KvCache = union(enum) {
    f32: KvPair(f32),
    f16: KvPair(f16),

    /// Bytes of keys and values together.
    pub fn bytes(self: KvCache) usize {
        return switch (self) {
            inline else => |c| (c.keys.len + c.values.len) * @sizeOf(@TypeOf(c.keys[0])),
        };
    }
};

pub fn KvPair(comptime T: type) type {
    return struct { keys: []T, values: []T };
}

/// Zeroed keys and values of `n` elements each.
fn allocKv(a: std.mem.Allocator, n: usize, f16_elems: bool) ?KvCache {
    return if (f16_elems) .{ .f16 = allocKvPair(f16, a, n) orelse return null } else .{ .f32 = allocKvPair(f32, a, n) orelse return null };
}

fn allocKvPair(comptime T: type, a: std.mem.Allocator, n: usize) ?KvPair(T) {
    const keys = a.alloc(T, n) catch return null;
    const values = a.alloc(T, n) catch {
        a.free(keys);
        return null;
    };
    @memset(keys, 0);
    @memset(values, 0);
    return .{ .keys = keys, .values = values };
}

fn freeKv(a: std.mem.Allocator, kv: KvCache) void {
    switch (kv) {
        inline else => |c| {
            a.free(c.keys);
            a.free(c.values);
        },
    }
}

/// Most distinct input formats one fused matmul job may need (q, k and v may differ in type).
pub const max_segments = 3;

pub const Session = struct {
    allocator: std.mem.Allocator,
    model: *Model,
    backend: Backend,
    pool: *ThreadPool,
    n_ctx: usize,
    max_batch: usize,
    all_logits: bool,
    /// Positions [0, kv_len) of the KV cache hold valid entries.
    kv_len: usize = 0,
    /// Set while an eval call runs; close and a second eval are refused meanwhile.
    busy: std.atomic.Value(bool) = std.atomic.Value(bool).init(false),
    /// Sparse FFNs, when attached (attachSparse); their scratch is allocated with them.
    sparse: ?*SparseModel = null,
    sparse_config: sparse_ffn.SparseConfig = .{ .mode = 0, .cluster_size = 16, .verify_every = 0, .flags = 0 },
    sparse_scratch: ?sparse_ffn.Scratch = null,
    /// Activation capture for calibration, when started (dense FFNs only).
    capture: ?*Capture = null,
    sink: ErrorSink = .{},

    kv: KvCache,

    // Activations for a batch of up to max_batch tokens; row t of each is token t.
    x: []f32, // (batch, dim) residual stream
    xb: []f32, // (batch, dim) normed input / branch output
    q: []f32, // (batch, q_dim)
    k: []f32, // (batch, kv_dim)
    v: []f32, // (batch, kv_dim)
    att_out: []f32, // (batch, q_dim)
    hb: []f32, // (batch, ffn_dim) gate, then the hidden activation
    hb2: []f32, // (batch, ffn_dim) up
    /// Prepared (quantized) inputs, one region per fused segment: (segment, batch, act_stride)
    act: []align(64) u8,
    act_stride: usize,
    /// Attention scores, one row of n_ctx per query head of a kv group, per thread:
    /// (thread, n_heads / n_kv_heads, n_ctx)
    scores: []f32,
    /// One decoded token's attention split over position ranges: each (kv head, range)'s unnormalized
    /// output, (n_kv_heads, ranges, group, head_dim), and its max and sum per query head.
    att_ranges_out: []f32,
    att_ranges: []kernels.attention.Partial,
    /// RoPE cos/sin of each batch position (ops.ropeAngles), computed once per eval for all layers:
    /// (batch, head_dim)
    rope_angles: []f32,
    /// Token ids of the batch to evaluate: TypeScript writes them here before calling eval, so no
    /// JS-owned memory is handed to a nonblocking call.
    tokens: []u32,
    /// (batch or 1, vocab)
    logits: []f32,

    /// Creates a session; on failure `sink` holds the message and `status_out` the status, and
    /// everything created so far (buffers, threads, the backend's context) is released.
    pub fn create(allocator: std.mem.Allocator, model: *Model, table: *const api.BackendApi, opts: SessionOptions, sink: *ErrorSink, status_out: *Status) error{Failed}!*Session {
        const hp = model.hp;
        if (opts.n_ctx == 0 or opts.n_ctx > 1 << 20)
            return fail(status_out, sink.fail(.invalid_argument, "context length {d} is outside [1, 1048576]", .{opts.n_ctx}));
        if (opts.n_threads == 0 or opts.n_threads > 256)
            return fail(status_out, sink.fail(.invalid_argument, "thread count {d} is outside [1, 256]", .{opts.n_threads}));
        if (opts.max_batch == 0 or opts.max_batch > 4096)
            return fail(status_out, sink.fail(.invalid_argument, "batch size {d} is outside [1, 4096]", .{opts.max_batch}));

        var backend = Backend.init(table, sink, status_out) catch return error.Failed;
        errdefer backend.deinit();
        if (checkBackendSupport(&backend, model, sink)) |s| return fail(status_out, s);

        const self = allocator.create(Session) catch return fail(status_out, oom(sink, 0));
        errdefer allocator.destroy(self);

        const b = opts.max_batch;
        const kv_elems = hp.n_layers * @as(usize, opts.n_ctx) * hp.kvDim();
        const widest_input = @max(hp.dim, @max(hp.qDim(), hp.ffn_dim));
        var act_stride: usize = 0;
        for (model.matrices) |w| act_stride = @max(act_stride, backend.activationBytes(@enumFromInt(w.dtype), widest_input));
        act_stride = std.mem.alignForward(usize, act_stride, 64);

        const kv_f16 = opts.flags & flag_kv_f16 != 0;
        const kv = allocKv(allocator, kv_elems, kv_f16) orelse return fail(status_out, oom(sink, kv_elems * @as(usize, if (kv_f16) 4 else 8)));
        errdefer freeKv(allocator, kv);
        const att_ranges = allocator.alloc(kernels.attention.Partial, max_attention_ranges * hp.n_heads) catch return fail(status_out, oom(sink, 0));
        errdefer allocator.free(att_ranges);
        var arena = Allocs{ .allocator = allocator };
        errdefer arena.freeAll();
        const all_logits = opts.flags & flag_all_logits != 0;
        self.* = .{
            .allocator = allocator,
            .model = model,
            .backend = backend,
            .pool = undefined,
            .n_ctx = opts.n_ctx,
            .max_batch = b,
            .all_logits = all_logits,
            .kv = kv,
            .x = arena.floats(b * hp.dim) orelse return fail(status_out, oom(sink, 0)),
            .xb = arena.floats(b * hp.dim) orelse return fail(status_out, oom(sink, 0)),
            .q = arena.floats(b * hp.qDim()) orelse return fail(status_out, oom(sink, 0)),
            .k = arena.floats(b * hp.kvDim()) orelse return fail(status_out, oom(sink, 0)),
            .v = arena.floats(b * hp.kvDim()) orelse return fail(status_out, oom(sink, 0)),
            .att_out = arena.floats(b * hp.qDim()) orelse return fail(status_out, oom(sink, 0)),
            .hb = arena.floats(b * hp.ffn_dim) orelse return fail(status_out, oom(sink, 0)),
            .hb2 = arena.floats(b * hp.ffn_dim) orelse return fail(status_out, oom(sink, 0)),
            .act = arena.bytes(max_segments * b * act_stride) orelse return fail(status_out, oom(sink, 0)),
            .act_stride = act_stride,
            .scores = arena.floats(@as(usize, opts.n_threads) * opts.n_ctx * (hp.n_heads / hp.n_kv_heads)) orelse return fail(status_out, oom(sink, 0)),
            .rope_angles = arena.floats(b * hp.head_dim) orelse return fail(status_out, oom(sink, 0)),
            .att_ranges_out = arena.floats(max_attention_ranges * hp.qDim()) orelse return fail(status_out, oom(sink, 0)),
            .att_ranges = att_ranges,
            .tokens = arena.words(b) orelse return fail(status_out, oom(sink, 0)),
            .logits = arena.floats(hp.vocab_size * (if (all_logits) b else 1)) orelse return fail(status_out, oom(sink, 0)),
        };
        self.pool = ThreadPool.init(allocator, opts.n_threads) catch |e|
            return fail(status_out, sink.fail(.internal, "cannot start {d} threads: {s}", .{ opts.n_threads, @errorName(e) }));
        _ = model.sessions.fetchAdd(1, .acq_rel);
        return self;
    }

    /// Attaches sparse FFNs (or detaches them, with null), allocating their scratch now so that
    /// evaluating still allocates nothing. Refused while an eval runs (checked by the caller).
    pub fn attachSparse(self: *Session, sm: ?*SparseModel, cfg: sparse_ffn.SparseConfig, sink: *ErrorSink) Status {
        if (sm) |m| {
            if (m.model != self.model) return sink.fail(.invalid_argument, "the sparse FFNs were built for another model", .{});
            _ = std.meta.intToEnum(sparse_ffn.Mode, cfg.mode) catch return sink.fail(.invalid_argument, "unknown sparse mode {d}", .{cfg.mode});
            if (cfg.cluster_size == 0 or cfg.cluster_size > self.model.hp.ffn_dim)
                return sink.fail(.invalid_argument, "cluster size {d} is outside [1, {d}]", .{ cfg.cluster_size, self.model.hp.ffn_dim });
            for (self.model.layers) |*l| {
                const row_t: DType = @enumFromInt(l.ffn_gate.dtype);
                if (!self.backend.supportsSparse(row_t, m.downType()))
                    return sink.fail(.unsupported, "backend '{s}' cannot run sparse FFNs on {s} rows with a {s} down projection", .{ self.backend.name(), row_t.name(), m.downType().name() });
            }
            if (m.offload != null) {
                // The dense path and the oracle read FFN weights from the mapped model, which an
                // offloaded model keeps on disk: only predicted neurons, only through the cache.
                if (cfg.mode != @intFromEnum(sparse_ffn.Mode.predictor))
                    return sink.fail(.invalid_argument, "offloaded FFNs run in predictor mode only", .{});
                if (cfg.verify_every != 0)
                    return sink.fail(.invalid_argument, "offloaded FFNs cannot verify recall (it reads every gate row); use the in-memory model", .{});
                if (m.users.load(.acquire) != 0 and self.sparse != m)
                    return sink.fail(.busy, "the offloaded neuron cache serves one session at a time; close the other session first", .{});
            }
        }
        self.detachSparse();
        const m = sm orelse return .ok;
        self.sparse_scratch = allocScratch(self, m.max_rank, cfg.cluster_size) catch
            return sink.fail(.out_of_memory, "out of memory allocating sparse FFN scratch", .{});
        self.sparse = m;
        self.sparse_config = cfg;
        // Offloaded: prompts go through the sparse path too (the dense one would read the FFN
        // weights from the mapped model file).
        if (m.offload != null) self.sparse_config.flags |= sparse_ffn.flag_sparse_batches;
        _ = m.users.fetchAdd(1, .acq_rel);
        return .ok;
    }

    fn detachSparse(self: *Session) void {
        if (self.sparse_scratch) |sc| freeScratch(self.allocator, sc);
        self.sparse_scratch = null;
        if (self.sparse) |m| _ = m.users.fetchSub(1, .acq_rel);
        self.sparse = null;
    }

    pub fn destroy(self: *Session) void {
        std.debug.assert(!self.busy.load(.acquire));
        self.detachSparse();
        if (self.capture) |c| c.destroy();
        self.pool.deinit();
        self.backend.deinit();
        const a = self.allocator;
        freeKv(a, self.kv);
        a.free(self.x);
        a.free(self.xb);
        a.free(self.q);
        a.free(self.k);
        a.free(self.v);
        a.free(self.att_out);
        a.free(self.hb);
        a.free(self.hb2);
        a.free(self.act);
        a.free(self.scores);
        a.free(self.rope_angles);
        a.free(self.att_ranges_out);
        a.free(self.att_ranges);
        a.free(self.tokens);
        a.free(self.logits);
        _ = self.model.sessions.fetchSub(1, .acq_rel);
        a.destroy(self);
    }

    /// Bytes this session allocated (KV cache and scratch), for memory reports.
    pub fn allocatedBytes(self: *const Session) usize {
        var n: usize = self.kv.bytes();
        inline for (.{ "x", "xb", "q", "k", "v", "att_out", "hb", "hb2", "scores", "rope_angles", "att_ranges_out", "logits" }) |f| n += @field(self, f).len * 4;
        n += self.att_ranges.len * @sizeOf(kernels.attention.Partial);
        return n + self.act.len + self.tokens.len * 4;
    }
};

fn fail(status_out: *Status, s: Status) error{Failed} {
    status_out.* = s;
    return error.Failed;
}

fn oom(sink: *ErrorSink, bytes: usize) Status {
    if (bytes > 0) return sink.fail(.out_of_memory, "out of memory allocating the KV cache ({d} bytes); lower the context length", .{bytes});
    return sink.fail(.out_of_memory, "out of memory allocating session buffers", .{});
}

fn allocScratch(s: *Session, max_rank: usize, cluster_size: usize) !sparse_ffn.Scratch {
    const a = s.allocator;
    const hp = s.model.hp;
    const ffn = hp.ffn_dim;
    const threads = s.pool.threadCount();
    var sc: sparse_ffn.Scratch = undefined;
    sc.scores = try a.alloc(f32, ffn);
    errdefer a.free(sc.scores);
    sc.truth = try a.alloc(f32, ffn);
    errdefer a.free(sc.truth);
    sc.hidden = try a.alloc(f32, @max(max_rank, 1));
    errdefer a.free(sc.hidden);
    sc.g = try a.alloc(f32, ffn);
    errdefer a.free(sc.g);
    sc.u = try a.alloc(f32, ffn);
    errdefer a.free(sc.u);
    sc.sel_model = try a.alloc(u32, ffn);
    errdefer a.free(sc.sel_model);
    sc.sel_perm = try a.alloc(u32, ffn);
    errdefer a.free(sc.sel_perm);
    sc.cluster_start = try a.alloc(u32, ffn / cluster_size + 2);
    errdefer a.free(sc.cluster_start);
    sc.cluster_active = try a.alloc(u32, ffn / cluster_size + 2);
    errdefer a.free(sc.cluster_active);
    sc.sel_bits = try a.alloc(u64, (ffn + 63) / 64);
    errdefer a.free(sc.sel_bits);
    sc.y = try a.alloc(f32, hp.dim);
    errdefer a.free(sc.y);
    sc.act = try a.alignedAlloc(u8, 64, s.act_stride);
    errdefer a.free(sc.act);
    sc.act_up = try a.alignedAlloc(u8, 64, s.act_stride);
    errdefer a.free(sc.act_up);
    sc.active_count = try a.alloc(u64, threads);
    errdefer a.free(sc.active_count);
    sc.up_rows = try a.alloc(u64, threads);
    errdefer a.free(sc.up_rows);
    sc.stats = try a.alloc(sparse_ffn.LayerStats, hp.n_layers);
    @memset(sc.stats, .{});
    return sc;
}

fn freeScratch(a: std.mem.Allocator, sc: sparse_ffn.Scratch) void {
    a.free(sc.scores);
    a.free(sc.truth);
    a.free(sc.hidden);
    a.free(sc.g);
    a.free(sc.u);
    a.free(sc.sel_model);
    a.free(sc.sel_perm);
    a.free(sc.cluster_start);
    a.free(sc.cluster_active);
    a.free(sc.sel_bits);
    a.free(sc.y);
    a.free(sc.act);
    a.free(sc.act_up);
    a.free(sc.active_count);
    a.free(sc.up_rows);
    a.free(sc.stats);
}

fn checkBackendSupport(backend: *const Backend, model: *const Model, sink: *ErrorSink) ?Status {
    for (model.matrices) |w| {
        const dt: DType = @enumFromInt(w.dtype);
        if (!backend.supports(.matvec, dt))
            return sink.fail(.unsupported, "backend '{s}' cannot compute with {s} weights", .{ backend.name(), dt.name() });
        if (w.layout == @intFromEnum(api.Layout.row_pairs) and !backend.supports(.row_pairs, dt))
            return sink.fail(.unsupported, "backend '{s}' cannot read {s} weights stored as row pairs (the model's weights were copied for another backend: load it with weights \"map\")", .{ backend.name(), dt.name() });
    }
    return null;
}

/// Allocation helper for Session.create: remembers what it allocated so a failure frees it all.
const Allocs = struct {
    allocator: std.mem.Allocator,
    f32s: [16][]f32 = undefined,
    n_f32s: usize = 0,
    u8s: ?[]align(64) u8 = null,
    u32s: ?[]u32 = null,

    fn floats(self: *Allocs, n: usize) ?[]f32 {
        const s = self.allocator.alloc(f32, n) catch return null;
        @memset(s, 0);
        self.f32s[self.n_f32s] = s;
        self.n_f32s += 1;
        return s;
    }
    fn bytes(self: *Allocs, n: usize) ?[]align(64) u8 {
        const s = self.allocator.alignedAlloc(u8, 64, n) catch return null;
        self.u8s = s;
        return s;
    }
    fn words(self: *Allocs, n: usize) ?[]u32 {
        const s = self.allocator.alloc(u32, n) catch return null;
        @memset(s, 0);
        self.u32s = s;
        return s;
    }
    fn freeAll(self: *Allocs) void {
        for (self.f32s[0..self.n_f32s]) |s| self.allocator.free(s);
        if (self.u8s) |s| self.allocator.free(s);
        if (self.u32s) |s| self.allocator.free(s);
    }
};
