//! The Llama forward pass over a batch of tokens at consecutive positions, reading top to bottom:
//! embed, then per layer attention and FFN with residuals, then the final norm and classifier.
//!
//! Matrix work goes to the backend, split over the session's thread pool by rows; matrices that read
//! the same input (q/k/v, gate/up) run as one fused job so each layer costs few pool dispatches.
const std = @import("std");
const Session = @import("session.zig").Session;
const max_segments = @import("session.zig").max_segments;
const max_attention_ranges = @import("session.zig").max_attention_ranges;
const Model = @import("model.zig").Model;
const WeightView = @import("backend_api").WeightView;
const kernels = @import("kernels");
const DType = kernels.DType;
const quant = kernels.quant;
const ops = kernels.ops;
const Status = @import("../status.zig").Status;
const sparse_ffn = @import("../sparse/sparse_ffn.zig");

/// The dense matrix-vector product, as the sparse path calls it (predictor, whole gate).
const DenseOps = struct {
    pub fn matvec(s: *Session, w: *const WeightView, x: []const f32, y: []f32) void {
        matmulFused(s, 1, x, w.n_cols, &.{.{ .w = w, .y = y, .y_stride = w.n_rows }});
    }
};

/// Evaluates `n_tokens` tokens (already in `s.tokens`) at positions pos0.. and leaves logits for the
/// last one (or for all, with the all-logits flag) in `s.logits`.
pub fn eval(s: *Session, n_tokens: usize, pos0: usize) Status {
    const m = s.model;
    const hp = m.hp;
    if (n_tokens == 0 or n_tokens > s.max_batch)
        return s.sink.fail(.invalid_argument, "batch of {d} tokens; this session takes 1 to {d}", .{ n_tokens, s.max_batch });
    if (pos0 > s.kv_len)
        return s.sink.fail(.invalid_argument, "position {d} skips past the {d} positions evaluated so far", .{ pos0, s.kv_len });
    if (pos0 + n_tokens > s.n_ctx)
        return s.sink.fail(.context_full, "positions {d}..{d} exceed the context length {d}", .{ pos0, pos0 + n_tokens, s.n_ctx });
    for (s.tokens[0..n_tokens]) |tok| {
        if (tok >= hp.vocab_size) return s.sink.fail(.invalid_argument, "token id {d} is outside the vocabulary of {d}", .{ tok, hp.vocab_size });
    }

    const dim = hp.dim;
    const q_dim = hp.qDim();
    const kv_dim = hp.kvDim();
    const ffn = hp.ffn_dim;
    const T = n_tokens;

    // x (T, dim) <- token embedding rows
    for (0..T) |t| {
        const row = m.token_embd.data + @as(usize, s.tokens[t]) * m.token_embd.row_bytes;
        quant.dequantizeRow(@enumFromInt(m.token_embd.dtype), row, s.x[t * dim ..][0..dim]);
    }

    // RoPE angles of each token's position, shared by every layer
    for (0..T) |t| ops.ropeAngles(pos0 + t, hp.rope_dim, hp.rope_theta, s.rope_angles[t * hp.head_dim ..][0..hp.head_dim]);

    for (m.layers, 0..) |*layer, l| {
        // ---- attention ----
        for (0..T) |t| ops.rmsnorm(s.xb[t * dim ..][0..dim], s.x[t * dim ..][0..dim], layer.attn_norm, hp.rms_eps);
        matmulFused(s, T, s.xb, dim, &.{
            .{ .w = &layer.attn_q, .y = s.q, .y_stride = q_dim },
            .{ .w = &layer.attn_k, .y = s.k, .y_stride = kv_dim },
            .{ .w = &layer.attn_v, .y = s.v, .y_stride = kv_dim },
        });
        const layer_kv = l * s.n_ctx * kv_dim;
        const hd = hp.head_dim;
        for (0..T) |t| {
            const pos = pos0 + t;
            const angles = s.rope_angles[t * hd ..][0..hd];
            ops.rope(s.q[t * q_dim ..][0..q_dim], hd, hp.rope_dim, hp.rope_layout, angles);
            ops.rope(s.k[t * kv_dim ..][0..kv_dim], hd, hp.rope_dim, hp.rope_layout, angles);
            for (0..hp.n_kv_heads) |kh| {
                const at = layer_kv + (kh * s.n_ctx + pos) * hd;
                switch (s.kv) {
                    inline else => |c| {
                        storeRow(c.keys[at..][0..hd], s.k[t * kv_dim + kh * hd ..][0..hd]);
                        storeRow(c.values[at..][0..hd], s.v[t * kv_dim + kh * hd ..][0..hd]);
                    },
                }
            }
        }
        const ranges = attentionRanges(T, pos0 + 1, hd);
        if (ranges > 1) {
            var att = SplitAttentionJob{ .s = s, .layer_kv = layer_kv, .n_pos = pos0 + 1, .ranges = ranges };
            s.pool.run(&att, SplitAttentionJob.run, hp.n_kv_heads * ranges, 1);
            const group = hp.n_heads / hp.n_kv_heads;
            for (0..hp.n_kv_heads) |kh| {
                const part = kh * ranges * group;
                kernels.attention.mergePartials(s.att_ranges_out[part * hd ..][0 .. ranges * group * hd], s.att_ranges[part..][0 .. ranges * group], ranges, hd, group, s.att_out[kh * group * hd ..][0 .. group * hd]);
            }
        } else {
            var att = AttentionJob{ .s = s, .layer_kv = layer_kv, .pos0 = pos0 };
            s.pool.run(&att, AttentionJob.run, T * hp.n_kv_heads, 1);
        }
        // x += Wo · attention
        matmulFused(s, T, s.att_out, q_dim, &.{.{ .w = &layer.attn_output, .y = s.xb, .y_stride = dim }});
        for (s.x[0 .. T * dim], s.xb[0 .. T * dim]) |*x, d| x.* += d;

        // ---- feed-forward ----
        for (0..T) |t| ops.rmsnorm(s.xb[t * dim ..][0..dim], s.x[t * dim ..][0..dim], layer.ffn_norm, hp.rms_eps);
        if (sparseFor(s, T)) {
            // One token at a time: each token has its own active neurons.
            for (0..T) |t| {
                const xt = s.xb[t * dim ..][0..dim];
                const status = sparse_ffn.sparseFfn(s, l, xt, xt, DenseOps);
                if (status != .ok) return status;
            }
        } else {
            matmulFused(s, T, s.xb, dim, &.{
                .{ .w = &layer.ffn_gate, .y = s.hb, .y_stride = ffn },
                .{ .w = &layer.ffn_up, .y = s.hb2, .y_stride = ffn },
            });
            if (s.capture) |c| c.record(l, T, s.xb, s.hb, s.hb2);
            for (0..T) |t| ops.ffnActivation(hp.activation, s.hb[t * ffn ..][0..ffn], s.hb2[t * ffn ..][0..ffn]);
            // W_down · hidden
            matmulFused(s, T, s.hb, ffn, &.{.{ .w = &layer.ffn_down, .y = s.xb, .y_stride = dim }});
        }
        // x += FFN output
        for (s.x[0 .. T * dim], s.xb[0 .. T * dim]) |*x, d| x.* += d;
    }
    s.kv_len = pos0 + T;
    if (s.capture) |c| c.commit(T);

    // ---- classifier: logits for the last token, or every token with all_logits ----
    const first: usize = if (s.all_logits) 0 else T - 1;
    const n_out = T - first;
    for (first..T) |t| ops.rmsnorm(s.xb[(t - first) * dim ..][0..dim], s.x[t * dim ..][0..dim], m.output_norm, hp.rms_eps);
    matmulFused(s, n_out, s.xb, dim, &.{.{ .w = &m.output, .y = s.logits, .y_stride = hp.vocab_size }});
    s.backend.sync();
    return .ok;
}

