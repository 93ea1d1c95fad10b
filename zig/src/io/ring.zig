//! The I/O ring: reads of a file, many in flight at once, for streaming cold neuron bundles from
//! disk while the engine computes (after TigerBeetle's io/linux.zig: a fixed number of reads in
//! flight, buffers registered once, an overflow queue, every errno named).
//!
//! API
//!
//!   const ring = try Ring.open(allocator, path, .{ .queue_depth = 32 }, registered, &sink);
//!   defer ring.close();
//!   try ring.submit(&.{ .{ .offset = 0, .len = 4096, .dst = buf.ptr, .tag = 7 } });
//!   var done: [32]Completion = undefined;
//!   const n = try ring.reap(&done, 1); // done[0..n]: .tag, .status (ok or why not), .bytes
//!
//! - `open(allocator, path, Options, registered: ?[]align(4096) u8, sink) Error!*Ring` opens
//!   `path` read-only and picks the method at run time: io_uring when asked for or, with
//!   `method = null`, when io_uring_setup succeeds and the kernel has IORING_OP_READ; else a pool
//!   of pread threads. `mmap` only when asked for. `note()` says which runs and why. With
//!   `direct` (the default) the file is opened O_DIRECT, so reads reach the disk and not the page
//!   cache; a file system that refuses O_DIRECT (EINVAL) is opened buffered and the note says so.
//!   `registered` (io_uring only) is registered once (IORING_REGISTER_BUFFERS, one iovec); reads
//!   whose destination lies inside it use IORING_OP_READ_FIXED. The caller keeps it alive until
//!   `close` returns. If the kernel refuses the registration (RLIMIT_MEMLOCK, over 1 GiB) the ring
//!   still works, with plain reads, and the note says so.
//! - `submit(reads)` starts up to `queue_depth` reads and queues the rest in an overflow FIFO,
//!   started as earlier reads complete; it never waits for the disk. It checks every read first
//!   and starts none if one is bad: under O_DIRECT, offset, length and destination address must be
//!   multiples of `alignment()` (512, or what the kernel reports for the file if larger). The
//!   FIFO is allocated at open (`overflow_capacity`) and grows by doubling when a submit needs
//!   more, so a steady state allocates nothing.
//! - `reap(out, wait_min)` fills `out` with completions, waiting until at least
//!   min(wait_min, out.len, outstanding()) are there. A short read that is not at end of file is
//!   resubmitted for the rest without the caller seeing it; a read that runs past end of file
//!   completes `truncated` with `bytes` = what there was; an errno (EIO, ...) completes that read
//!   alone with a named status. The ring's `sink` holds the message of the last failed read
//!   (path, offset, length, errno). EINTR/EAGAIN are retried a few times first.
//! - `outstanding()` counts reads submitted and not yet reaped (in flight or queued).
//! - `drain()` abandons queued reads and waits for those in flight, discarding their results.
//! - `close()` drains, then frees: the kernel is never left writing into memory the caller may
//!   reuse. Completions not reaped are lost.
//!
//! Not thread-safe, by design: one caller at a time (the engine serializes its calls), though
//! not necessarily always the same thread. Method `mmap` copies during `submit` and `reap`;
//! `pread_pool` reads on its own threads, which touch only the memory of the reads they were given.
//!
//! Files: this one keeps reads reliable (slots, overflow, short reads, faults, messages);
//! backend.zig opens the file and picks the method; uring.zig, pread_pool.zig and mmap_reader.zig
//! are the methods; io_errors.zig names errnos; io_fault.zig injects faults for tests; sys.zig
//! makes the errno-preserving system calls; io_bench.zig is sp_io_bench; ring_test.zig the tests.
const std = @import("std");
const posix = std.posix;
const ErrorSink = @import("../status.zig").ErrorSink;
const io_errors = @import("io_errors.zig");
const io_fault = @import("io_fault.zig");
const job_mod = @import("job.zig");
const Job = job_mod.Job;
const Raw = job_mod.Raw;
const Fifo = job_mod.Fifo;
const uring = @import("uring.zig");
const backend_mod = @import("backend.zig");
const Backend = backend_mod.Backend;

