//! Calibration from captured activations (sparse/capture.zig), per layer:
//!
//! - `catsThresholds`: for SwiGLU models, the |silu(gate)| below which a neuron counts as inactive,
//!   chosen as a quantile so that a target fraction of (token, neuron) pairs falls under it (CATS);
//! - `neuronFrequency`: how often each neuron fires (the hot/cold ranking);
//! - `trainPredictor`: a low-rank predictor score = fc2 · relu(fc1 · x) + bias, fitted to the "fires"
//!   labels with class-weighted binary cross-entropy and Adam on the training tokens; the bias holds
//!   each neuron's base rate;
//! - `chooseThresholds`: on held-out tokens (the last `val_fraction`), the score threshold per target
//!   that keeps the predictor's recall at or above the goal, with the recall and the ratio of
//!   predicted to truly active neurons it gives.
const std = @import("std");
const kernels = @import("kernels");
const Activation = kernels.ops.Activation;
const ThreadPool = @import("../engine/thread_pool.zig").ThreadPool;
const GemmJob = @import("gemm_job.zig").GemmJob;
const Capture = @import("capture.zig").Capture;

pub const TrainParams = extern struct {
    rank: u32,
    epochs: u32,
    batch: u32,
    seed: u32,
    learning_rate: f32,
    /// Weight of the positive ("fires") class in the loss: > 1 trades precision for recall.
    pos_weight: f32,
    /// The last this-fraction of captured tokens is held out (not trained on).
    val_fraction: f32,
    /// SwiGLU: |silu(gate)| above this is "fires" (the loosest calibrated target); ReLU: ignored.
    label_threshold: f32,
    /// 0: classify "fires" (weighted binary cross-entropy); 1: regress the gate pre-activation
    /// itself (mean squared error), which ranks neurons for every threshold at once; 2: no training,
    /// the gate's principal subspace (sparse/subspace_fit.zig), a linear predictor.
    objective: u32,
    reserved: u32 = 0,
};

pub const TrainReport = extern struct {
    train_loss: f32,
    val_loss: f32,
    /// Fraction of (token, neuron) pairs labelled "fires" in the training tokens.
    label_rate: f32,
    reserved: f32 = 0,
};

inline fn silu(x: f32) f32 {
    return x / (1.0 + @exp(-x));
}

/// Whether neuron i fires for this token: the label the predictor learns.
inline fn fires(act: Activation, g: f32, u: f32, thr: f32) bool {
    return switch (act) {
        .swiglu => @abs(silu(g)) > thr,
        .relu => g > 0,
        .drelu => g > 0 and u > 0,
    };
}

fn label(cap: *const Capture, act: Activation, l: usize, t: usize, i: usize, thr: f32) bool {
    const g: f32 = @floatCast(cap.gateOf(l, t)[i]);
    const u: f32 = if (cap.upOf(l, t)) |up| @floatCast(up[i]) else 1;
    return fires(act, g, u, thr);
}

/// SwiGLU CATS thresholds: out[j] = the |silu(gate)| quantile at targets[j] over the captured
/// tokens of layer l (a sample of at most ~2M values). Target 0 gives threshold 0.
pub fn catsThresholds(a: std.mem.Allocator, cap: *const Capture, l: usize, targets: []const f32, out: []f32) !void {
    const total = cap.n * cap.ffn;
    const stride = @max(1, total / (2 << 20));
    const vals = try a.alloc(f32, (total + stride - 1) / stride);
    defer a.free(vals);
    var n: usize = 0;
    var idx: usize = 0;
    while (idx < total) : (idx += stride) {
        vals[n] = @abs(silu(@floatCast(cap.gateOf(l, idx / cap.ffn)[idx % cap.ffn])));
        n += 1;
    }
    std.mem.sort(f32, vals[0..n], {}, std.sort.asc(f32));
    for (targets, out) |s, *o| {
        if (!(s > 0) or n == 0) {
            o.* = 0;
            continue;
        }
        const at: usize = @min(n - 1, @as(usize, @intFromFloat(@floor(s * @as(f32, @floatFromInt(n))))));
        o.* = vals[at];
    }
}