/// A key or value row into the cache, rounded to the cache's element type.
inline fn storeRow(dst: anytype, src: []const f32) void {
    if (@TypeOf(dst[0]) == f32) return @memcpy(dst, src);
    for (dst, src) |*d, x| d.* = @floatCast(x);
}

/// Whether this batch takes the sparse FFN path: sparse FFNs attached and not in dense mode, and the
/// batch is one token (decode) or the session asked for sparse batches (evaluation).
fn sparseFor(s: *Session, n_tokens: usize) bool {
    if (s.sparse == null or s.sparse_config.mode == @intFromEnum(sparse_ffn.Mode.dense)) return false;
    return n_tokens == 1 or s.sparse_config.flags & sparse_ffn.flag_sparse_batches != 0;
}

const Segment = struct {
    w: *const WeightView,
    /// Output rows of token t start at y[t * y_stride].
    y: []f32,
    y_stride: usize,
};

/// y_i = W_i · input for each segment, for `n_tokens` inputs of `in_dim` (rows of `input`), as one
/// thread-pool job over the concatenated rows of every W_i. Inputs are prepared (quantized) once per
/// distinct activation format.
fn matmulFused(s: *Session, n_tokens: usize, input: []const f32, in_dim: usize, segments: []const Segment) void {
    std.debug.assert(segments.len <= max_segments);
    var job = MatmulJob{ .s = s, .n_tokens = n_tokens };
    var act_of_format: [max_segments]?u32 = .{null} ** max_segments;
    for (segments, 0..) |seg, i| {
        std.debug.assert(seg.w.n_cols == in_dim);
        const wt: DType = @enumFromInt(seg.w.dtype);
        const fmt = s.backend.activationFormat(wt);
        // Reuse an earlier segment's prepared input when it has the same activation format.
        const slot = for (act_of_format[0..i], 0..) |f, j| {
            if (f == fmt) break j;
        } else blk: {
            act_of_format[i] = fmt;
            const region = s.act[i * s.max_batch * s.act_stride ..];
            for (0..n_tokens) |t| s.backend.prepareActivation(wt, input[t * in_dim ..][0..in_dim], region.ptr + t * s.act_stride);
            break :blk i;
        };
        job.segs[i] = .{ .seg = seg, .act = s.act[slot * s.max_batch * s.act_stride ..].ptr, .row_begin = job.total_rows };
        job.total_rows += seg.w.n_rows;
    }
    job.n_segs = segments.len;
    // Guided chunks of rows (long first, short last), multiples of 16 so that chunk edges stay off
    // shared cache lines of y.
    s.pool.runGuided(&job, MatmulJob.run, job.total_rows, 16);
}