pub const Error = io_errors.Error;
pub const IoStatus = io_errors.IoStatus;

pub const Method = backend_mod.Method;

pub const Options = struct {
    /// Reads in flight at once, [1, max_queue_depth].
    queue_depth: u32 = 32,
    /// null: io_uring where it works, else the pread pool.
    method: ?Method = null,
    /// Open with O_DIRECT (ignored by mmap).
    direct: bool = true,
    /// Worker threads of the pread pool, [1, max_pread_threads]; more than queue_depth is useless.
    pread_threads: u32 = 2,
    /// Reads the overflow FIFO holds before it first grows.
    overflow_capacity: u32 = 256,
};

/// Read `len` bytes at `offset` of the file into `dst`; `tag` comes back in the completion.
pub const Read = struct {
    offset: u64,
    len: u32,
    dst: [*]u8,
    tag: u64,
};

pub const Completion = struct {
    tag: u64,
    status: IoStatus,
    /// Bytes read into dst (all of `len` when ok; what there was when truncated or failed).
    bytes: u32,
};

pub const max_queue_depth = 4096;
pub const max_pread_threads = 64;
/// The alignment O_DIRECT reads are checked against unless the kernel reports a larger one.
pub const direct_alignment_min = backend_mod.direct_alignment_min;
/// EINTR/EAGAIN on one read are retried this many times before it completes with the error.
const retries_max = 8;

/// One read in flight.
const Slot = struct {
    read: Read,
    /// Bytes already read (more than 0 after a short read).
    done: u32 = 0,
    /// Number for the fault plan (0 when none is set).
    ordinal: u64,
    /// The next result is the read's first (the one a fault acts on).
    first: bool = true,
    retries: u8 = 0,
    /// A fault said the file ends where this read's short result stopped.
    fault_eof: bool = false,
    /// A fault acted on this read; its message says so.
    faulted: bool = false,
};

