//! Native micro-benchmarks behind `sp_bench_*` in api.zig: memory read bandwidth (streamed, and of
//! scattered rows: the ceiling of the sparse kernels' reads), and the matrix
//! kernels per weight type, on the core's own thread pool so they measure what decode and prefill
//! do. A benchmark is created once (buffers allocated and filled), run many times (one operation
//! per run, timed by the caller), then destroyed. Working sets are far larger than the last-level
//! cache so the figures are DRAM figures. bench/kernels_bench.ts prints them side by side.
//!
//! The sparse FFN kernels run as the engine runs them, on a selection of rows (each row with
//! probability 1/`tokens`: 1 = all, 8 = an eighth, as in a 7B ReLU model's ~10% active neurons):
//! `gathered` computes dot products of the selected rows (gate and up rows) in clusters of 32 handed
//! to the threads; `axpy` adds all the selected rows, scaled, into one output, each thread over its
//! own column range (the transposed down projection, as sparse/down_order.zig sums it).
//!
//! `attention` is one layer's decode attention over a long cached context (kernels/attention.zig):
//! every kv head's keys and values read once.
const std = @import("std");
const kernels = @import("kernels");
const DType = kernels.DType;
const dot = kernels.dot;
const ThreadPool = @import("../engine/thread_pool.zig").ThreadPool;
const huge_pages = @import("../engine/huge_pages.zig");
const down_order = @import("../sparse/down_order.zig");

const allocator = std.heap.c_allocator;

pub const Kind = enum(u32) {
    mem_read = 0,
    matvec = 1,
    matmul = 2,
    gathered = 3,
    axpy = 4,
    /// Memory read of the selected rows only (`cols` bytes each), in clusters like `gathered`.
    mem_gathered = 5,
    /// Decode attention of one layer: `attention_kv_heads` kv heads, each with `rows` cached positions
    /// of `cols` (head_dim) f32 keys and values and `tokens` query heads (the group).
    attention = 6,
    /// `matvec` over the matrix stored as row pairs (dot.repackRowPairs), as weights copied at load
    /// are: `rows` is rounded down to even, and the type and `cols` must fit (dot.rowPairsFit).
    matvec_row_pairs = 7,

    fn selects(k: Kind) bool {
        return k == .gathered or k == .axpy or k == .mem_gathered;
    }
    fn readsBytes(k: Kind) bool {
        return k == .mem_read or k == .mem_gathered;
    }
};

/// Selected rows per work item of the sparse kinds (the engine's default cluster size).
const cluster = 32;

/// KV heads of the attention kind (Mistral-7B's: its 32 query heads share 8).
const attention_kv_heads = 8;

