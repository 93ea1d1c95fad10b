//! The three ways a ring reads (io_uring, a pread thread pool, mmap) behind one interface, and the
//! choice among them at open, made at run time and put into words for `Ring.note()`.
//!
//! A backend takes jobs (`start`) and gives back raw results (`poll`); everything that makes reads
//! reliable (slots, the overflow queue, short reads, faults, messages) is the ring's, written once
//! for all three. mmap copies at once, so its results go straight into the ring's `ready` queue.
const std = @import("std");
const posix = std.posix;
const ErrorSink = @import("../status.zig").ErrorSink;
const io_errors = @import("io_errors.zig");
const io_fault = @import("io_fault.zig");
const sys = @import("sys.zig");
const job_mod = @import("job.zig");
const Job = job_mod.Job;
const Raw = job_mod.Raw;
const Fifo = job_mod.Fifo;
const uring = @import("uring.zig");
const Uring = uring.Uring;
const PreadPool = @import("pread_pool.zig").PreadPool;
const MmapReader = @import("mmap_reader.zig").MmapReader;

const Error = io_errors.Error;

pub const Method = enum(u32) {
    io_uring = 0,
    pread_pool = 1,
    mmap = 2,
};

/// Reads must be multiples of this under O_DIRECT unless the kernel reports a larger alignment.
pub const direct_alignment_min = 512;

/// The sentence saying which method runs and why; fixed size, so building it cannot fail (a
/// sentence too long is cut short).
pub const Note = struct {
    buf: [512]u8 = undefined,
    len: usize = 0,

    pub fn print(self: *Note, comptime fmt: []const u8, args: anytype) void {
        const written = std.fmt.bufPrint(self.buf[self.len..], fmt, args) catch return;
        self.len += written.len;
    }

    pub fn slice(self: *const Note) []const u8 {
        return self.buf[0..self.len];
    }
};

pub const Setup = struct {
    method: ?Method,
    direct: bool,
    queue_depth: u32,
    pread_threads: u32,
};

pub const Opened = struct {
    fd: posix.fd_t,
    file_size: u64,
    /// O_DIRECT is in effect.
    direct: bool,
    /// What reads must be multiples of (1 when not direct).
    align_bytes: u32,
    backend: Backend,
};

/// Opens `path` and starts the method `setup` asks for (null: io_uring, else the pread pool),
/// registering `registered` with io_uring. Says what it did in `note`, and why it failed in `sink`.
pub fn open(allocator: std.mem.Allocator, path: [:0]const u8, setup: Setup, registered: ?[]align(4096) u8, sink: *ErrorSink, note: *Note) Error!Opened {
    // The file. mmap reads through the page cache whatever the flags, so it never asks for O_DIRECT.
    const want_direct = setup.direct and setup.method != .mmap and sys.has_o_direct;
    var direct_note: enum { on, refused, off, not_applicable } = if (want_direct) .on else if (setup.method == .mmap) .not_applicable else .off;
    var fd_or_errno: i64 = if (want_direct) openDirect(path) else sys.openRead(path, false);
    if (want_direct and fd_or_errno == -@as(i64, @intFromEnum(posix.E.INVAL))) {
        direct_note = .refused;
        fd_or_errno = sys.openRead(path, false);
    }
    if (fd_or_errno < 0) return fail(sink, error.Io, "cannot open '{s}': {}", .{ path, io_errors.errno(io_errors.errnoFromInt(@intCast(-fd_or_errno))) });
    const fd: posix.fd_t = @intCast(fd_or_errno);
    errdefer posix.close(fd);
    const stat = posix.fstat(fd) catch |e| return fail(sink, error.Io, "cannot stat '{s}': {s}", .{ path, @errorName(e) });
    if (posix.S.ISDIR(stat.mode)) return fail(sink, error.InvalidArgument, "'{s}' is a directory, not a file", .{path});
    const file_size: u64 = @intCast(@max(stat.size, 0));
    const direct = direct_note == .on;
    const align_bytes: u32 = if (direct) @max(direct_alignment_min, sys.directAlignment(fd) orelse 0) else 1;

    // The method.
    var backend: Backend = undefined;
    switch (setup.method orelse .io_uring) {
        .io_uring => {
            var why: uring.Failure = undefined;
            if (Uring.init(setup.queue_depth, fd, &why)) |u| {
                backend = .{ .io_uring = u };
                note.print("io_uring{s}, queue depth {d}", .{ if (setup.method == null) " (best available)" else "", setup.queue_depth });
            } else |_| {
                if (setup.method != null)
                    return fail(sink, error.Unsupported, "io_uring is not available for '{s}' ({s}: {}{s}); open the ring with method auto or pread_pool", .{ path, why.call, io_errors.errno(why.errno), injected(why.injected) });
                backend = .{ .pread_pool = try startPool(allocator, fd, setup, path, sink) };
                note.print("io_uring unavailable ({s}: {}{s}); using a pread pool of {d} threads, queue depth {d}", .{ why.call, io_errors.errno(why.errno), injected(why.injected), setup.pread_threads, setup.queue_depth });
            }
        },
        .pread_pool => {
            backend = .{ .pread_pool = try startPool(allocator, fd, setup, path, sink) };
            note.print("pread pool of {d} threads (requested), queue depth {d}", .{ setup.pread_threads, setup.queue_depth });
        },
        .mmap => {
            var why: anyerror = undefined;
            backend = .{ .mmap = MmapReader.init(fd, file_size, &why) catch
                return fail(sink, error.Io, "cannot map '{s}' ({d} bytes): {s}", .{ path, file_size, @errorName(why) }) };
            note.print("mmap (requested): reads copy from a read-only mapping, queue depth {d}", .{setup.queue_depth});
        },
    }
    switch (direct_note) {
        .on => note.print("; O_DIRECT, reads aligned to {d} bytes", .{align_bytes}),
        .refused => note.print("; O_DIRECT refused by the file system (open: {}{s}), reading through the page cache", .{ io_errors.errno(.INVAL), injected(io_fault.directErrno() != null) }),
        .off => note.print("; reading through the page cache (O_DIRECT {s})", .{if (sys.has_o_direct) "not requested" else "not available on this system"}),
        .not_applicable => note.print("; reading through the page cache", .{}),
    }
    if (registered) |region| switch (backend) {
        .io_uring => |*u| if (u.registerBuffer(region)) |e| {
            note.print("; registering the {d}-byte buffer failed ({}), reads into it are plain reads", .{ region.len, io_errors.errno(e) });
        } else {
            const pieces = (region.len + uring.max_registered_len - 1) / uring.max_registered_len;
            note.print("; {d} registered buffer(s) over {d} bytes (fixed reads into them)", .{ pieces, region.len });
        },
        else => note.print("; the registered buffer is not used by this method", .{}),
    };
    return .{ .fd = fd, .file_size = file_size, .direct = direct, .align_bytes = align_bytes, .backend = backend };
}