pub const Ring = struct {
    allocator: std.mem.Allocator,
    /// NUL-terminated copy of the path, for open and for messages.
    path: [:0]u8,
    fd: posix.fd_t,
    /// File size at open (for messages and the mmap backend).
    file_size: u64,
    /// O_DIRECT is in effect.
    direct: bool,
    /// Reads must be multiples of this (1 when not direct).
    align_bytes: u32,
    backend: Backend,
    slots: []Slot,
    /// Indices of free slots (a stack), `free_len` of them.
    free: []u32,
    free_len: usize,
    /// Reads submitted and not yet started, oldest first.
    overflow: std.fifo.LinearFifo(Read, .Dynamic),
    /// Results produced without the kernel (mmap copies, the end of a faulted file), polled before
    /// the backend's.
    ready: Fifo(Raw),
    /// Results being processed by one reap step.
    scratch: []Raw,
    note_text: backend_mod.Note,
    /// The message of the last failure on this ring (a failed read, a failed submit or reap).
    sink: ErrorSink = .{},

    pub fn open(allocator: std.mem.Allocator, path: []const u8, options: Options, registered: ?[]align(4096) u8, sink: *ErrorSink) Error!*Ring {
        if (path.len == 0 or std.mem.indexOfScalar(u8, path, 0) != null)
            return fail(sink, error.InvalidArgument, "I/O ring: the file path is empty or contains a NUL byte", .{});
        if (options.queue_depth == 0 or options.queue_depth > max_queue_depth)
            return fail(sink, error.InvalidArgument, "I/O ring on '{s}': queue depth {d} is outside [1, {d}]", .{ path, options.queue_depth, max_queue_depth });
        if (options.pread_threads == 0 or options.pread_threads > max_pread_threads)
            return fail(sink, error.InvalidArgument, "I/O ring on '{s}': {d} pread threads is outside [1, {d}]", .{ path, options.pread_threads, max_pread_threads });

        const self = allocator.create(Ring) catch return outOfMemory(sink, path);
        errdefer allocator.destroy(self);
        const path_z = allocator.dupeZ(u8, path) catch return outOfMemory(sink, path);
        errdefer allocator.free(path_z);
        var note_buf: backend_mod.Note = .{};
        const opened = try backend_mod.open(allocator, path_z, .{
            .method = options.method,
            .direct = options.direct,
            .queue_depth = options.queue_depth,
            .pread_threads = options.pread_threads,
        }, registered, sink, &note_buf);
        errdefer posix.close(opened.fd);
        var backend = opened.backend;
        errdefer backend.deinit();

        const slots = allocator.alloc(Slot, options.queue_depth) catch return outOfMemory(sink, path);
        errdefer allocator.free(slots);
        const free = allocator.alloc(u32, options.queue_depth) catch return outOfMemory(sink, path);
        errdefer allocator.free(free);
        for (free, 0..) |*f, i| f.* = @intCast(options.queue_depth - 1 - i); // slot 0 is used first
        const scratch = allocator.alloc(Raw, options.queue_depth) catch return outOfMemory(sink, path);
        errdefer allocator.free(scratch);
        var ready = Fifo(Raw).init(allocator, options.queue_depth) catch return outOfMemory(sink, path);
        errdefer ready.deinit(allocator);
        var overflow = std.fifo.LinearFifo(Read, .Dynamic).init(allocator);
        overflow.ensureTotalCapacity(options.overflow_capacity) catch return outOfMemory(sink, path);

        self.* = .{
            .allocator = allocator,
            .path = path_z,
            .fd = opened.fd,
            .file_size = opened.file_size,
            .direct = opened.direct,
            .align_bytes = opened.align_bytes,
            .backend = backend,
            .slots = slots,
            .free = free,
            .free_len = free.len,
            .overflow = overflow,
            .ready = ready,
            .scratch = scratch,
            .note_text = note_buf,
        };
        return self;
    }

    /// Waits for the reads in flight (abandoning queued ones), then frees everything. If the
    /// kernel cannot be waited on (io_uring_enter failing), the ring's memory and descriptors are
    /// leaked rather than freed under the kernel's feet.
    pub fn close(self: *Ring) void {
        if (!self.drain()) return;
        self.backend.deinit();
        posix.close(self.fd);
        const allocator = self.allocator;
        self.overflow.deinit();
        self.ready.deinit(allocator);
        allocator.free(self.scratch);
        allocator.free(self.free);
        allocator.free(self.slots);
        allocator.free(self.path);
        allocator.destroy(self);
    }

    pub fn method(self: *const Ring) Method {
        return std.meta.activeTag(self.backend);
    }

    /// Which method runs and why, in a sentence.
    pub fn note(self: *const Ring) []const u8 {
        return self.note_text.slice();
    }

    /// Whether reads bypass the page cache (O_DIRECT in effect).
    pub fn isDirect(self: *const Ring) bool {
        return self.direct;
    }

    /// What offsets, lengths and destinations must be multiples of (1 without O_DIRECT).
    pub fn alignment(self: *const Ring) u32 {
        return self.align_bytes;
    }

    pub fn fileSize(self: *const Ring) u64 {
        return self.file_size;
    }

    /// Reads submitted and not yet reaped.
    pub fn outstanding(self: *const Ring) usize {
        return self.inFlight() + self.overflow.readableLength();
    }

    fn inFlight(self: *const Ring) usize {
        return self.slots.len - self.free_len;
    }

    pub fn submit(self: *Ring, reads: []const Read) Error!void {
        for (reads, 0..) |r, i| try self.check(r, i);
        if (reads.len > self.free_len) {
            self.overflow.ensureUnusedCapacity(reads.len - self.free_len) catch
                return fail(&self.sink, error.OutOfMemory, "out of memory queueing {d} reads of '{s}'", .{ reads.len, self.path });
        }
        for (reads) |r| {
            if (self.free_len > 0 and self.overflow.readableLength() == 0) {
                self.startNew(r);
            } else {
                self.overflow.writeItemAssumeCapacity(r);
            }
        }
        try self.flush();
    }

    fn check(self: *Ring, r: Read, index: usize) Error!void {
        if (r.offset > std.math.maxInt(i64) - @as(u64, r.len))
            return fail(&self.sink, error.InvalidArgument, "read {d} (tag {d}) of '{s}': offset {d} + {d} bytes is beyond any file", .{ index, r.tag, self.path, r.offset, r.len });
        const a = self.align_bytes;
        if (r.offset % a != 0 or r.len % a != 0 or @intFromPtr(r.dst) % a != 0)
            return fail(&self.sink, error.InvalidArgument, "read {d} (tag {d}) of '{s}': offset {d}, length {d} and destination 0x{x} must all be multiples of {d} for O_DIRECT", .{ index, r.tag, self.path, r.offset, r.len, @intFromPtr(r.dst), a });
    }

    fn startNew(self: *Ring, r: Read) void {
        self.free_len -= 1;
        const index = self.free[self.free_len];
        self.slots[index] = .{ .read = r, .ordinal = io_fault.nextOrdinal() };
        self.launch(index);
    }

    /// Hands the rest of slot `index`'s read to the backend.
    fn launch(self: *Ring, index: u32) void {
        const s = &self.slots[index];
        if (s.fault_eof) return self.ready.push(.{ .slot = index, .res = 0 });
        const job = Job{ .offset = s.read.offset + s.done, .dst = s.read.dst + s.done, .len = s.read.len - s.done };
        self.backend.start(index, job, &self.ready);
    }

    fn flush(self: *Ring) Error!void {
        if (self.backend.flush()) |e| return self.enterFailed(e);
    }

    fn enterFailed(self: *Ring, e: uring.EnterError) Error {
        return fail(&self.sink, error.Io, "io_uring_enter for '{s}' failed: {}", .{ self.path, io_errors.errno(e.errno) });
    }

    pub fn reap(self: *Ring, out: []Completion, wait_min: usize) Error!usize {
        const want = @min(wait_min, out.len, self.outstanding());
        var n: usize = 0;
        while (n < out.len) {
            const room = self.scratch[0..@min(out.len - n, self.scratch.len)];
            var got = try self.poll(room, false);
            if (got == 0) {
                if (n >= want) break;
                // Reads are outstanding, so some are in flight (the overflow only holds reads while
                // every slot is busy), and none has its result in `ready`: the backend has them.
                std.debug.assert(self.inFlight() > 0 and self.ready.len == 0);
                got = try self.poll(room, true);
            }
            for (room[0..got]) |raw| {
                if (self.finish(raw)) |c| {
                    out[n] = c;
                    n += 1;
                }
            }
            self.promote();
        }
        // Resubmitted and promoted reads go to the kernel now (a wait above already took along
        // what was queued before it).
        try self.flush();
        return n;
    }

    /// Results from `ready`, then from the backend (waiting for one if `wait` and none is ready).
    fn poll(self: *Ring, out: []Raw, wait: bool) Error!usize {
        var n: usize = 0;
        while (n < out.len) : (n += 1) out[n] = self.ready.pop() orelse break;
        var e: uring.EnterError = undefined;
        n += self.backend.poll(out[n..], wait and n == 0, &e) catch return self.enterFailed(e);
        return n;
    }

    /// Starts queued reads in the slots that completions freed.
    fn promote(self: *Ring) void {
        while (self.free_len > 0) {
            const r = self.overflow.readItem() orelse return;
            self.startNew(r);
        }
    }

    /// Applies a result to its slot: a completion, or null when the read goes on (short read).
    fn finish(self: *Ring, raw: Raw) ?Completion {
        const s = &self.slots[raw.slot];
        const remaining = s.read.len - s.done;
        var res = raw.res;
        if (s.first) {
            s.first = false;
            switch (io_fault.effectFor(s.ordinal)) {
                .none => {},
                .fail => |e| {
                    res = -@as(i64, e);
                    s.faulted = true;
                },
                // Half of what was asked, on a block boundary. A truncated file can end at the
                // read's offset (nothing read); a transient short read needs something to resubmit.
                .short => |short| if (res > 0) {
                    const cut = alignDown(remaining / 2, self.align_bytes);
                    if (short.eof or (cut > 0 and cut < res)) {
                        res = @min(res, cut);
                        s.fault_eof = short.eof;
                        s.faulted = true;
                    }
                },
            }
        }
        if (res < 0) {
            const e = io_errors.errnoFromInt(@intCast(-res));
            if ((e == .INTR or e == .AGAIN) and s.retries < retries_max) {
                s.retries += 1;
                self.launch(raw.slot);
                return null;
            }
            return self.complete(raw.slot, IoStatus.fromErrno(e), e);
        }
        if (res > remaining) return self.complete(raw.slot, .unexpected, null);
        if (res == 0 and remaining > 0) return self.complete(raw.slot, .truncated, null);
        s.done += @intCast(res);
        if (s.done == s.read.len) return self.complete(raw.slot, .ok, null);
        // Short. Under O_DIRECT the kernel stops short of a block boundary only at end of file, and
        // the rest could not be asked for anyway.
        if (s.done % self.align_bytes != 0) return self.complete(raw.slot, .truncated, null);
        self.launch(raw.slot);
        return null;
    }

    fn complete(self: *Ring, index: u32, st: IoStatus, e: ?posix.E) Completion {
        const s = &self.slots[index];
        if (st != .ok) {
            const fault_note: []const u8 = if (s.faulted) " (injected by the fault plan)" else "";
            const r = s.read;
            if (st == .truncated) {
                _ = self.sink.fail(.io, "read of {d} bytes at offset {d} of '{s}' is truncated: the file ends at offset {d} ({d} bytes read; {d} at open){s}", .{ r.len, r.offset, self.path, r.offset + s.done, s.done, self.file_size, fault_note });
            } else if (e) |errno| {
                _ = self.sink.fail(.io, "read of {d} bytes at offset {d} of '{s}' failed after {d} bytes: {}{s}", .{ r.len, r.offset, self.path, s.done, io_errors.errno(errno), fault_note });
            } else {
                _ = self.sink.fail(.io, "read of {d} bytes at offset {d} of '{s}': the kernel returned more bytes than asked for", .{ r.len, r.offset, self.path });
            }
        }
        const c = Completion{ .tag = s.read.tag, .status = st, .bytes = s.done };
        self.free[self.free_len] = index;
        self.free_len += 1;
        return c;
    }

    /// Abandons queued reads and waits for those in flight, discarding their results. False if the
    /// kernel could not be waited on (the sink says why); the reads may then still be running.
    pub fn drain(self: *Ring) bool {
        self.overflow.discard(self.overflow.readableLength());
        var failures: u32 = 0;
        while (self.inFlight() > 0) {
            const got = self.poll(self.scratch, true) catch {
                failures += 1;
                if (failures > 100) return false;
                std.time.sleep(10 * std.time.ns_per_ms);
                continue;
            };
            for (self.scratch[0..got]) |raw| {
                self.free[self.free_len] = raw.slot;
                self.free_len += 1;
            }
        }
        return true;
    }
};

fn alignDown(v: u32, a: u32) u32 {
    return v - v % a;
}

fn fail(sink: *ErrorSink, e: Error, comptime fmt: []const u8, args: anytype) Error {
    _ = sink.fail(io_errors.status(e), fmt, args);
    return e;
}

fn outOfMemory(sink: *ErrorSink, path: []const u8) Error {
    return fail(sink, error.OutOfMemory, "out of memory opening an I/O ring on '{s}'", .{path});
}
