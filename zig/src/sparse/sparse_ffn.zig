//! The sparse FFN of one token in one layer:
//!
//! 1. choose candidate neurons: "oracle" computes the whole gate and keeps the neurons that fire
//!    (ReLU: gate > 0; SwiGLU: |silu(gate)| above the layer's CATS threshold); "predictor" runs the
//!    low-rank predictor (score = fc2 · relu(fc1 · x)) and keeps scores >= the layer's threshold;
//! 2. group them into clusters of `cluster_size` consecutive neurons in the hot-first order;
//! 3. per cluster, on the thread pool: gate and up rows of the candidates and the activation, which
//!    leaves each cluster's firing neurons and their outputs h at the front of its range;
//! 4. y = sum of h * (the neuron's transposed down row) over the firing neurons in position order,
//!    one column range per thread (down_order.zig: the order makes the offloaded path, and any
//!    thread count, give bitwise the same y).
//!
//! Statistics per layer: candidates, active neurons, clusters, bytes read, the time of steps 1-2, 3
//! and 4; and, on every `verify_every`-th token, the true active set (the whole gate computed) for
//! predictor recall.
const std = @import("std");
const kernels = @import("kernels");
const DType = kernels.DType;
const ops = kernels.ops;
const WeightView = @import("backend_api").WeightView;
const Session = @import("../engine/session.zig").Session;
const SparseModel = @import("sparse_model.zig").SparseModel;
const Status = @import("../status.zig").Status;
const offload_ffn = @import("../offload/offload_ffn.zig");
const down_order = @import("down_order.zig");

pub const Mode = enum(u32) { dense = 0, oracle = 1, predictor = 2 };

/// Settings of a session's sparse FFNs, as TypeScript passes them (core/sparse_desc.ts).
pub const SparseConfig = extern struct {
    mode: u32,
    /// Neurons per cluster: the unit of work handed to a thread (and, offloaded, of reads).
    cluster_size: u32,
    /// Compute the true active set every N-th token to measure recall; 0 = never.
    verify_every: u32,
    /// Bit 0: batches (prompts, evaluation) take the sparse path token by token, not the dense one.
    flags: u32,
};

pub const flag_sparse_batches: u32 = 1;

/// Counters of one layer, summed over tokens (exported as u64s, in this order).
pub const LayerStats = extern struct {
    tokens: u64 = 0,
    /// Neurons whose gate/up rows were computed.
    candidates: u64 = 0,
    /// Neurons whose output was not zero (their down rows were read).
    active: u64 = 0,
    clusters: u64 = 0,
    /// Weight bytes read by this layer's FFN (predictor included).
    bytes: u64 = 0,
    verified_tokens: u64 = 0,
    /// On verified tokens: neurons truly active, and how many of those were candidates.
    true_active: u64 = 0,
    true_positive: u64 = 0,
    /// Offloaded FFNs: candidates found in the hot region, in the cold region, read from disk; bytes
    /// read; nanoseconds waiting on reads with no thread computing (I/O on the critical path).
    hot_hits: u64 = 0,
    cold_hits: u64 = 0,
    misses: u64 = 0,
    read_bytes: u64 = 0,
    io_stall_ns: u64 = 0,
    /// Wall-clock nanoseconds of the token's phases (see `sparseFfn`): choosing the candidates
    /// (predictor or whole gate, the scan into clusters); their gate and up rows (offloaded: the
    /// whole read-and-compute pipeline, down columns included); the down columns (in memory only);
    /// and, on verified tokens, the whole gate and its scan that only measure recall.
    select_ns: u64 = 0,
    rows_ns: u64 = 0,
    down_ns: u64 = 0,
    verify_ns: u64 = 0,
};

pub const stats_fields = @typeInfo(LayerStats).@"struct".fields.len;

