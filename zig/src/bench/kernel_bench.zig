//! Native micro-benchmarks behind `sp_bench_*` in api.zig: memory read bandwidth, and the
//! throughput of the matrix-vector kernels per weight type, both on the core's own thread pool so
//! they measure what decode does. Working sets are far larger than the last-level cache so the
//! figures are DRAM figures. bench/kernels_bench.ts prints them side by side.
const std = @import("std");
const kernels = @import("kernels");
const DType = kernels.DType;
const dot = kernels.dot;
const ThreadPool = @import("../engine/thread_pool.zig").ThreadPool;

const allocator = std.heap.c_allocator;

/// Sums `bytes` of memory with `threads` threads, `iters` times; returns the best time in ns.
pub fn memRead(bytes: usize, threads: usize, iters: usize) !u64 {
    const V = @Vector(8, u64);
    const n = bytes / @sizeOf(V);
    const buf = try allocator.alignedAlloc(V, 64, n);
    defer allocator.free(buf);
    for (buf, 0..) |*v, i| v.* = @splat(@as(u64, i));
    const pool = try ThreadPool.init(allocator, threads);
    defer pool.deinit();
    const Job = struct {
        data: []const V,
        sink: std.atomic.Value(u64) = std.atomic.Value(u64).init(0),
        fn run(ctx: *anyopaque, begin: usize, end: usize, _: usize) void {
            const self: *@This() = @ptrCast(@alignCast(ctx));
            var a: V = @splat(0);
            var b: V = @splat(0);
            var i = begin;
            while (i + 1 < end) : (i += 2) {
                a +%= self.data[i];
                b +%= self.data[i + 1];
            }
            if (i < end) a +%= self.data[i];
            _ = self.sink.fetchAdd(@reduce(.Add, a +% b), .monotonic);
        }
    };
    var job = Job{ .data = buf };
    var best: u64 = std.math.maxInt(u64);
    for (0..iters) |_| {
        var timer = try std.time.Timer.start();
        pool.run(&job, Job.run, n, 1 << 14);
        best = @min(best, timer.read());
    }
    std.mem.doNotOptimizeAway(job.sink.load(.monotonic));
    return best;
}

/// Fills a row-major weight matrix of `dtype` with random values whose scales are sane.
fn fillWeights(rng: std.Random, dtype: DType, bytes: []u8) void {
    rng.bytes(bytes);
    switch (dtype) {
        .f32 => for (std.mem.bytesAsSlice(f32, bytes)) |*v| {
            v.* = rng.float(f32) - 0.5;
        },
        .f16, .bf16 => for (std.mem.bytesAsSlice(u16, bytes)) |*v| {
            v.* = if (dtype == .f16) @bitCast(@as(f16, @floatCast(rng.float(f32) - 0.5))) else kernels.quant.f32ToBf16(rng.float(f32) - 0.5);
        },
        else => {
            // Every block starts with f16 scale(s) (except q6_k, where d is last); random bits there
            // could be NaN, which would make the timing meaningless (NaN paths are not slower, but
            // keep the data realistic anyway).
            const bb = dtype.blockBytes().?;
            var off: usize = 0;
            while (off + bb <= bytes.len) : (off += bb) {
                const at = kernels.quant.scaleOffset(dtype);
                std.mem.writeInt(u16, bytes[off + at ..][0..2], @bitCast(@as(f16, 0.01)), .little);
                if (kernels.quant.hasMin(dtype)) std.mem.writeInt(u16, bytes[off + at + 2 ..][0..2], @bitCast(@as(f16, -0.02)), .little);
            }
        },
    }
}