/// out[i] = fraction of captured tokens on which neuron i of layer l fires.
pub fn neuronFrequency(cap: *const Capture, act: Activation, l: usize, thr: f32, out: []f32) void {
    @memset(out, 0);
    for (0..cap.n) |t| {
        for (out, 0..) |*o, i| {
            if (label(cap, act, l, t, i, thr)) o.* += 1;
        }
    }
    const inv = 1.0 / @as(f32, @floatFromInt(@max(cap.n, 1)));
    for (out) |*o| o.* *= inv;
}

/// The active set of each recorded token of layer `l` in [t0, t0 + n_tokens) as bits (neuron i is
/// bit i % 32 of word i / 32, ceil(ffn / 32) words per token): what activation statistics (hot/cold
/// skew, overlap between tokens) are measured from.
pub fn activeMasks(cap: *const Capture, act: Activation, l: usize, thr: f32, t0: usize, n_tokens: usize, out: []u32) void {
    const words = (cap.ffn + 31) / 32;
    @memset(out[0 .. n_tokens * words], 0);
    for (0..n_tokens) |k| {
        const row = out[k * words ..][0..words];
        for (0..cap.ffn) |i| {
            if (label(cap, act, l, t0 + k, i, thr)) row[i / 32] |= @as(u32, 1) << @intCast(i % 32);
        }
    }
}

const Adam = struct {
    m: []f32,
    v: []f32,
    fn step(self: *Adam, p: []f32, g: []const f32, lr: f32, t: u32) void {
        const b1: f32 = 0.9;
        const b2: f32 = 0.999;
        const c1 = 1 - std.math.pow(f32, b1, @floatFromInt(t));
        const c2 = 1 - std.math.pow(f32, b2, @floatFromInt(t));
        for (p, g, self.m, self.v) |*w, gi, *m, *v| {
            m.* = b1 * m.* + (1 - b1) * gi;
            v.* = b2 * v.* + (1 - b2) * gi * gi;
            w.* -= lr * (m.* / c1) / (@sqrt(v.* / c2) + 1e-8);
        }
    }
};

fn softplus(x: f32) f32 {
    return if (x > 20) x else std.math.log1p(@exp(x));
}

/// Number of captured tokens used for training (the rest is held out).
pub fn trainTokens(cap: *const Capture, val_fraction: f32) usize {
    const val: usize = @intFromFloat(@ceil(val_fraction * @as(f32, @floatFromInt(cap.n))));
    return cap.n - @min(val, cap.n -| 1);
}

