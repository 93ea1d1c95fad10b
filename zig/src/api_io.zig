//! The I/O ring's C ABI (sp_io_*), mirrored by core/ffi_io.ts. Compiled into the core through
//! api.zig.
//!
//! A handle is a ring plus a buffer the core allocates for it (page-aligned, so O_DIRECT reads can
//! land in it, and registered with io_uring when asked): TypeScript must never hand a JS
//! ArrayBuffer to a ring that outlives the call, so reads go into that buffer, or into caller
//! memory only within `sp_io_read_many`, which returns after every read it started has finished.
//! Calls on a handle leave their error message on the handle's ring (`sp_io_last_error(handle)`);
//! calls without one on this thread's slot (`sp_io_last_error(null)`).
const std = @import("std");
const status = @import("status.zig");
const ring_mod = @import("io/ring.zig");
const Ring = ring_mod.Ring;
const io_errors = @import("io/io_errors.zig");
const io_fault = @import("io/io_fault.zig");
const io_bench = @import("io/io_bench.zig");

const Status = status.Status;
const allocator = std.heap.c_allocator;

threadlocal var io_sink: status.ErrorSink = .{};

/// The `method` argument meaning "best available" (io_uring, else the pread pool).
pub const method_auto: u32 = std.math.maxInt(u32);
/// Largest buffer a handle may own.
pub const max_buffer_bytes: u64 = 1 << 34;
/// Most reads one sp_io_read_many call takes.
pub const max_reads_per_call: u64 = 1 << 24;

pub const IoHandle = struct {
    ring: *Ring,
    /// Owned; empty when none was asked for.
    buffer: []align(4096) u8,
};

fn methodArg(method: u32, sink: *status.ErrorSink) ?(?ring_mod.Method) {
    if (method == method_auto) return @as(?ring_mod.Method, null);
    const m = std.meta.intToEnum(ring_mod.Method, method) catch {
        _ = sink.fail(.invalid_argument, "I/O method {d} is not 0 (io_uring), 1 (pread_pool), 2 (mmap) or {d} (auto)", .{ method, method_auto });
        return null;
    };
    return m;
}

/// Opens a ring on `path` with `method` (0 io_uring, 1 pread_pool, 2 mmap, method_auto),
/// `queue_depth` reads in flight, O_DIRECT if `direct`, `pread_threads` (0 = 2) pool threads, and
/// a zeroed buffer of `buffer_bytes` (0 = none) owned by the handle, registered with io_uring if
/// `register_buffer`.
export fn sp_io_open(path: [*]const u8, path_len: u64, method: u32, queue_depth: u32, direct: bool, pread_threads: u32, buffer_bytes: u64, register_buffer: bool, out: *?*IoHandle) i32 {
    out.* = null;
    io_sink.clear();
    const m = methodArg(method, &io_sink) orelse return Status.invalid_argument.code();
    if (buffer_bytes > max_buffer_bytes) return io_sink.fail(.invalid_argument, "ring buffer of {d} bytes exceeds {d}", .{ buffer_bytes, max_buffer_bytes }).code();
    const h = allocator.create(IoHandle) catch return io_sink.fail(.out_of_memory, "out of memory", .{}).code();
    const buffer = allocator.alignedAlloc(u8, 4096, @intCast(buffer_bytes)) catch {
        allocator.destroy(h);
        return io_sink.fail(.out_of_memory, "out of memory for a ring buffer of {d} bytes", .{buffer_bytes}).code();
    };
    @memset(buffer, 0);
    const options: ring_mod.Options = .{ .queue_depth = queue_depth, .method = m, .direct = direct, .pread_threads = if (pread_threads == 0) 2 else pread_threads };
    const registered: ?[]align(4096) u8 = if (register_buffer and buffer.len > 0) buffer else null;
    const ring = Ring.open(allocator, path[0..path_len], options, registered, &io_sink) catch |e| {
        allocator.free(buffer);
        allocator.destroy(h);
        return io_errors.status(e).code();
    };
    h.* = .{ .ring = ring, .buffer = buffer };
    out.* = h;
    return Status.ok.code();
}

/// Waits for reads in flight, then frees the ring and its buffer (or, should the kernel not let
/// itself be waited on, leaks both rather than free memory it may still write into).
export fn sp_io_close(h: *IoHandle) void {
    if (!h.ring.drain()) return;
    h.ring.close();
    allocator.free(h.buffer);
    allocator.destroy(h);
}

/// The method the ring runs (0 io_uring, 1 pread_pool, 2 mmap).
export fn sp_io_method(h: *IoHandle) u32 {
    return @intFromEnum(h.ring.method());
}

/// Whether O_DIRECT is in effect.
export fn sp_io_direct(h: *IoHandle) bool {
    return h.ring.isDirect();
}

/// What offsets, lengths and destinations of reads must be multiples of (1 without O_DIRECT).
export fn sp_io_alignment(h: *IoHandle) u32 {
    return h.ring.alignment();
}

/// Copies the sentence saying which method runs and why into `buf`; returns its full length.
export fn sp_io_note(h: *IoHandle, buf: [*]u8, cap: u64) u64 {
    const text = h.ring.note();
    const n = @min(text.len, cap);
    @memcpy(buf[0..n], text[0..n]);
    return text.len;
}