/// Runs y = W·x over a (rows, cols) matrix of `dtype` with `threads` threads, `iters` times, after
/// one warm-up; returns the best time in ns. The input is prepared (quantized) once, outside the
/// timing: decode prepares it once per matrix and amortizes it over every row.
pub fn matvec(dtype: DType, rows: usize, cols: usize, threads: usize, iters: usize) !u64 {
    if (!dtype.isWeightType()) return error.Unsupported;
    const row_bytes = dtype.rowBytes(cols) orelse return error.Unsupported;
    const w = try allocator.alignedAlloc(u8, 64, row_bytes * rows);
    defer allocator.free(w);
    var prng = std.Random.DefaultPrng.init(42);
    fillWeights(prng.random(), dtype, w);
    const x = try allocator.alloc(f32, cols);
    defer allocator.free(x);
    for (x) |*v| v.* = prng.random().floatNorm(f32);
    const act = try allocator.alignedAlloc(u8, 64, dot.activationBytes(dtype, cols));
    defer allocator.free(act);
    const y = try allocator.alloc(f32, rows);
    defer allocator.free(y);
    const pool = try ThreadPool.init(allocator, threads);
    defer pool.deinit();
    const Job = struct {
        dtype: DType,
        w: []const u8,
        row_bytes: usize,
        cols: usize,
        act: []const u8,
        y: []f32,
        fn run(ctx: *anyopaque, begin: usize, end: usize, _: usize) void {
            const self: *@This() = @ptrCast(@alignCast(ctx));
            for (begin..end) |r| self.y[r] = dot.dot(self.dtype, self.w.ptr + r * self.row_bytes, self.act.ptr, self.cols);
        }
    };
    var job = Job{ .dtype = dtype, .w = w, .row_bytes = row_bytes, .cols = cols, .act = act, .y = y };
    var best: u64 = std.math.maxInt(u64);
    dot.prepareActivation(dtype, x, act);
    for (0..iters + 1) |i| {
        var timer = try std.time.Timer.start();
        pool.run(&job, Job.run, rows, 64);
        const t = timer.read();
        if (i > 0) best = @min(best, t);
    }
    std.mem.doNotOptimizeAway(y[rows / 2]);
    return best;
}

/// Runs Y = W·X for `tokens` inputs over a (rows, cols) matrix of `dtype` with the tiled kernels on
/// `threads` threads; returns the best time in ns of `iters` runs (inputs prepared once, untimed).
pub fn matmul(dtype: DType, rows: usize, cols: usize, tokens: usize, threads: usize, iters: usize) !u64 {
    if (!dtype.isWeightType()) return error.Unsupported;
    const row_bytes = dtype.rowBytes(cols) orelse return error.Unsupported;
    const w = try allocator.alignedAlloc(u8, 64, row_bytes * rows);
    defer allocator.free(w);
    var prng = std.Random.DefaultPrng.init(42);
    fillWeights(prng.random(), dtype, w);
    const stride = std.mem.alignForward(usize, dot.activationBytes(dtype, cols), 64);
    const act = try allocator.alignedAlloc(u8, 64, stride * tokens);
    defer allocator.free(act);
    const x = try allocator.alloc(f32, cols);
    defer allocator.free(x);
    for (0..tokens) |t| {
        for (x) |*v| v.* = prng.random().floatNorm(f32);
        dot.prepareActivation(dtype, x, act[t * stride ..][0..stride]);
    }
    const y = try allocator.alloc(f32, rows * tokens);
    defer allocator.free(y);
    const pool = try ThreadPool.init(allocator, threads);
    defer pool.deinit();
    const Job = struct {
        dtype: DType,
        w: []const u8,
        row_bytes: usize,
        cols: usize,
        act: []const u8,
        stride: usize,
        tokens: usize,
        y: []f32,
        rows: usize,
        fn run(ctx: *anyopaque, begin: usize, end: usize, _: usize) void {
            const self: *@This() = @ptrCast(@alignCast(ctx));
            kernels.matmul.matmul(self.dtype, self.w.ptr, self.row_bytes, self.cols, self.act.ptr, self.stride, self.tokens, self.y.ptr, self.rows, begin, end);
        }
    };
    var job = Job{ .dtype = dtype, .w = w, .row_bytes = row_bytes, .cols = cols, .act = act, .stride = stride, .tokens = tokens, .y = y, .rows = rows };
    var best: u64 = std.math.maxInt(u64);
    for (0..iters + 1) |i| {
        var timer = try std.time.Timer.start();
        pool.run(&job, Job.run, rows, 16);
        const t = timer.read();
        if (i > 0) best = @min(best, t);
    }
    std.mem.doNotOptimizeAway(y[rows / 2]);
    return best;
}
