//! The down projection of a sparse FFN, summed in one fixed order: y = sum over the active neurons,
//! in hot-first position order, of h * (the neuron's down column), every element of y starting at
//! zero and taking one fused multiply-add per neuron (kernels/axpy.zig).
//!
//! The order is the point. The in-memory path computes neurons in clusters on whichever thread is
//! free; the offloaded path computes cached neurons first and the others as their reads land, in an
//! order the disk decides. Summing as they come (one accumulator per thread, added up at the end) made
//! the two paths, and two runs of either, differ in the last bits; through the next layers that
//! flipped a predictor score sitting on its threshold, and a whole neuron's output went missing from
//! one side (a two-phase bundle file's logits differed from in-memory ones by far more than rounding).
//!
//! So y is split into column ranges, one per thread, and each range takes the neurons strictly in
//! position order: in memory, in one pass once every neuron's h is known (`WholeJob`); offloaded, as
//! far as the neurons known so far reach without a gap (`Frontier`), so the down columns of cached
//! neurons are summed while later ones are still being read. Any split gives bitwise the same y, for
//! any thread count.
const std = @import("std");
const kernels = @import("kernels");
const DType = kernels.DType;
const WeightView = @import("backend_api").WeightView;
const Backend = @import("../engine/backend.zig").Backend;

/// Most column ranges y is split into (more threads share them).
pub const max_chunks = 16;

/// Column ranges for `threads` threads.
pub fn chunkCount(threads: usize) usize {
    return std.math.clamp(threads, 1, max_chunks);
}

/// Columns [begin, end) of range `q` of `n_chunks` over `dim` columns: multiples of 32 (a quantized
/// block), so a range starts on a block of every row.
pub fn chunkColumns(dim: usize, n_chunks: usize, q: usize) struct { begin: usize, end: usize } {
    const blocks = dim / 32;
    return .{ .begin = blocks * q / n_chunks * 32, .end = if (q + 1 == n_chunks) dim else blocks * (q + 1) / n_chunks * 32 };
}

/// Adds sum_k coeffs[k] * down row rows[k], over columns [begin, end) only, into y[begin..end).
fn axpyColumns(backend: *const Backend, down: *const WeightView, begin: usize, end: usize, rows: []const u32, coeffs: [*]const f32, y: [*]f32) void {
    const t: DType = @enumFromInt(down.dtype);
    var view = down.*;
    view.data = down.data + t.rowBytes(begin).?;
    view.n_cols = end - begin;
    backend.axpyRows(&view, rows, coeffs, y + begin);
}

/// In memory: every active neuron is known; each job item sums them all into one column range.
pub const WholeJob = struct {
    backend: *const Backend,
    down: *const WeightView,
    /// Active neurons' rows in `down`, in position order, and their h.
    rows: []const u32,
    coeffs: [*]const f32,
    y: [*]f32,
    dim: usize,
    n_chunks: usize,

    pub fn run(ctx: *anyopaque, begin: usize, end: usize, _: usize) void {
        const self: *WholeJob = @ptrCast(@alignCast(ctx));
        for (begin..end) |q| {
            const c = chunkColumns(self.dim, self.n_chunks, q);
            axpyColumns(self.backend, self.down, c.begin, c.end, self.rows, self.coeffs, self.y);
        }
    }
};

/// Offloaded: neuron i of the selection (position order) becomes `ready` when its h is known (0 when
/// it does not fire) and its down column sits in row `row[i]` of the cache. Each column range keeps a
/// front: the neurons before it are summed. Whoever takes a range's lock moves its front over the
/// ready neurons that follow it.
pub const Frontier = struct {
    n: usize,
    ready: []std.atomic.Value(u8),
    h: []f32,
    row: []u32,
    n_chunks: usize,
    fronts: [max_chunks]std.atomic.Value(usize) = [_]std.atomic.Value(usize){std.atomic.Value(usize).init(0)} ** max_chunks,
    locks: [max_chunks]std.Thread.Mutex = [_]std.Thread.Mutex{.{}} ** max_chunks,

    /// Sums what the ranges can reach now; `first` is the range tried first (spreads threads out).
    /// Returns whether any front moved.
    pub fn advance(self: *Frontier, backend: *const Backend, down: *const WeightView, dim: usize, y: [*]f32, first: usize) bool {
        var moved = false;
        for (0..self.n_chunks) |i| {
            const q = (first + i) % self.n_chunks;
            if (self.fronts[q].load(.acquire) == self.n) continue;
            if (!self.locks[q].tryLock()) continue;
            defer self.locks[q].unlock();
            const c = chunkColumns(dim, self.n_chunks, q);
            const start = self.fronts[q].load(.acquire);
            var f = start;
            // A run of up to `batch` active neurons per call (the kernel takes them 8 at a time).
            const batch = 64;
            var rows: [batch]u32 = undefined;
            var coeffs: [batch]f32 = undefined;
            var k: usize = 0;
            while (f < self.n and self.ready[f].load(.acquire) != 0) : (f += 1) {
                if (self.h[f] == 0) continue;
                rows[k] = self.row[f];
                coeffs[k] = self.h[f];
                k += 1;
                if (k == batch) {
                    axpyColumns(backend, down, c.begin, c.end, rows[0..k], &coeffs, y);
                    k = 0;
                }
            }
            if (k > 0) axpyColumns(backend, down, c.begin, c.end, rows[0..k], &coeffs, y);
            self.fronts[q].store(f, .release);
            moved = moved or f != start;
        }
        return moved;
    }

    /// Whether some range's next neuron is known (its front can move).
    pub fn canAdvance(self: *const Frontier) bool {
        for (self.fronts[0..self.n_chunks]) |*f| {
            const at = f.load(.acquire);
            if (at < self.n and self.ready[at].load(.acquire) != 0) return true;
        }
        return false;
    }

    /// Whether every range has summed every neuron.
    pub fn done(self: *const Frontier) bool {
        for (self.fronts[0..self.n_chunks]) |*f| {
            if (f.load(.acquire) != self.n) return false;
        }
        return true;
    }
};

test "chunkColumns covers the columns once, on block boundaries" {
    for ([_]usize{ 32, 64, 256, 4096, 4128 }) |dim| {
        for (1..max_chunks + 1) |n| {
            var next: usize = 0;
            for (0..n) |q| {
                const c = chunkColumns(dim, n, q);
                try std.testing.expectEqual(next, c.begin);
                try std.testing.expect(c.begin % 32 == 0 and c.end >= c.begin);
                next = c.end;
            }
            try std.testing.expectEqual(dim, next);
        }
    }
}