pub const Backend = union(Method) {
    io_uring: Uring,
    pread_pool: *PreadPool,
    mmap: MmapReader,

    /// Nothing may be in flight.
    pub fn deinit(self: *Backend) void {
        switch (self.*) {
            .io_uring => |*u| u.deinit(),
            .pread_pool => |p| p.destroy(),
            .mmap => |*m| m.deinit(),
        }
    }

    /// Starts `job` for slot `slot`; mmap's result goes into `ready` at once.
    pub fn start(self: *Backend, slot: u32, job: Job, ready: *Fifo(Raw)) void {
        switch (self.*) {
            .io_uring => |*u| u.start(slot, job),
            .pread_pool => |p| p.start(slot, job),
            .mmap => |*m| ready.push(.{ .slot = slot, .res = m.read(job) }),
        }
    }

    /// Hands started jobs to the kernel (io_uring queues them until then).
    pub fn flush(self: *Backend) ?uring.EnterError {
        return switch (self.*) {
            .io_uring => |*u| u.flush(),
            else => null,
        };
    }

    /// Up to `out.len` results; with `wait`, waits for one first. mmap never has any here.
    pub fn poll(self: *Backend, out: []Raw, wait: bool, err: *uring.EnterError) error{Enter}!usize {
        return switch (self.*) {
            .io_uring => |*u| u.poll(out, wait, err),
            .pread_pool => |p| p.poll(out, wait),
            .mmap => {
                std.debug.assert(!wait); // the ring waits only when `ready` is empty
                return 0;
            },
        };
    }
};

fn openDirect(path: [:0]const u8) i64 {
    if (io_fault.directErrno()) |e| return -@as(i64, e);
    return sys.openRead(path, true);
}

fn startPool(allocator: std.mem.Allocator, fd: posix.fd_t, setup: Setup, path: []const u8, sink: *ErrorSink) Error!*PreadPool {
    var why: anyerror = undefined;
    return PreadPool.create(allocator, fd, setup.queue_depth, setup.pread_threads, &why) catch |e| switch (e) {
        error.OutOfMemory => fail(sink, error.OutOfMemory, "out of memory starting a pread pool for '{s}'", .{path}),
        error.Spawn => fail(sink, error.Io, "cannot start {d} pread threads for '{s}': {s}", .{ setup.pread_threads, path, @errorName(why) }),
    };
}

fn injected(yes: bool) []const u8 {
    return if (yes) ", injected by the fault plan" else "";
}

fn fail(sink: *ErrorSink, e: Error, comptime fmt: []const u8, args: anytype) Error {
    _ = sink.fail(io_errors.status(e), fmt, args);
    return e;
}
