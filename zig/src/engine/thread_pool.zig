//! A persistent pool of worker threads owned by the core. Threads are created once, when a session
//! is created; running a job allocates nothing and creates nothing.
//!
//! A job is "call `func(ctx, begin, end, thread)` over [0, n_items) in chunks of `grain`", where
//! `thread` (0 = the caller) indexes per-thread scratch. The caller thread
//! works too, and chunks are handed out from an atomic counter so a slow thread never holds the
//! others up. Waiting threads (workers between jobs, the caller at the end of one) spin briefly,
//! since the next job in a decode step follows within microseconds, yielding the core now and then
//! in case another process needs it, and then sleep on a futex: an idle session costs no CPU, and a
//! loaded machine does not lose time slices to spinning.
const std = @import("std");
const Futex = std.Thread.Futex;
const AtomicU32 = std.atomic.Value(u32);
const AtomicUsize = std.atomic.Value(usize);

pub const max_threads = 256;

/// Spin iterations before a waiting thread sleeps: ~10-30 µs on current x86 cores.
const spin_before_sleep = 4_000;
/// While spinning, yield the core every this many iterations (matters when cores are oversubscribed).
const spins_per_yield = 256;

inline fn spinOnce(spins: usize) void {
    if (spins % spins_per_yield == 0) std.Thread.yield() catch {} else std.atomic.spinLoopHint();
}

pub const JobFn = *const fn (ctx: *anyopaque, begin: usize, end: usize, thread: usize) void;