/// Per-session scratch of the sparse path, allocated when sparse FFNs are attached.
pub const Scratch = struct {
    scores: []f32, // (ffn) predictor scores in hot-first order, or the whole gate in model order (oracle mode)
    truth: []f32, // (ffn) the whole gate, on verified tokens
    hidden: []f32, // (max_rank)
    g: []f32, // (ffn) gate of the candidates, in selection order
    u: []f32, // (ffn)
    sel_model: []u32, // (ffn) candidates' indices in the model, in hot-first order
    sel_perm: []u32, // (ffn) the same candidates' positions in the hot-first order
    cluster_start: []u32, // (ffn / cluster_size + 2) offsets into sel_*
    cluster_active: []u32, // (ffn / cluster_size + 2) firing neurons per cluster, at its range's front
    sel_bits: []u64, // (ceil(ffn / 64)) selected hot-first positions, one bit each
    y: []f32, // (dim) the FFN's output
    act: []align(64) u8, // prepared x for the gate rows
    act_up: []align(64) u8, // prepared x for the up rows, when their format differs
    active_count: []u64, // (threads)
    up_rows: []u64, // (threads) up rows read: candidates whose gate fired
    stats: []LayerStats, // (layers)
};

/// Step 3 for in-memory neurons: each item is a cluster.
const Job = struct {
    s: *Session,
    gate: *const WeightView,
    up: *const WeightView,
    act_up: [*]const u8,
    gate_known: bool,
    cats: f32,

    fn run(ctx: *anyopaque, begin: usize, end: usize, thread: usize) void {
        const self: *Job = @ptrCast(@alignCast(ctx));
        const s = self.s;
        const sc = &s.sparse_scratch.?;
        const hp = s.model.hp;
        var active: u64 = 0;
        var up_rows: u64 = 0;
        for (begin..end) |c| {
            const a = sc.cluster_start[c];
            const b = sc.cluster_start[c + 1];
            // Gate and up rows are read from the store, in hot-first order (positions); the model's
            // index is what oracle mode's precomputed gate is indexed by.
            const pos = sc.sel_perm[a..b];
            const g = sc.g[a..b];
            const u = sc.u[a..b];
            if (self.gate_known) {
                for (sc.sel_model[a..b], g) |i, *gv| gv.* = sc.scores[i];
            } else {
                s.backend.sparseMatvec(self.gate, sc.act.ptr, pos, g.ptr);
            }
            // A neuron whose gate does not fire outputs zero whatever its up row says (ReLU, dReLU,
            // and SwiGLU under the CATS cut): compact the firing ones to the front of the cluster's
            // range and read up rows for those only (a quarter of a predictor's candidates are misses).
            var m: usize = 0;
            for (0..pos.len) |j| {
                if (!gateFires(hp.activation, g[j], self.cats)) continue;
                pos[m] = pos[j];
                g[m] = g[j];
                m += 1;
            }
            s.backend.sparseMatvec(self.up, self.act_up, pos[0..m], u.ptr);
            up_rows += m;
            var n: usize = 0;
            for (0..m) |j| {
                const h = activate(hp.activation, g[j], u[j], self.cats);
                if (h == 0) continue;
                pos[n] = pos[j];
                g[n] = h;
                n += 1;
            }
            sc.cluster_active[c] = @intCast(n);
            active += n;
        }
        sc.active_count[thread] += active;
        sc.up_rows[thread] += up_rows;
    }
};