/// Fits the predictor of layer l: fc1 (rank x dim), fc2 (ffn x rank), bias (ffn).
pub fn trainPredictor(a: std.mem.Allocator, pool: *ThreadPool, cap: *const Capture, act: Activation, l: usize, p: TrainParams, fc1: []f32, fc2: []f32, bias: []f32, report: *TrainReport) !void {
    const dim = cap.dim;
    const ffn = cap.ffn;
    const r: usize = p.rank;
    const bsz: usize = @max(1, p.batch);
    const n_train = trainTokens(cap, p.val_fraction);
    const regress = p.objective == 1;
    std.debug.assert(fc1.len == r * dim and fc2.len == ffn * r and bias.len == ffn);

    var arena_state = std.heap.ArenaAllocator.init(a);
    defer arena_state.deinit();
    const arena = arena_state.allocator();
    const xb = try arena.alloc(f32, bsz * dim);
    const yb = try arena.alloc(f32, bsz * ffn);
    const hpre = try arena.alloc(f32, bsz * r);
    const h = try arena.alloc(f32, bsz * r);
    const s = try arena.alloc(f32, bsz * ffn);
    const dh = try arena.alloc(f32, bsz * r);
    const g1 = try arena.alloc(f32, r * dim);
    const g2 = try arena.alloc(f32, ffn * r);
    const gb = try arena.alloc(f32, ffn);
    const order = try arena.alloc(u32, n_train);
    var opt1 = Adam{ .m = try arena.alloc(f32, r * dim), .v = try arena.alloc(f32, r * dim) };
    var opt2 = Adam{ .m = try arena.alloc(f32, ffn * r), .v = try arena.alloc(f32, ffn * r) };
    var optb = Adam{ .m = try arena.alloc(f32, ffn), .v = try arena.alloc(f32, ffn) };
    for ([_][]f32{ opt1.m, opt1.v, opt2.m, opt2.v, optb.m, optb.v }) |buf| @memset(buf, 0);

    // Init: random projections; the bias starts at each neuron's log-odds of firing.
    var prng = std.Random.DefaultPrng.init(p.seed);
    const rng = prng.random();
    const s1 = 1.0 / @sqrt(@as(f32, @floatFromInt(dim)));
    const s2 = 0.1 / @sqrt(@as(f32, @floatFromInt(r)));
    for (fc1) |*w| w.* = rng.floatNorm(f32) * s1;
    for (fc2) |*w| w.* = rng.floatNorm(f32) * s2;
    var positives: usize = 0;
    for (bias, 0..) |*bv, i| {
        var c: usize = 0;
        for (0..n_train) |t| {
            if (label(cap, act, l, t, i, p.label_threshold)) c += 1;
        }
        positives += c;
        const freq = (@as(f32, @floatFromInt(c)) + 0.5) / (@as(f32, @floatFromInt(n_train)) + 1);
        if (regress) {
            // Start from each neuron's mean gate value.
            var mean: f32 = 0;
            for (0..n_train) |t| mean += @floatCast(cap.gateOf(l, t)[i]);
            bv.* = mean / @as(f32, @floatFromInt(n_train));
        } else {
            bv.* = @log(freq / (1 - freq));
        }
    }
    report.label_rate = @as(f32, @floatFromInt(positives)) / @as(f32, @floatFromInt(n_train * ffn));
    for (order, 0..) |*o, i| o.* = @intCast(i);

    var step: u32 = 0;
    var last_loss: f32 = 0;
    for (0..p.epochs) |_| {
        rng.shuffle(u32, order);
        var epoch_loss: f64 = 0;
        var seen: usize = 0;
        var start: usize = 0;
        while (start < n_train) : (start += bsz) {
            const nb = @min(bsz, n_train - start);
            fillBatch(cap, act, l, order[start .. start + nb], p.label_threshold, xb, yb, regress);
            epoch_loss += forwardBackward(pool, fc1, fc2, bias, xb, yb, hpre, h, s, dh, g1, g2, gb, nb, dim, r, ffn, p.pos_weight, regress);
            seen += nb;
            step += 1;
            opt1.step(fc1, g1, p.learning_rate, step);
            opt2.step(fc2, g2, p.learning_rate, step);
            optb.step(bias, gb, p.learning_rate, step);
        }
        last_loss = @floatCast(epoch_loss / @as(f64, @floatFromInt(@max(seen, 1))));
    }
    report.train_loss = last_loss;

    // Held-out loss, for the report.
    var val_loss: f64 = 0;
    var idx = try arena.alloc(u32, bsz);
    var t0 = n_train;
    while (t0 < cap.n) : (t0 += bsz) {
        const nb = @min(bsz, cap.n - t0);
        for (0..nb) |j| idx[j] = @intCast(t0 + j);
        fillBatch(cap, act, l, idx[0..nb], p.label_threshold, xb, yb, regress);
        val_loss += scoreBatch(pool, fc1, fc2, bias, xb, hpre, h, s, nb, dim, r, ffn, yb, p.pos_weight, regress, false);
    }
    report.val_loss = @floatCast(val_loss / @as(f64, @floatFromInt(@max(cap.n - n_train, 1))));
}

/// Inputs and targets of a minibatch: labels (1 fires, 0 not) or, with `regress`, gate values.
fn fillBatch(cap: *const Capture, act: Activation, l: usize, tokens: []const u32, thr: f32, xb: []f32, yb: []f32, regress: bool) void {
    const dim = cap.dim;
    const ffn = cap.ffn;
    for (tokens, 0..) |t, j| {
        for (xb[j * dim ..][0..dim], cap.xOf(l, t)) |*d, v| d.* = @floatCast(v);
        const g = cap.gateOf(l, t);
        const up = cap.upOf(l, t);
        for (yb[j * ffn ..][0..ffn], 0..) |*y, i| {
            const u: f32 = if (up) |uu| @floatCast(uu[i]) else 1;
            y.* = if (regress) @floatCast(g[i]) else if (fires(act, @floatCast(g[i]), u, thr)) 1 else 0;
        }
    }
}

