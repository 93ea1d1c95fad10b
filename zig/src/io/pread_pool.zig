//! The fallback backend where io_uring is missing (macOS, kernels before 5.6, seccomp, io_uring
//! disabled): worker threads each doing one blocking pread(2) per job (and the reaping caller too,
//! rather than sleep while a job waits for a worker).
//!
//! Jobs go in and results come out through two FIFOs under one mutex, with a condition variable
//! each (futex-backed in std.Thread); both FIFOs are sized to the ring's queue depth, which bounds
//! what can be queued, so nothing allocates after `create`. A worker touches only the job it was
//! handed (by value), never the ring's slots. `destroy` requires that nothing is in flight (the ring
//! drains first), then wakes and joins every worker.
const std = @import("std");
const posix = std.posix;
const job_mod = @import("job.zig");
const Job = job_mod.Job;
const Raw = job_mod.Raw;
const Fifo = job_mod.Fifo;
const sys = @import("sys.zig");

/// Small stacks: a worker's frames are a loop and a pread.
const worker_stack_bytes = 128 * 1024;

const Queued = struct { slot: u32, job: Job };

pub const PreadPool = struct {
    allocator: std.mem.Allocator,
    fd: posix.fd_t,
    mutex: std.Thread.Mutex = .{},
    work_ready: std.Thread.Condition = .{},
    result_ready: std.Thread.Condition = .{},
    todo: Fifo(Queued),
    done: Fifo(Raw),
    stop: bool = false,
    threads: []std.Thread,

    /// Starts `n_threads` workers reading `fd`, for at most `queue_depth` jobs at a time. On failure
    /// `spawn_error` names what std.Thread.spawn returned.
    pub fn create(allocator: std.mem.Allocator, fd: posix.fd_t, queue_depth: u32, n_threads: u32, spawn_error: *anyerror) error{ OutOfMemory, Spawn }!*PreadPool {
        std.debug.assert(queue_depth > 0 and n_threads > 0);
        const self = try allocator.create(PreadPool);
        errdefer allocator.destroy(self);
        var todo = try Fifo(Queued).init(allocator, queue_depth);
        errdefer todo.deinit(allocator);
        var done = try Fifo(Raw).init(allocator, queue_depth);
        errdefer done.deinit(allocator);
        const threads = try allocator.alloc(std.Thread, n_threads);
        errdefer allocator.free(threads);
        self.* = .{ .allocator = allocator, .fd = fd, .todo = todo, .done = done, .threads = threads };
        var spawned: usize = 0;
        errdefer self.joinWorkers(spawned);
        for (threads) |*t| {
            t.* = std.Thread.spawn(.{ .stack_size = worker_stack_bytes }, worker, .{self}) catch |e| {
                spawn_error.* = e;
                return error.Spawn;
            };
            spawned += 1;
        }
        return self;
    }

    /// Stops and joins the workers and frees the pool. Nothing may be in flight.
    pub fn destroy(self: *PreadPool) void {
        std.debug.assert(self.todo.len == 0);
        self.joinWorkers(self.threads.len);
        const allocator = self.allocator;
        self.todo.deinit(allocator);
        self.done.deinit(allocator);
        allocator.free(self.threads);
        allocator.destroy(self);
    }

    fn joinWorkers(self: *PreadPool, n: usize) void {
        {
            self.mutex.lock();
            defer self.mutex.unlock();
            self.stop = true;
            self.work_ready.broadcast();
        }
        for (self.threads[0..n]) |t| t.join();
    }

    pub fn start(self: *PreadPool, slot: u32, job: Job) void {
        self.mutex.lock();
        defer self.mutex.unlock();
        self.todo.push(.{ .slot = slot, .job = job });
        self.work_ready.signal();
    }

    /// Moves up to `out.len` results into `out`; with `wait`, first waits until one is there. A
    /// caller about to sleep reads a job no worker has taken yet itself: at queue depth 1 that saves
    /// waking a worker and being woken by it, two trips through the scheduler per read.
    pub fn poll(self: *PreadPool, out: []Raw, wait: bool) usize {
        self.mutex.lock();
        defer self.mutex.unlock();
        if (wait) {
            while (self.done.len == 0) {
                if (self.todo.pop()) |q| {
                    self.mutex.unlock();
                    const res = sys.pread(self.fd, q.job.dst, q.job.len, q.job.offset);
                    self.mutex.lock();
                    self.done.push(.{ .slot = q.slot, .res = res });
                } else self.result_ready.wait(&self.mutex);
            }
        }
        var n: usize = 0;
        while (n < out.len) : (n += 1) out[n] = self.done.pop() orelse break;
        return n;
    }

    fn worker(self: *PreadPool) void {
        self.mutex.lock();
        defer self.mutex.unlock();
        while (true) {
            while (self.todo.len == 0 and !self.stop) self.work_ready.wait(&self.mutex);
            const q = self.todo.pop() orelse return; // empty only when stopping
            self.mutex.unlock();
            const res = sys.pread(self.fd, q.job.dst, q.job.len, q.job.offset);
            self.mutex.lock();
            self.done.push(.{ .slot = q.slot, .res = res });
            self.result_ready.signal();
        }
    }
};

test "a pool reads jobs and reports errors per job" {
    var tmp = std.testing.tmpDir(.{});
    defer tmp.cleanup();
    var data: [8192]u8 = undefined;
    for (&data, 0..) |*b, i| b.* = @truncate(i *% 7 + 3);
    try tmp.dir.writeFile(.{ .sub_path = "f", .data = &data });
    const file = try tmp.dir.openFile("f", .{});
    defer file.close();

    var spawn_error: anyerror = undefined;
    const pool = try PreadPool.create(std.testing.allocator, file.handle, 4, 2, &spawn_error);
    defer pool.destroy();
    var dst: [3][1000]u8 = undefined;
    pool.start(0, .{ .offset = 100, .dst = &dst[0], .len = 1000 });
    pool.start(1, .{ .offset = 8000, .dst = &dst[1], .len = 1000 }); // 192 bytes before the end
    pool.start(2, .{ .offset = 1 << 40, .dst = &dst[2], .len = 1000 }); // past the end
    var got = [_]i64{ -1, -1, -1 };
    var raw: [4]Raw = undefined;
    var n: usize = 0;
    while (n < 3) {
        const k = pool.poll(&raw, true);
        for (raw[0..k]) |r| got[r.slot] = r.res;
        n += k;
    }
    try std.testing.expectEqual([_]i64{ 1000, 192, 0 }, got);
    try std.testing.expectEqualSlices(u8, data[100..1100], &dst[0]);
    try std.testing.expectEqualSlices(u8, data[8000..], dst[1][0..192]);
}