/// The handle's buffer (null when it has none).
export fn sp_io_buffer(h: *IoHandle) ?[*]u8 {
    return if (h.buffer.len == 0) null else h.buffer.ptr;
}

/// Copies the last error message of `h`, or (null) of this thread's last handle-less sp_io_ call,
/// into `buf`; returns the message's full length.
export fn sp_io_last_error(h: ?*IoHandle, buf: [*]u8, cap: u64) u64 {
    const sink = if (h) |handle| &handle.ring.sink else &io_sink;
    return sink.copyTo(buf[0..cap]);
}

/// Reads `n` ranges: `lens[i]` bytes at file offset `offsets[i]` into `dst + dst_offsets[i]`, where
/// `dst` is caller memory of `dst_len` bytes or, when null, the handle's own buffer. Submits them
/// all and reaps them all before returning, whatever fails; returns the status of the first read
/// that failed (its message is the handle's last error), or of a failed submit.
export fn sp_io_read_many(h: *IoHandle, offsets: [*]const u64, lens: [*]const u32, dst_offsets: [*]const u64, n: u64, dst: ?[*]u8, dst_len: u64) i32 {
    const ring = h.ring;
    ring.sink.clear();
    std.debug.assert(ring.outstanding() == 0); // every call drains what it started
    if (n > max_reads_per_call) return ring.sink.fail(.invalid_argument, "{d} reads in one call exceed {d}", .{ n, max_reads_per_call }).code();
    const base: [*]u8 = dst orelse h.buffer.ptr;
    const size: u64 = if (dst != null) dst_len else h.buffer.len;
    const count: usize = @intCast(n);
    const reads = allocator.alloc(ring_mod.Read, count) catch return ring.sink.fail(.out_of_memory, "out of memory for {d} reads", .{n}).code();
    defer allocator.free(reads);
    for (reads, 0..) |*r, i| {
        if (dst_offsets[i] > size or lens[i] > size - dst_offsets[i])
            return ring.sink.fail(.invalid_argument, "read {d}: {d} bytes at destination offset {d} overrun the {s} of {d} bytes", .{ i, lens[i], dst_offsets[i], if (dst != null) "destination" else "ring buffer", size }).code();
        r.* = .{ .offset = offsets[i], .len = lens[i], .dst = base + @as(usize, @intCast(dst_offsets[i])), .tag = i };
    }
    ring.submit(reads) catch |e| return io_errors.status(e).code();

    var first_failure: ?status.ErrorSink = null;
    var completions: [64]ring_mod.Completion = undefined;
    while (ring.outstanding() > 0) {
        const got = ring.reap(&completions, 1) catch |e| {
            // The ring cannot be waited on: make sure nothing still writes into `dst` on return.
            const message = ring.sink;
            _ = ring.drain();
            ring.sink = message;
            return io_errors.status(e).code();
        };
        for (completions[0..got]) |c| {
            if (c.status != .ok and first_failure == null) first_failure = ring.sink;
        }
    }
    if (first_failure) |message| {
        ring.sink = message;
        return Status.io.code();
    }
    return Status.ok.code();
}

/// Benchmark: `n_reads` reads of `block_bytes` over `path` with `queue_depth` in flight, at random
/// block-aligned offsets from `seed` (flags bit 0: in order instead; bit 1: without O_DIRECT).
/// Writes [elapsed ns, bytes read, reads, method, O_DIRECT in effect (0/1), file bytes].
export fn sp_io_bench(path: [*]const u8, path_len: u64, method: u32, queue_depth: u32, block_bytes: u32, n_reads: u64, seed: u64, flags: u32, out: *[6]u64) i32 {
    io_sink.clear();
    const m = methodArg(method, &io_sink) orelse return Status.invalid_argument.code();
    const stats = io_bench.run(allocator, path[0..path_len], .{
        .method = m,
        .queue_depth = queue_depth,
        .block_bytes = block_bytes,
        .n_reads = n_reads,
        .seed = seed,
        .sequential = flags & 1 != 0,
        .direct = flags & 2 == 0,
    }, &io_sink) catch |e| return io_errors.status(e).code();
    out.* = .{ stats.elapsed_ns, stats.bytes, stats.reads, @intFromEnum(stats.method), @intFromBool(stats.direct), stats.file_bytes };
    return Status.ok.code();
}

/// Tests only: installs a fault plan (see zig/src/io/io_fault.zig); all zeros turns faults off.
/// `fail_read` / `short_read` are 1-based ordinals of reads counted from this call.
export fn sp_io_set_faults(fail_read: u64, fail_errno: u32, short_read: u64, short_eof: bool, uring_off_errno: u32, direct_errno: u32) void {
    io_fault.set(.{
        .fail_read = fail_read,
        .fail_errno = fail_errno,
        .short_read = short_read,
        .short_eof = short_eof,
        .uring_off_errno = uring_off_errno,
        .direct_errno = direct_errno,
    });
}

test {
    _ = @import("io/ring_test.zig");
    _ = @import("io/io_errors.zig");
    _ = @import("io/io_fault.zig");
    _ = @import("io/job.zig");
    _ = @import("io/sys.zig");
    _ = @import("io/pread_pool.zig");
}