/// The predictor's scores, fc2 · hidden (+ bias), on the pool in chunks of whole 64-row groups, each
/// chunk compared with the layer's threshold as soon as it is computed, into the words of the
/// selection bitmap it covers (the scores come out in hot-first order: sparse_model.zig permutes
/// fc2's rows). The scan ran on the calling thread after the product, while the others waited:
/// 0.6 ms of a 61 ms 7B-shape token.
const ScoreJob = struct {
    s: *Session,
    fc2: *const WeightView,
    act: [*]const u8,
    bias: ?[]const f32,
    threshold: f32,

    fn run(ctx: *anyopaque, begin: usize, end: usize, _: usize) void {
        const self: *ScoreJob = @ptrCast(@alignCast(ctx));
        const sc = &self.s.sparse_scratch.?;
        self.s.backend.matvec(self.fc2, self.act, sc.scores.ptr, begin, end);
        const scores = sc.scores[begin..end];
        if (self.bias) |b| {
            for (scores, b[begin..end]) |*sv, bv| sv.* += bv;
        }
        const V = @Vector(8, f32);
        const thr: V = @splat(self.threshold);
        var word_at = begin;
        while (word_at < end) : (word_at += 64) {
            const n = @min(64, end - word_at);
            var word: u64 = 0;
            var k: usize = 0;
            while (k + 8 <= n) : (k += 8) {
                const v: V = sc.scores[word_at + k ..][0..8].*;
                const mask: u8 = @bitCast(v >= thr);
                word |= @as(u64, mask) << @intCast(k);
            }
            while (k < n) : (k += 1) {
                if (sc.scores[word_at + k] >= self.threshold) word |= @as(u64, 1) << @intCast(k);
            }
            sc.sel_bits[word_at / 64] = word;
        }
    }
};

/// The monotonic clock of the phase counters; null where there is none (they then stay 0). A read
/// costs ~20 ns, 4 per layer and token.
inline fn clock() ?std.time.Instant {
    return std.time.Instant.now() catch null;
}

inline fn elapsed(from: ?std.time.Instant, to: ?std.time.Instant) u64 {
    return if (from != null and to != null) to.?.since(from.?) else 0;
}

/// Appends hot-first position `k` to the selection.
inline fn select(sc: *Scratch, perm: []const u32, n_sel: *usize, k: usize) void {
    sc.sel_perm[n_sel.*] = @intCast(k);
    sc.sel_model[n_sel.*] = perm[k];
    n_sel.* += 1;
}

inline fn mark(bits: []u64, k: u32) void {
    bits[k >> 6] |= @as(u64, 1) << @intCast(k & 63);
}

inline fn silu(x: f32) f32 {
    return x / (1.0 + @exp(-x));
}

/// The FFN hidden value of one neuron, with the CATS cut for SwiGLU (|silu(g)| <= cats -> 0).
pub inline fn activate(kind: ops.Activation, g: f32, u: f32, cats: f32) f32 {
    return switch (kind) {
        .swiglu => blk: {
            const sg = silu(g);
            break :blk if (@abs(sg) > cats) sg * u else 0;
        },
        .relu => if (g > 0) g * u else 0,
        .drelu => if (g > 0 and u > 0) g * u else 0,
    };
}

/// Whether a neuron fires, judged from its gate alone (dReLU's up sign is checked when computed).
pub inline fn gateFires(kind: ops.Activation, g: f32, cats: f32) bool {
    return switch (kind) {
        .swiglu => @abs(silu(g)) > cats,
        .relu, .drelu => g > 0,
    };
}