/// Scores s = fc2 · relu(fc1 · x) + bias (with `linear`, no relu) for nb tokens; returns the
/// summed loss when labels are given.
fn scoreBatch(pool: *ThreadPool, fc1: []const f32, fc2: []const f32, bias: []const f32, xb: []const f32, hpre: []f32, h: []f32, s: []f32, nb: usize, dim: usize, r: usize, ffn: usize, yb: ?[]const f32, pos_weight: f32, regress: bool, linear: bool) f64 {
    var j1 = GemmJob{ .kind = .nt, .a = xb[0 .. nb * dim], .b = fc1, .c = hpre[0 .. nb * r], .mdim = nb, .n = r, .k = dim };
    j1.exec(pool, nb);
    for (h[0 .. nb * r], hpre[0 .. nb * r]) |*o, v| o.* = if (linear) v else @max(v, 0);
    var j2 = GemmJob{ .kind = .nt, .a = h[0 .. nb * r], .b = fc2, .c = s[0 .. nb * ffn], .mdim = nb, .n = ffn, .k = r };
    j2.exec(pool, nb);
    for (0..nb) |b| {
        for (s[b * ffn ..][0..ffn], bias) |*o, bv| o.* += bv;
    }
    const y = yb orelse return 0;
    var loss: f64 = 0;
    for (s[0 .. nb * ffn], y[0 .. nb * ffn]) |sv, yv| {
        loss += if (regress) (sv - yv) * (sv - yv) else if (yv > 0) pos_weight * softplus(-sv) else softplus(sv);
    }
    return loss / @as(f64, @floatFromInt(ffn));
}

fn forwardBackward(pool: *ThreadPool, fc1: []const f32, fc2: []const f32, bias: []const f32, xb: []const f32, yb: []const f32, hpre: []f32, h: []f32, s: []f32, dh: []f32, g1: []f32, g2: []f32, gb: []f32, nb: usize, dim: usize, r: usize, ffn: usize, pos_weight: f32, regress: bool) f64 {
    const loss = scoreBatch(pool, fc1, fc2, bias, xb, hpre, h, s, nb, dim, r, ffn, yb, pos_weight, regress, false);
    // dLoss/dScore, averaged over the batch (s is overwritten with it).
    const inv = 1.0 / @as(f32, @floatFromInt(nb));
    @memset(gb, 0);
    for (0..nb) |b| {
        for (s[b * ffn ..][0..ffn], yb[b * ffn ..][0..ffn], gb) |*sv, yv, *gbv| {
            const sig = 1.0 / (1.0 + @exp(-sv.*));
            // MSE's gradient 2(s - y), normalised per neuron like the loss; BCE's sigmoid(s) - y.
            const d = if (regress) 2 * (sv.* - yv) else if (yv > 0) pos_weight * (sig - 1) else sig;
            sv.* = d * inv;
            gbv.* += sv.*;
        }
    }
    // g2 = dS^T h   (ffn x r)
    @memset(g2, 0);
    var j2 = GemmJob{ .kind = .tn, .a = s[0 .. nb * ffn], .b = h[0 .. nb * r], .c = g2, .mdim = ffn, .n = r, .k = nb };
    j2.exec(pool, ffn);
    // dh = (dS fc2) masked by relu   (nb x r)
    var j3 = GemmJob{ .kind = .nn, .a = s[0 .. nb * ffn], .b = fc2, .c = dh[0 .. nb * r], .mdim = nb, .n = r, .k = ffn };
    j3.exec(pool, nb);
    for (dh[0 .. nb * r], hpre[0 .. nb * r]) |*d, v| {
        if (v <= 0) d.* = 0;
    }
    // g1 = dh^T x   (r x dim)
    @memset(g1, 0);
    var j1 = GemmJob{ .kind = .tn, .a = dh[0 .. nb * r], .b = xb[0 .. nb * dim], .c = g1, .mdim = r, .n = dim, .k = nb };
    j1.exec(pool, r);
    return loss;
}