const MatmulJob = struct {
    s: *Session,
    n_tokens: usize,
    segs: [max_segments]struct { seg: Segment, act: [*]const u8, row_begin: usize } = undefined,
    n_segs: usize = 0,
    total_rows: usize = 0,

    fn run(ctx: *anyopaque, begin: usize, end: usize, thread: usize) void {
        _ = thread;
        const self: *MatmulJob = @ptrCast(@alignCast(ctx));
        for (self.segs[0..self.n_segs]) |sg| {
            const lo = @max(begin, sg.row_begin);
            const hi = @min(end, sg.row_begin + sg.seg.w.n_rows);
            if (lo >= hi) continue;
            const r0 = lo - sg.row_begin;
            const r1 = hi - sg.row_begin;
            if (self.n_tokens == 1) {
                self.s.backend.matvec(sg.seg.w, sg.act, sg.seg.y.ptr, r0, r1);
            } else {
                self.s.backend.matmul(sg.seg.w, sg.act, self.s.act_stride, self.n_tokens, sg.seg.y.ptr, sg.seg.y_stride, r0, r1);
            }
        }
    }
};

/// Cached positions per range when one token's attention is split over position ranges.
const positions_per_range = 512;

/// How many position ranges one decoded token's attention is split into: one per 512 cached
/// positions, at most `max_attention_ranges`; 1 for batches (their tokens already make many items)
/// and for head sizes the split kernel does not take. With one item per kv head, a model with fewer
/// kv heads than threads, or a count that does not divide among them (SmolLM2-135M: 3 on 2 threads),
/// left threads idle for part of a long context's attention. SmolLM2-135M with ranges, against the
/// same build without, token by token in one process (f16 cache): 1.053x and 1.082x at positions
/// 4000-4064 (the two load orders), 1.014x at 1024-1088. The count depends on the position alone,
/// not on the thread count, so the logits stay the same for any number of threads.
fn attentionRanges(n_tokens: usize, n_pos: usize, hd: usize) usize {
    if (n_tokens != 1 or hd % 8 != 0) return 1;
    return @min(max_attention_ranges, (n_pos + positions_per_range - 1) / positions_per_range);
}