/// out = FFN(x) for one token of layer `l`, sparsely. `x` and `out` may alias. Fails only when the
/// neurons are offloaded and a read fails (the session's sink says which).
pub fn sparseFfn(s: *Session, l: usize, x: []const f32, out: []f32, dense: anytype) Status {
    const sm = s.sparse.?;
    const sc = &s.sparse_scratch.?;
    const cfg = s.sparse_config;
    const hp = s.model.hp;
    const ffn = hp.ffn_dim;
    const layer = &s.model.layers[l];
    const ls = sm.layers[l];
    const perm = sm.order(l);
    const st = &sc.stats[l];
    const mode: Mode = @enumFromInt(cfg.mode);
    const use_predictor = mode == .predictor and ls.predictor != null;
    st.tokens += 1;
    const t_start = clock();
    const verify = cfg.verify_every != 0 and (st.tokens % cfg.verify_every == 0);

    // 1. candidates
    var bytes: u64 = 0;
    if (use_predictor) {
        const p = ls.predictor.?;
        dense.matvec(s, &p.fc1, x, sc.hidden[0..p.fc1.n_rows]);
        if (!p.linear) {
            for (sc.hidden[0..p.fc1.n_rows]) |*h| h.* = @max(h.*, 0);
        }
        const hidden = sc.hidden[0..p.fc1.n_rows];
        s.backend.prepareActivation(@enumFromInt(p.fc2.dtype), hidden, sc.act.ptr);
        var job = ScoreJob{ .s = s, .fc2 = &p.fc2, .act = sc.act.ptr, .bias = p.bias, .threshold = ls.score_threshold };
        s.pool.runGuided(&job, ScoreJob.run, ffn, 64);
        bytes += p.fc1.row_bytes * p.fc1.n_rows + p.fc2.row_bytes * p.fc2.n_rows;
    }
    const gate_known = !use_predictor;
    // Time spent only to measure recall (the whole gate beside the predictor, and its scan below).
    var verify_ns: u64 = 0;
    if (gate_known or verify) {
        const t_gate = clock();
        dense.matvec(s, &layer.ffn_gate, x, if (gate_known) sc.scores else sc.truth);
        bytes += layer.ffn_gate.row_bytes * ffn;
        if (!gate_known) verify_ns += elapsed(t_gate, clock());
    }

    // 2. selection in hot-first order, grouped into clusters of `cluster_size` selected neurons
    // (not of that many positions: 90% of the positions of a cold range are not selected, and a
    // cluster of two rows pays a pass over y per row instead of per group of rows).
    const k_size: usize = cfg.cluster_size;
    const inv = sm.position(l);
    var n_sel: usize = 0;
    if (!use_predictor) {
        // The gate is in model order: scanned sequentially into the bitmap of positions (walking
        // the positions and looking each value up took 1.2-1.5 ms per 7B token).
        const bits = sc.sel_bits;
        @memset(bits, 0);
        for (0..ffn) |i| {
            if (gateFires(hp.activation, sc.scores[i], ls.cats_threshold)) mark(bits, inv[i]);
        }
    }
    // The bitmap read in order lists the selection in hot-first order.
    for (sc.sel_bits, 0..) |word, wi| {
        var w = word;
        while (w != 0) : (w &= w - 1) select(sc, perm, &n_sel, wi * 64 + @ctz(w));
    }
    const n_clusters = (n_sel + k_size - 1) / k_size;
    for (0..n_clusters + 1) |c| sc.cluster_start[c] = @intCast(@min(c * k_size, n_sel));
    if (verify) {
        const t_truth = clock();
        defer verify_ns += elapsed(t_truth, clock());
        // Ground truth: neurons the whole gate says fire (for dReLU, the up sign is not known
        // without computing up for every neuron, so recall is measured against the gate).
        var true_active: u64 = 0;
        var hit: u64 = 0;
        for (0..ffn) |i| {
            if (!gateFires(hp.activation, sc.truth[i], ls.cats_threshold)) continue;
            true_active += 1;
            if (!use_predictor or sc.scores[inv[i]] >= ls.score_threshold) hit += 1;
        }
        st.verified_tokens += 1;
        st.true_active += true_active;
        st.true_positive += hit;
    }

    const t_selected = clock();
    st.select_ns += elapsed(t_start, t_selected) -| verify_ns;
    st.verify_ns += verify_ns;

    // 3-4. clusters on the pool, then the down columns (in memory), or the I/O-compute pipeline
    // (offloaded), into y
    const gate_dtype: DType = @enumFromInt(if (sm.offload) |o| o.gate.dtype else layer.ffn_gate.dtype);
    const up_dtype: DType = @enumFromInt(if (sm.offload) |o| o.up.dtype else layer.ffn_up.dtype);
    const gate_fmt = s.backend.activationFormat(gate_dtype);
    const up_fmt = s.backend.activationFormat(up_dtype);
    s.backend.prepareActivation(gate_dtype, x, sc.act.ptr);
    const act_up = if (up_fmt == gate_fmt) sc.act.ptr else blk: {
        s.backend.prepareActivation(up_dtype, x, sc.act_up.ptr);
        break :blk sc.act_up.ptr;
    };
    @memset(sc.y, 0);
    @memset(sc.active_count, 0);
    @memset(sc.up_rows, 0);
    var down_row_bytes: u64 = undefined;
    if (sm.offload) |o| {
        var io = offload_ffn.IoCounters{};
        const status = offload_ffn.offloadFfn(s, o, &sm.offload_scratch.?, l, sc.sel_perm[0..n_sel], k_size, hp.activation, ls.cats_threshold, sc.act.ptr, act_up, sm.queue_depth, &io);
        st.hot_hits += io.hot_hits;
        st.cold_hits += io.cold_hits;
        st.misses += io.misses;
        st.read_bytes += io.read_bytes;
        st.io_stall_ns += io.stall_ns;
        st.rows_ns += elapsed(t_selected, clock());
        if (status != .ok) return status;
        // Per active neuron, the down column's bytes (a slot's row stride also spans gate and up).
        down_row_bytes = @as(DType, @enumFromInt(o.down.dtype)).rowBytes(hp.dim).?;
    } else {
        const ls_store = &sm.store.?.layers[l];
        var job = Job{ .s = s, .gate = &ls_store.gate, .up = &ls_store.up, .act_up = act_up, .gate_known = gate_known, .cats = ls.cats_threshold };
        // Guided: each thread takes runs of neighbouring clusters, whose rows lie near each other
        // in the hot-first store, rather than every other cluster. 7B-shape synthetic, one process
        // token by token against one cluster at a time: rows 12.9-13.3 -> 12.3-12.8 ms per token,
        // decode 1.004-1.021x in four runs.
        s.pool.runGuided(&job, Job.run, n_clusters, 1);
        // The clusters' firing neurons, one after the other: all of them in position order.
        var n_active: usize = 0;
        for (0..n_clusters) |c| {
            const a = sc.cluster_start[c];
            const n = sc.cluster_active[c];
            std.mem.copyForwards(u32, sc.sel_perm[n_active..][0..n], sc.sel_perm[a..][0..n]);
            std.mem.copyForwards(f32, sc.g[n_active..][0..n], sc.g[a..][0..n]);
            n_active += n;
        }
        const t_rows = clock();
        st.rows_ns += elapsed(t_selected, t_rows);
        const n_chunks = down_order.chunkCount(s.pool.threadCount());
        var down = down_order.WholeJob{ .backend = &s.backend, .down = &ls_store.down_t, .rows = sc.sel_perm[0..n_active], .coeffs = sc.g.ptr, .y = sc.y.ptr, .dim = hp.dim, .n_chunks = n_chunks };
        if (n_active > 0) s.pool.run(&down, down_order.WholeJob.run, n_chunks, 1);
        down_row_bytes = ls_store.down_t.row_bytes;
        st.down_ns += elapsed(t_rows, clock());
    }
    @memcpy(out, sc.y);

    var active: u64 = 0;
    for (sc.active_count) |a| active += a;
    // Up rows are computed for the candidates whose gate fired.
    var up_rows: u64 = 0;
    for (sc.up_rows) |r| up_rows += r;
    st.candidates += n_sel;
    st.active += active;
    st.clusters += n_clusters;
    if (!gate_known) bytes += n_sel * gate_dtype.rowBytes(hp.dim).?;
    bytes += up_rows * up_dtype.rowBytes(hp.dim).? + active * down_row_bytes;
    st.bytes += bytes;
    return .ok;
}