/// Mean squared error per neuron of the predictor's scores against the captured gate values, over
/// captured tokens [t0, t1).
pub fn gateError(a: std.mem.Allocator, pool: *ThreadPool, cap: *const Capture, l: usize, fc1: []const f32, fc2: []const f32, bias: []const f32, r: usize, linear: bool, t0: usize, t1: usize) !f32 {
    const dim = cap.dim;
    const ffn = cap.ffn;
    var arena_state = std.heap.ArenaAllocator.init(a);
    defer arena_state.deinit();
    const arena = arena_state.allocator();
    const bsz: usize = 64;
    const xb = try arena.alloc(f32, bsz * dim);
    const yb = try arena.alloc(f32, bsz * ffn);
    const hpre = try arena.alloc(f32, bsz * r);
    const h = try arena.alloc(f32, bsz * r);
    const s = try arena.alloc(f32, bsz * ffn);
    const idx = try arena.alloc(u32, bsz);
    var loss: f64 = 0;
    var t = t0;
    while (t < t1) : (t += bsz) {
        const nb = @min(bsz, t1 - t);
        for (0..nb) |j| idx[j] = @intCast(t + j);
        fillBatch(cap, .relu, l, idx[0..nb], 0, xb, yb, true);
        loss += scoreBatch(pool, fc1, fc2, bias, xb, hpre, h, s, nb, dim, r, ffn, yb, 1, true, linear);
    }
    return @floatCast(loss / @as(f64, @floatFromInt(@max(t1 - t0, 1))));
}

/// For each label threshold (one per target), the score threshold that keeps recall >= `recall` on
/// the held-out tokens, with the recall reached and predicted / truly active neurons there.
pub fn chooseThresholds(a: std.mem.Allocator, pool: *ThreadPool, cap: *const Capture, act: Activation, l: usize, fc1: []const f32, fc2: []const f32, bias: []const f32, r: usize, linear: bool, val_fraction: f32, label_thresholds: []const f32, recall: f32, out_score: []f32, out_recall: []f32, out_ratio: []f32) !void {
    const dim = cap.dim;
    const ffn = cap.ffn;
    const t0 = trainTokens(cap, val_fraction);
    const n_val = cap.n - t0;
    var arena_state = std.heap.ArenaAllocator.init(a);
    defer arena_state.deinit();
    const arena = arena_state.allocator();
    const bsz: usize = 64;
    const xb = try arena.alloc(f32, bsz * dim);
    const yb = try arena.alloc(f32, bsz * ffn);
    const hpre = try arena.alloc(f32, bsz * r);
    const h = try arena.alloc(f32, bsz * r);
    const scores = try arena.alloc(f32, n_val * ffn);
    const idx = try arena.alloc(u32, bsz);
    var t: usize = 0;
    while (t < n_val) : (t += bsz) {
        const nb = @min(bsz, n_val - t);
        for (0..nb) |j| idx[j] = @intCast(t0 + t + j);
        fillBatch(cap, act, l, idx[0..nb], 0, xb, yb, false);
        _ = scoreBatch(pool, fc1, fc2, bias, xb, hpre, h, scores[t * ffn ..][0 .. nb * ffn], nb, dim, r, ffn, null, 1, false, linear);
    }
    const pos = try arena.alloc(f32, n_val * ffn);
    for (label_thresholds, out_score, out_recall, out_ratio) |thr, *os, *orc, *ora| {
        var npos: usize = 0;
        for (0..n_val) |v| {
            for (0..ffn) |i| {
                if (label(cap, act, l, t0 + v, i, thr)) {
                    pos[npos] = scores[v * ffn + i];
                    npos += 1;
                }
            }
        }
        if (npos == 0) {
            os.* = std.math.floatMax(f32);
            orc.* = std.math.nan(f32);
            ora.* = std.math.nan(f32);
            continue;
        }
        std.mem.sort(f32, pos[0..npos], {}, std.sort.asc(f32));
        const cut: usize = @intFromFloat(@floor((1 - recall) * @as(f32, @floatFromInt(npos))));
        const thr_score = pos[@min(cut, npos - 1)];
        var kept: usize = 0;
        for (pos[0..npos]) |v| {
            if (v >= thr_score) kept += 1;
        }
        var predicted: usize = 0;
        for (scores) |v| {
            if (v >= thr_score) predicted += 1;
        }
        os.* = thr_score;
        orc.* = @as(f32, @floatFromInt(kept)) / @as(f32, @floatFromInt(npos));
        ora.* = @as(f32, @floatFromInt(predicted)) / @as(f32, @floatFromInt(npos));
    }
}