pub const ThreadPool = struct {
    workers: []std.Thread,
    allocator: std.mem.Allocator,

    // The current job. Written by the caller before `generation` is bumped, read by workers after
    // they observe the bump (release/acquire on `generation`).
    job_fn: JobFn = undefined,
    job_ctx: *anyopaque = undefined,
    n_items: usize = 0,
    grain: usize = 1,
    /// Guided hand-out (see `runGuided`): chunks shrink with the items left, down to `grain`.
    guided: bool = false,
    next_item: AtomicUsize = AtomicUsize.init(0),

    generation: AtomicU32 = AtomicU32.init(0),
    /// Workers that have not finished the current job.
    pending: AtomicU32 = AtomicU32.init(0),
    /// Workers asleep on the `generation` futex; the caller only issues a wake syscall when > 0.
    sleepers: AtomicU32 = AtomicU32.init(0),
    /// 1 while the caller sleeps on the `pending` futex; the last worker to finish then wakes it.
    caller_sleeping: AtomicU32 = AtomicU32.init(0),
    shutdown: std.atomic.Value(bool) = std.atomic.Value(bool).init(false),

    /// Creates a pool that runs jobs on `n_threads` threads in all (the caller counts as one).
    pub fn init(allocator: std.mem.Allocator, n_threads: usize) !*ThreadPool {
        std.debug.assert(n_threads >= 1 and n_threads <= max_threads);
        const self = try allocator.create(ThreadPool);
        errdefer allocator.destroy(self);
        self.* = .{ .workers = try allocator.alloc(std.Thread, n_threads - 1), .allocator = allocator };
        errdefer allocator.free(self.workers);
        var spawned: usize = 0;
        errdefer {
            self.shutdown.store(true, .seq_cst);
            _ = self.generation.fetchAdd(1, .seq_cst);
            Futex.wake(&self.generation, std.math.maxInt(u32));
            for (self.workers[0..spawned]) |t| t.join();
        }
        for (self.workers, 1..) |*t, thread| {
            t.* = try std.Thread.spawn(.{ .stack_size = 1 << 20 }, workerMain, .{ self, thread });
            spawned += 1;
        }
        return self;
    }

    pub fn deinit(self: *ThreadPool) void {
        self.shutdown.store(true, .seq_cst);
        _ = self.generation.fetchAdd(1, .seq_cst);
        Futex.wake(&self.generation, std.math.maxInt(u32));
        for (self.workers) |t| t.join();
        const allocator = self.allocator;
        allocator.free(self.workers);
        allocator.destroy(self);
    }

    pub fn threadCount(self: *const ThreadPool) usize {
        return self.workers.len + 1;
    }

    /// Runs `func(ctx, begin, end, thread)` over [0, n_items) in chunks of at most `grain`, on all threads,
    /// and returns when every chunk is done. Not reentrant: one job at a time per pool.
    pub fn run(self: *ThreadPool, ctx: *anyopaque, func: JobFn, n_items: usize, grain: usize) void {
        self.post(ctx, func, n_items, grain, false);
    }

    /// `run` with guided chunks: each thread takes 1 / (2 * threads) of the items left, rounded up
    /// to a multiple of `grain` (at least `grain`), so the first chunks are long and the last ones
    /// short. For streamed reads (matrix-vector products): every chunk boundary restarts a thread's
    /// stream and its prefetch, while short chunks at the end keep the threads finishing together.
    /// A standalone test on 2 GB of Q4_0 rows, 2 threads: chunks of 256-384 rows (what fixed chunks
    /// of an eighth of a thread's share come to for a 7B attention matrix) read at 26.4-26.7 GB/s,
    /// chunks of 4096 rows and more at 27.2-27.7.
    pub fn runGuided(self: *ThreadPool, ctx: *anyopaque, func: JobFn, n_items: usize, grain: usize) void {
        self.post(ctx, func, n_items, grain, true);
    }

    fn post(self: *ThreadPool, ctx: *anyopaque, func: JobFn, n_items: usize, grain: usize, guided: bool) void {
        if (n_items == 0) return;
        std.debug.assert(grain >= 1);
        if (self.workers.len == 0 or n_items <= grain) {
            func(ctx, 0, n_items, 0);
            return;
        }
        self.job_fn = func;
        self.job_ctx = ctx;
        self.n_items = n_items;
        self.grain = grain;
        self.guided = guided;
        self.next_item.store(0, .monotonic);
        self.pending.store(@intCast(self.workers.len), .monotonic);
        _ = self.generation.fetchAdd(1, .seq_cst);
        if (self.sleepers.load(.seq_cst) > 0) Futex.wake(&self.generation, std.math.maxInt(u32));

        self.workChunks(0);

        var spins: usize = 0;
        while (true) {
            const left = self.pending.load(.acquire);
            if (left == 0) break;
            spins += 1;
            if (spins < spin_before_sleep) {
                spinOnce(spins);
            } else {
                self.caller_sleeping.store(1, .seq_cst);
                Futex.wait(&self.pending, left);
                self.caller_sleeping.store(0, .seq_cst);
            }
        }
    }

    fn workChunks(self: *ThreadPool, thread: usize) void {
        if (self.guided) return self.workGuided(thread);
        while (true) {
            const begin = self.next_item.fetchAdd(self.grain, .monotonic);
            if (begin >= self.n_items) return;
            self.job_fn(self.job_ctx, begin, @min(begin + self.grain, self.n_items), thread);
        }
    }

    fn workGuided(self: *ThreadPool, thread: usize) void {
        const share = 2 * self.threadCount();
        var begin = self.next_item.load(.monotonic);
        while (begin < self.n_items) {
            const left = self.n_items - begin;
            const size = @max(self.grain, (left / share + self.grain - 1) / self.grain * self.grain);
            const end = @min(self.n_items, begin + size);
            if (self.next_item.cmpxchgWeak(begin, end, .monotonic, .monotonic)) |seen| {
                begin = seen;
                continue;
            }
            self.job_fn(self.job_ctx, begin, end, thread);
            begin = self.next_item.load(.monotonic);
        }
    }

    fn workerMain(self: *ThreadPool, thread: usize) void {
        // Start from the generation the pool was created with, not the current one: a job may have
        // been posted before this thread got to run, and it must not be skipped.
        var seen: u32 = 0;
        while (true) {
            var spins: usize = 0;
            while (self.generation.load(.acquire) == seen) {
                spins += 1;
                if (spins < spin_before_sleep) {
                    spinOnce(spins);
                } else {
                    _ = self.sleepers.fetchAdd(1, .seq_cst);
                    Futex.wait(&self.generation, seen);
                    _ = self.sleepers.fetchSub(1, .seq_cst);
                }
            }
            seen = self.generation.load(.acquire);
            if (self.shutdown.load(.acquire)) return;
            self.workChunks(thread);
            if (self.pending.fetchSub(1, .seq_cst) == 1 and self.caller_sleeping.load(.seq_cst) != 0) {
                Futex.wake(&self.pending, 1);
            }
        }
    }
};

test "every item is processed exactly once, on any thread count" {
    const Counter = struct {
        hits: []AtomicU32,
        fn job(ctx: *anyopaque, begin: usize, end: usize, thread: usize) void {
            std.debug.assert(thread < max_threads);
            const self: *@This() = @ptrCast(@alignCast(ctx));
            for (begin..end) |i| _ = self.hits[i].fetchAdd(1, .monotonic);
        }
    };
    const gpa = std.testing.allocator;
    for ([_]usize{ 1, 2, 3, 8 }) |n_threads| {
        const pool = try ThreadPool.init(gpa, n_threads);
        defer pool.deinit();
        const hits = try gpa.alloc(AtomicU32, 1000);
        defer gpa.free(hits);
        for (hits) |*h| h.* = AtomicU32.init(0);
        var counter = Counter{ .hits = hits };
        for (0..50) |_| pool.run(&counter, Counter.job, hits.len, 7);
        for (hits) |h| try std.testing.expectEqual(@as(u32, 50), h.load(.monotonic));
        for (0..50) |_| pool.runGuided(&counter, Counter.job, hits.len, 7);
        for (hits) |h| try std.testing.expectEqual(@as(u32, 100), h.load(.monotonic));
    }
}
