//! A read benchmark of the ring (sp_io_bench): `n_reads` reads of `block_bytes` each over a file,
//! at random block-aligned offsets (or in order, for the sequential baseline), keeping
//! `queue_depth` reads in flight, into a registered buffer of queue_depth blocks. Timed from the
//! first submit to the last completion; opening the ring is not timed.
const std = @import("std");
const ErrorSink = @import("../status.zig").ErrorSink;
const ring_mod = @import("ring.zig");
const Ring = ring_mod.Ring;
const Method = ring_mod.Method;
const Error = ring_mod.Error;

pub const Params = struct {
    method: ?Method,
    queue_depth: u32,
    block_bytes: u32,
    n_reads: u64,
    seed: u64,
    sequential: bool = false,
    direct: bool = true,
};

pub const Stats = struct {
    elapsed_ns: u64,
    bytes: u64,
    reads: u64,
    method: Method,
    direct: bool,
    file_bytes: u64,
};

pub const max_block_bytes = 64 << 20;

pub fn run(allocator: std.mem.Allocator, path: []const u8, p: Params, sink: *ErrorSink) Error!Stats {
    if (p.block_bytes == 0 or p.block_bytes % ring_mod.direct_alignment_min != 0 or p.block_bytes > max_block_bytes)
        return fail(sink, error.InvalidArgument, "benchmark block of {d} bytes: want a multiple of {d} up to {d}", .{ p.block_bytes, ring_mod.direct_alignment_min, max_block_bytes });
    if (p.n_reads == 0) return fail(sink, error.InvalidArgument, "benchmark of 0 reads", .{});
    if (p.queue_depth == 0 or p.queue_depth > ring_mod.max_queue_depth)
        return fail(sink, error.InvalidArgument, "benchmark queue depth {d} is outside [1, {d}]", .{ p.queue_depth, ring_mod.max_queue_depth });
    const buffer_bytes = @as(usize, p.queue_depth) * p.block_bytes;
    const buffer = allocator.alignedAlloc(u8, 4096, buffer_bytes) catch
        return fail(sink, error.OutOfMemory, "out of memory for a benchmark buffer of {d} bytes", .{buffer_bytes});
    var buffer_owned = true; // until a ring reads into it
    defer if (buffer_owned) allocator.free(buffer);
    @memset(buffer, 0); // fault the pages in now, not during the timed reads

    // A pread pool reads as many blocks at once as it has threads: give it one per slot.
    const threads = @min(p.queue_depth, ring_mod.max_pread_threads);
    const ring = try Ring.open(allocator, path, .{ .queue_depth = p.queue_depth, .method = p.method, .direct = p.direct, .pread_threads = threads }, buffer, sink);
    buffer_owned = false;
    // The buffer goes only once nothing reads into it (leaked should the kernel not be waited on).
    defer if (ring.drain()) {
        ring.close();
        allocator.free(buffer);
    };
    const n_blocks = ring.fileSize() / p.block_bytes;
    if (n_blocks == 0) return fail(sink, error.InvalidArgument, "'{s}' ({d} bytes) is smaller than one benchmark block of {d} bytes", .{ path, ring.fileSize(), p.block_bytes });

    var prng = std.Random.DefaultPrng.init(p.seed);
    const random = prng.random();
    const reads = allocator.alloc(ring_mod.Read, p.queue_depth) catch return fail(sink, error.OutOfMemory, "out of memory", .{});
    defer allocator.free(reads);
    const completions = allocator.alloc(ring_mod.Completion, p.queue_depth) catch return fail(sink, error.OutOfMemory, "out of memory", .{});
    defer allocator.free(completions);

    var issued: u64 = 0;
    var completed: u64 = 0;
    var bytes: u64 = 0;
    const Next = struct {
        fn read(params: Params, rand: std.Random, blocks: u64, i: u64, buf: []u8, slot: u64) ring_mod.Read {
            const block = if (params.sequential) i % blocks else rand.uintLessThan(u64, blocks);
            return .{ .offset = block * params.block_bytes, .len = params.block_bytes, .dst = buf[slot * params.block_bytes ..].ptr, .tag = slot };
        }
    };

    var timer = std.time.Timer.start() catch return fail(sink, error.Io, "no monotonic clock for the benchmark", .{});
    var n_first: usize = 0;
    while (n_first < p.queue_depth and issued < p.n_reads) : (n_first += 1) {
        reads[n_first] = Next.read(p, random, n_blocks, issued, buffer, n_first);
        issued += 1;
    }
    ring.submit(reads[0..n_first]) catch |e| return relay(sink, ring, e);
    while (completed < p.n_reads) {
        const got = ring.reap(completions, 1) catch |e| return relay(sink, ring, e);
        var n_next: usize = 0;
        for (completions[0..got]) |c| {
            if (c.status != .ok) return fail(sink, error.Io, "benchmark: {s}", .{ring.sink.message()});
            completed += 1;
            bytes += c.bytes;
            if (issued < p.n_reads) {
                reads[n_next] = Next.read(p, random, n_blocks, issued, buffer, c.tag);
                n_next += 1;
                issued += 1;
            }
        }
        ring.submit(reads[0..n_next]) catch |e| return relay(sink, ring, e);
    }
    const elapsed = timer.read();
    return .{ .elapsed_ns = elapsed, .bytes = bytes, .reads = completed, .method = ring.method(), .direct = ring.isDirect(), .file_bytes = ring.fileSize() };
}

/// Failures after open leave their message on the ring; the caller reads `sink`.
fn relay(sink: *ErrorSink, ring: *const Ring, e: Error) Error {
    sink.* = ring.sink;
    return e;
}

fn fail(sink: *ErrorSink, e: Error, comptime fmt: []const u8, args: anytype) Error {
    _ = sink.fail(@import("io_errors.zig").status(e), fmt, args);
    return e;
}