/// One (kv head, position range) per item, for a single token: each range's unnormalized output and
/// Partial go to the session's att_ranges_out / att_ranges, merged per head after the job.
const SplitAttentionJob = struct {
    s: *Session,
    layer_kv: usize,
    n_pos: usize,
    ranges: usize,

    fn run(ctx: *anyopaque, begin: usize, end: usize, thread: usize) void {
        const self: *SplitAttentionJob = @ptrCast(@alignCast(ctx));
        const s = self.s;
        const hp = s.model.hp;
        const hd = hp.head_dim;
        const group = hp.n_heads / hp.n_kv_heads;
        const inv_sqrt: f32 = @floatCast(1.0 / @sqrt(@as(f64, @floatFromInt(hd))));
        const scores_all = s.scores[thread * group * s.n_ctx ..][0 .. group * s.n_ctx];
        for (begin..end) |item| {
            const kh = item / self.ranges;
            const r = item % self.ranges;
            const a = self.n_pos * r / self.ranges;
            const b = self.n_pos * (r + 1) / self.ranges;
            const kv = self.layer_kv + (kh * s.n_ctx + a) * hd;
            const part = (kh * self.ranges + r) * group;
            switch (s.kv) {
                inline else => |c| {
                    const T = @TypeOf(c.keys[0]);
                    kernels.attention.attendGroupPartial(T, s.q[kh * group * hd ..][0 .. group * hd], c.keys[kv..][0 .. (b - a) * hd], c.values[kv..][0 .. (b - a) * hd], b - a, hd, group, inv_sqrt, scores_all, s.n_ctx, s.att_ranges_out[part * hd ..][0 .. group * hd], s.att_ranges[part..][0..group]);
                },
            }
        }
    }
};

/// Causal attention for one (token, kv head) pair per item: the query heads that share the kv head
/// (grouped-query: query head h reads kv head h / (n_heads / n_kv_heads)) against the cached
/// positions 0..pos, in kernels/attention.zig.
///
/// The cache keeps each kv head's positions one after the other, and an item reads each cached key
/// and value once for all its query heads. With the cache laid out position by position (a head's
/// vector every kv_dim floats: 4 KiB apart for 8 heads of 128) every position cost the prefetcher a
/// new page, and each query head read its group's keys and values again: on the 7B-shape synthetic
/// model, attention took 12.6% of sparse decode time over positions 32-282.
const AttentionJob = struct {
    s: *Session,
    layer_kv: usize,
    pos0: usize,

    fn run(ctx: *anyopaque, begin: usize, end: usize, thread: usize) void {
        const self: *AttentionJob = @ptrCast(@alignCast(ctx));
        const s = self.s;
        const hp = s.model.hp;
        const hd = hp.head_dim;
        const q_dim = hp.qDim();
        const group = hp.n_heads / hp.n_kv_heads;
        const inv_sqrt: f32 = @floatCast(1.0 / @sqrt(@as(f64, @floatFromInt(hd))));
        const scores_all = s.scores[thread * group * s.n_ctx ..][0 .. group * s.n_ctx];
        for (begin..end) |item| {
            const t = item / hp.n_kv_heads;
            const kh = item % hp.n_kv_heads;
            const n_pos = self.pos0 + t + 1;
            const kv = self.layer_kv + kh * s.n_ctx * hd;
            // Query heads kh * group .. of token t, and their output.
            const q0 = t * q_dim + kh * group * hd;
            switch (s.kv) {
                inline else => |c| {
                    const T = @TypeOf(c.keys[0]);
                    kernels.attention.attendGroup(T, s.q[q0..][0 .. group * hd], c.keys[kv..][0 .. n_pos * hd], c.values[kv..][0 .. n_pos * hd], n_pos, hd, group, inv_sqrt, scores_all, s.n_ctx, s.att_out[q0..][0 .. group * hd]);
                },
            }
        }
    }
};