pub const Bench = struct {
    kind: Kind,
    dtype: DType,
    pool: *ThreadPool,
    /// Memory read (mem_read) or the weight matrix (matvec, matmul).
    data: []align(64) u8,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    tokens: usize,
    act: []align(64) u8,
    act_stride: usize,
    y: []f32,
    /// Sparse kinds: the selected rows, their coefficients and the output (axpy).
    sel: []u32 = &.{},
    coeffs: []f32 = &.{},
    acc: []f32 = &.{},
    sink: std.atomic.Value(u64) = std.atomic.Value(u64).init(0),

    /// Allocates and fills a benchmark: `rows` x `cols` weights of `dtype` (mem_read reads
    /// rows * cols bytes), `tokens` inputs for matmul, each row with probability 1/`tokens` for the sparse kinds.
    pub fn create(kind: Kind, dtype: DType, rows: usize, cols: usize, tokens: usize, threads: usize) !*Bench {
        if (threads == 0 or threads > 256 or rows == 0 or cols == 0) return error.InvalidArgument;
        if (kind == .axpy and (!kernels.axpy.supported(dtype) or cols % 32 != 0)) return error.Unsupported;
        if (kind == .attention) return createAttention(dtype, rows, cols, tokens, threads);
        if (kind == .matvec_row_pairs and !dot.rowPairsFit(dtype, rows / 2 * 2, cols)) return error.Unsupported;
        const self = try allocator.create(Bench);
        errdefer allocator.destroy(self);
        const row_bytes = if (kind.readsBytes()) cols else (if (dtype.isWeightType()) dtype.rowBytes(cols) orelse return error.Unsupported else return error.Unsupported);
        const data = try allocator.alignedAlloc(u8, 64, row_bytes * rows);
        errdefer allocator.free(data);
        var prng = std.Random.DefaultPrng.init(42);
        const rng = prng.random();
        const n_tokens = if (kind == .matmul) @max(tokens, 1) else 1;
        const stride = if (kind.readsBytes()) 64 else std.mem.alignForward(usize, dot.activationBytes(dtype, cols), 64);
        const act = try allocator.alignedAlloc(u8, 64, stride * n_tokens);
        errdefer allocator.free(act);
        const y = try allocator.alloc(f32, if (kind.readsBytes()) 1 else rows * n_tokens);
        errdefer allocator.free(y);
        // Weights sit in huge pages in the engine: the sparse stores it gathers from
        // (sparse/neuron_store.zig), and models copied at load (engine/model.zig copyWeights). The
        // plain read, the yardstick, reads the same kind of memory.
        huge_pages.advise(data);
        if (kind.readsBytes()) {
            rng.bytes(data);
        } else {
            for (0..rows) |r| dot.fillRandomRow(rng, dtype, cols, data[r * row_bytes ..][0..row_bytes]);
            if (kind == .matvec_row_pairs) {
                const scratch = try allocator.alloc(u8, 2 * row_bytes);
                defer allocator.free(scratch);
                dot.repackRowPairs(dtype, data.ptr, row_bytes, 0, rows / 2 * 2, scratch);
            }
            const x = try allocator.alloc(f32, cols);
            defer allocator.free(x);
            for (0..n_tokens) |t| {
                for (x) |*v| v.* = rng.floatNorm(f32);
                dot.prepareActivation(dtype, x, act[t * stride ..][0..stride]);
            }
        }
        const pool = try ThreadPool.init(allocator, threads);
        errdefer pool.deinit();
        var sel: []u32 = &.{};
        var coeffs: []f32 = &.{};
        var acc: []f32 = &.{};
        if (kind.selects()) {
            // Each row with probability 1/every, in ascending order, as the engine's selection of
            // scattered neurons in hot-first order: a regular stride would let the hardware
            // prefetcher predict the next row, which it cannot do in decode.
            const every = @max(tokens, 1);
            var n_sel: usize = 0;
            sel = try allocator.alloc(u32, rows);
            errdefer allocator.free(sel);
            for (0..rows) |r| {
                if (every == 1 or rng.uintLessThan(usize, every) == 0) {
                    sel[n_sel] = @intCast(r);
                    n_sel += 1;
                }
            }
            sel = try allocator.realloc(sel, n_sel);
            coeffs = try allocator.alloc(f32, sel.len);
            errdefer allocator.free(coeffs);
            for (coeffs) |*v| v.* = rng.floatNorm(f32);
            acc = try allocator.alloc(f32, cols);
            @memset(acc, 0);
        }
        self.* = .{
            .sel = sel,
            .coeffs = coeffs,
            .acc = acc,
            .kind = kind,
            .dtype = dtype,
            .pool = pool,
            .data = data,
            .rows = rows,
            .cols = cols,
            .row_bytes = row_bytes,
            .tokens = n_tokens,
            .act = act,
            .act_stride = stride,
            .y = y,
        };
        return self;
    }

    /// The attention kind: `data` holds each kv head's keys then values (`dtype`: f32 or f16, rows x
    /// cols each), `act` the query heads (f32), `y` their outputs, `acc` each thread's scores.
    fn createAttention(dtype: DType, rows: usize, cols: usize, group: usize, threads: usize) !*Bench {
        if (group == 0) return error.InvalidArgument;
        if (dtype != .f32 and dtype != .f16) return error.Unsupported;
        const self = try allocator.create(Bench);
        errdefer allocator.destroy(self);
        const row_bytes = cols * @as(usize, if (dtype == .f16) 2 else 4);
        const q_bytes = cols * 4;
        const data = try allocator.alignedAlloc(u8, 64, 2 * attention_kv_heads * rows * row_bytes);
        errdefer allocator.free(data);
        const act = try allocator.alignedAlloc(u8, 64, attention_kv_heads * group * q_bytes);
        errdefer allocator.free(act);
        const y = try allocator.alloc(f32, attention_kv_heads * group * cols);
        errdefer allocator.free(y);
        const scores = try allocator.alloc(f32, threads * group * rows);
        errdefer allocator.free(scores);
        var prng = std.Random.DefaultPrng.init(42);
        const rng = prng.random();
        if (dtype == .f16) {
            for (std.mem.bytesAsSlice(f16, data)) |*v| v.* = @floatCast(rng.floatNorm(f32));
        } else {
            for (std.mem.bytesAsSlice(f32, data)) |*v| v.* = rng.floatNorm(f32);
        }
        for (std.mem.bytesAsSlice(f32, act)) |*v| v.* = rng.floatNorm(f32);
        const pool = try ThreadPool.init(allocator, threads);
        self.* = .{ .kind = .attention, .dtype = dtype, .pool = pool, .data = data, .rows = rows, .cols = cols, .row_bytes = row_bytes, .tokens = group, .act = act, .act_stride = 0, .y = y, .acc = scores };
        return self;
    }

    pub fn destroy(self: *Bench) void {
        self.pool.deinit();
        allocator.free(self.data);
        allocator.free(self.act);
        allocator.free(self.y);
        allocator.free(self.sel);
        allocator.free(self.coeffs);
        allocator.free(self.acc);
        allocator.destroy(self);
    }

    /// Bytes of memory (or weights) one run reads.
    pub fn bytes(self: *const Bench) usize {
        if (self.kind == .matvec_row_pairs) return self.rows / 2 * 2 * self.row_bytes;
        return if (self.kind.selects()) self.sel.len * self.row_bytes else self.data.len;
    }

    /// One operation; returns its time in ns. Inputs are prepared at creation: decode prepares its
    /// input once per matrix and amortizes it over every row.
    pub fn run(self: *Bench) u64 {
        var timer = std.time.Timer.start() catch return 0;
        switch (self.kind) {
            .mem_read => self.pool.run(self, memReadJob, self.data.len / 64, 1 << 14),
            .matvec => {
                // Chunks as the engine cuts them (forward.zig's matmulFused): guided, multiples of 16.
                self.pool.runGuided(self, matvecJob, self.rows, 16);
            },
            .matvec_row_pairs => self.pool.runGuided(self, matvecRowPairsJob, self.rows / 2 * 2, 16),
            .matmul => self.pool.run(self, matmulJob, self.rows, 64),
            .gathered => self.pool.run(self, gatheredJob, (self.sel.len + cluster - 1) / cluster, 1),
            .mem_gathered => self.pool.run(self, memGatheredJob, (self.sel.len + cluster - 1) / cluster, 1),
            .axpy => self.pool.run(self, axpyJob, down_order.chunkCount(self.pool.threadCount()), 1),
            .attention => self.pool.run(self, attentionJob, attention_kv_heads, 1),
        }
        return timer.read();
    }

    fn memReadJob(ctx: *anyopaque, begin: usize, end: usize, _: usize) void {
        const self: *Bench = @ptrCast(@alignCast(ctx));
        const V = @Vector(8, u64);
        const lines: [*]const V = @ptrCast(self.data.ptr);
        var a: V = @splat(0);
        var b: V = @splat(0);
        // Prefetched as the matrix-vector kernels prefetch a stream (dot.zig's row pairs): into
        // L1 1.5 KiB ahead and into L2 3.5 KiB ahead. Without it this read measured 30-31 GB/s
        // on the Xeon KVM guest (2 threads), no more than the Q4_0 kernel then streamed weights
        // at; with it 36-37.
        const base: [*]const u8 = @ptrCast(lines);
        var i = begin;
        while (i + 1 < end) : (i += 2) {
            @prefetch(base + i * 64 + 1536, .{});
            @prefetch(base + i * 64 + 1536 + 64, .{});
            @prefetch(base + i * 64 + 3584, .{ .locality = 2 });
            @prefetch(base + i * 64 + 3584 + 64, .{ .locality = 2 });
            a +%= lines[i];
            b +%= lines[i + 1];
        }
        if (i < end) a +%= lines[i];
        _ = self.sink.fetchAdd(@reduce(.Add, a +% b), .monotonic);
    }

    /// Reads the selected rows as gatheredRows does (the rows `lookahead` ahead prefetched), with one
    /// add per 64 bytes: what scattered rows of this size can be read at, whatever computes on them.
    fn memGatheredJob(ctx: *anyopaque, begin: usize, end: usize, _: usize) void {
        const self: *Bench = @ptrCast(@alignCast(ctx));
        const V = @Vector(8, u64);
        const lookahead = 2;
        var a: V = @splat(0);
        const lines_per_row = self.row_bytes / 64;
        for (begin..end) |c| {
            const rows = self.sel[c * cluster .. @min((c + 1) * cluster, self.sel.len)];
            for (rows[0..@min(lookahead, rows.len)]) |r| dot.prefetchRow(self.data.ptr + r * self.row_bytes, self.row_bytes);
            for (rows, 0..) |r, k| {
                if (k + lookahead < rows.len) dot.prefetchRow(self.data.ptr + rows[k + lookahead] * self.row_bytes, self.row_bytes);
                const lines: [*]align(1) const V = @ptrCast(self.data.ptr + r * self.row_bytes);
                for (0..lines_per_row) |i| a +%= lines[i];
            }
        }
        _ = self.sink.fetchAdd(@reduce(.Add, a), .monotonic);
    }

    fn attentionJob(ctx: *anyopaque, begin: usize, end: usize, thread: usize) void {
        const self: *Bench = @ptrCast(@alignCast(ctx));
        switch (self.dtype) {
            .f16 => self.attention(f16, begin, end, thread),
            else => self.attention(f32, begin, end, thread),
        }
    }

    fn attention(self: *Bench, comptime T: type, begin: usize, end: usize, thread: usize) void {
        const all: []const T = @alignCast(std.mem.bytesAsSlice(T, self.data));
        const q: []const f32 = std.mem.bytesAsSlice(f32, self.act);
        const n = self.rows * self.cols;
        const group = self.tokens;
        const scores = self.acc[thread * group * self.rows ..][0 .. group * self.rows];
        const scale = 1.0 / @sqrt(@as(f32, @floatFromInt(self.cols)));
        for (begin..end) |h| {
            const qh = q[h * group * self.cols ..][0 .. group * self.cols];
            kernels.attention.attendGroup(T, qh, all[2 * h * n ..][0..n], all[(2 * h + 1) * n ..][0..n], self.rows, self.cols, group, scale, scores, self.rows, self.y[h * group * self.cols ..][0 .. group * self.cols]);
        }
    }

    fn matvecJob(ctx: *anyopaque, begin: usize, end: usize, _: usize) void {
        const self: *Bench = @ptrCast(@alignCast(ctx));
        dot.matvecRows(self.dtype, self.data.ptr, self.row_bytes, self.cols, self.act.ptr, self.y.ptr, begin, end);
    }

    fn matvecRowPairsJob(ctx: *anyopaque, begin: usize, end: usize, _: usize) void {
        const self: *Bench = @ptrCast(@alignCast(ctx));
        dot.matvecRowPairs(self.dtype, self.data.ptr, self.row_bytes, self.cols, self.act.ptr, self.y.ptr, begin, end);
    }

    fn gatheredJob(ctx: *anyopaque, begin: usize, end: usize, _: usize) void {
        const self: *Bench = @ptrCast(@alignCast(ctx));
        for (begin..end) |c| {
            const a = c * cluster;
            const b = @min(a + cluster, self.sel.len);
            dot.gatheredRows(self.dtype, self.data.ptr, self.row_bytes, self.cols, self.act.ptr, self.sel[a..b], self.y.ptr + a);
        }
    }

    fn axpyJob(ctx: *anyopaque, begin: usize, end: usize, _: usize) void {
        const self: *Bench = @ptrCast(@alignCast(ctx));
        const n_chunks = down_order.chunkCount(self.pool.threadCount());
        for (begin..end) |q| {
            const c = down_order.chunkColumns(self.cols, n_chunks, q);
            const at = self.dtype.rowBytes(c.begin).?;
            kernels.axpy.axpyRows(self.dtype, self.data.ptr + at, self.row_bytes, self.sel, self.coeffs.ptr, self.acc.ptr + c.begin, c.end - c.begin);
        }
    }

    fn matmulJob(ctx: *anyopaque, begin: usize, end: usize, _: usize) void {
        const self: *Bench = @ptrCast(@alignCast(ctx));
        kernels.matmul.matmul(self.dtype, self.data.ptr, self.row_bytes, self.cols, self.act.ptr, self.act_stride, self.tokens, self.y.ptr, self.rows, begin, end, false);
    }
};
