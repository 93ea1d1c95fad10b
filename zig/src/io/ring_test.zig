//! Tests of the I/O ring: every method reads the right bytes of a real file, with O_DIRECT where
//! the file system allows it; the overflow queue; registered and plain destinations; every fault
//! of io_fault.zig ends in a named error or the fallback; misuse is refused with a message.
//! io_uring cases are skipped (with a note) where io_uring is unavailable, e.g. under qemu-user.
const std = @import("std");
const testing = std.testing;
const ErrorSink = @import("../status.zig").ErrorSink;
const ring_mod = @import("ring.zig");
const Ring = ring_mod.Ring;
const Method = ring_mod.Method;
const Read = ring_mod.Read;
const Completion = ring_mod.Completion;
const io_fault = @import("io_fault.zig");
const io_bench = @import("io_bench.zig");

const all_methods = [_]Method{ .io_uring, .pread_pool, .mmap };

/// A temporary file of pseudo-random bytes, kept in memory too for comparison.
const TestFile = struct {
    tmp: testing.TmpDir,
    path: []u8,
    data: []u8,

    fn create(size: usize, seed: u64) !TestFile {
        var tmp = testing.tmpDir(.{});
        errdefer tmp.cleanup();
        const data = try testing.allocator.alloc(u8, size);
        errdefer testing.allocator.free(data);
        var prng = std.Random.DefaultPrng.init(seed);
        prng.random().bytes(data);
        try tmp.dir.writeFile(.{ .sub_path = "data.bin", .data = data });
        const path = try tmp.dir.realpathAlloc(testing.allocator, "data.bin");
        return .{ .tmp = tmp, .path = path, .data = data };
    }

    fn deinit(self: *TestFile) void {
        testing.allocator.free(self.path);
        testing.allocator.free(self.data);
        self.tmp.cleanup();
    }
};

var skip_reported = false;

/// Opens a ring, or null (test skipped by the caller) when io_uring was asked for and is missing.
fn openOrSkip(path: []const u8, options: ring_mod.Options, registered: ?[]align(4096) u8, sink: *ErrorSink) !?*Ring {
    return Ring.open(testing.allocator, path, options, registered, sink) catch |e| {
        if (e == error.Unsupported and options.method == .io_uring) {
            if (!skip_reported) std.debug.print("  io_uring cases skipped: {s}\n", .{sink.message()});
            skip_reported = true;
            return null;
        }
        std.debug.print("open failed: {s}\n", .{sink.message()});
        return e;
    };
}

/// Reaps until nothing is outstanding; completions are stored by tag.
fn reapAll(ring: *Ring, by_tag: []?Completion) !void {
    var buf: [16]Completion = undefined;
    while (ring.outstanding() > 0) {
        const n = try ring.reap(&buf, 1);
        for (buf[0..n]) |c| {
            try testing.expect(by_tag[c.tag] == null); // each read completes once
            by_tag[c.tag] = c;
        }
    }
}

/// `n` reads of random aligned lengths (1..8 blocks of 512) at random aligned offsets, each into its
/// own 4096-aligned place in `dst`.
fn randomReads(prng: *std.Random.DefaultPrng, file_size: usize, dst: []align(4096) u8, n: usize, reads: []Read) void {
    const r = prng.random();
    for (reads[0..n], 0..) |*rd, i| {
        const len = 512 * r.intRangeAtMost(u32, 1, 8);
        const offset = 512 * r.uintLessThan(u64, (file_size - len) / 512 + 1);
        rd.* = .{ .offset = offset, .len = len, .dst = dst[i * 4096 ..].ptr, .tag = i };
    }
}

fn expectBytes(file: *const TestFile, rd: Read, c: ?Completion) !void {
    const got = c orelse return error.TestExpectedCompletion;
    try testing.expectEqual(ring_mod.IoStatus.ok, got.status);
    try testing.expectEqual(rd.len, got.bytes);
    try testing.expectEqualSlices(u8, file.data[rd.offset..][0..rd.len], rd.dst[0..rd.len]);
}

test "every method reads random aligned ranges of a file, byte for byte" {
    var file = try TestFile.create((1 << 20) + 4096, 1);
    defer file.deinit();
    const n = 64;
    const dst = try testing.allocator.alignedAlloc(u8, 4096, n * 4096);
    defer testing.allocator.free(dst);
    for (all_methods) |m| {
        for ([_]bool{ true, false }) |direct| {
            var sink: ErrorSink = .{};
            const ring = (try openOrSkip(file.path, .{ .method = m, .direct = direct, .queue_depth = 8 }, null, &sink)) orelse continue;
            defer ring.close();
            try testing.expectEqual(m, ring.method());
            if (m != .mmap and direct) try testing.expect(ring.isDirect()); // ext4/xfs/btrfs/tmpfs(6.6+) take O_DIRECT
            @memset(dst, 0xAA);
            var prng = std.Random.DefaultPrng.init(@intFromEnum(m) + 10);
            var reads: [n]Read = undefined;
            randomReads(&prng, file.data.len, dst, n, &reads);
            try ring.submit(&reads);
            var by_tag = [_]?Completion{null} ** n;
            try reapAll(ring, &by_tag);
            for (reads, by_tag) |rd, c| try expectBytes(&file, rd, c);
        }
    }
}

test "a queue depth of 2 takes 200 reads through the overflow queue" {
    var file = try TestFile.create(256 * 1024, 2);
    defer file.deinit();
    const n = 200;
    const dst = try testing.allocator.alignedAlloc(u8, 4096, n * 4096);
    defer testing.allocator.free(dst);
    for (all_methods) |m| {
        var sink: ErrorSink = .{};
        // A small overflow capacity, so the submit must grow it.
        const ring = (try openOrSkip(file.path, .{ .method = m, .queue_depth = 2, .overflow_capacity = 4 }, null, &sink)) orelse continue;
        defer ring.close();
        var prng = std.Random.DefaultPrng.init(3);
        var reads: [n]Read = undefined;
        randomReads(&prng, file.data.len, dst, n, &reads);
        try ring.submit(&reads);
        try testing.expect(ring.slots.len - ring.free_len <= 2);
        try testing.expectEqual(@as(usize, n), ring.outstanding());
        // reap waits for wait_min completions even though each step yields at most 2.
        var buf: [n]Completion = undefined;
        var by_tag = [_]?Completion{null} ** n;
        const first = try ring.reap(&buf, 10);
        try testing.expect(first >= 10);
        for (buf[0..first]) |c| by_tag[c.tag] = c;
        try reapAll(ring, &by_tag);
        for (reads, by_tag) |rd, c| try expectBytes(&file, rd, c);
        try testing.expectEqual(@as(usize, 0), ring.outstanding());
        // Reaping with nothing outstanding returns at once.
        try testing.expectEqual(@as(usize, 0), try ring.reap(&buf, 5));
    }
}

test "io_uring reads into the registered buffer with READ_FIXED and elsewhere with READ" {
    var file = try TestFile.create(512 * 1024, 4);
    defer file.deinit();
    const n = 32;
    const registered = try testing.allocator.alignedAlloc(u8, 4096, n / 2 * 4096);
    defer testing.allocator.free(registered);
    const plain = try testing.allocator.alignedAlloc(u8, 4096, n / 2 * 4096);
    defer testing.allocator.free(plain);
    var sink: ErrorSink = .{};
    const ring = (try openOrSkip(file.path, .{ .method = .io_uring, .queue_depth = 4 }, registered, &sink)) orelse return;
    defer ring.close();
    const u = &ring.backend.io_uring;
    if (u.registered == null) {
        std.debug.print("  buffer registration refused, case skipped: {s}\n", .{ring.note()});
        return;
    }
    try testing.expect(std.mem.indexOf(u8, ring.note(), "registered buffer") != null);
    var prng = std.Random.DefaultPrng.init(5);
    var reads: [n]Read = undefined;
    randomReads(&prng, file.data.len, registered, n / 2, reads[0 .. n / 2]);
    randomReads(&prng, file.data.len, plain, n / 2, reads[n / 2 ..]);
    for (reads[n / 2 ..], n / 2..) |*rd, i| rd.tag = i;
    try ring.submit(&reads);
    var by_tag = [_]?Completion{null} ** n;
    try reapAll(ring, &by_tag);
    for (reads, by_tag) |rd, c| try expectBytes(&file, rd, c);
    try testing.expectEqual(@as(u64, n / 2), u.fixed_reads);
}

test "a read past the end of the file completes truncated with the bytes there were" {
    const size = 64 * 1024 + 1000; // the last block is partial
    var file = try TestFile.create(size, 6);
    defer file.deinit();
    const dst = try testing.allocator.alignedAlloc(u8, 4096, 3 * 8192);
    defer testing.allocator.free(dst);
    for (all_methods) |m| {
        var sink: ErrorSink = .{};
        const ring = (try openOrSkip(file.path, .{ .method = m, .queue_depth = 4 }, null, &sink)) orelse continue;
        defer ring.close();
        const reads = [_]Read{
            .{ .offset = 64 * 1024, .len = 4096, .dst = dst.ptr, .tag = 0 }, // 1000 bytes there
            .{ .offset = 1 << 20, .len = 4096, .dst = dst[8192..].ptr, .tag = 1 }, // none there
            .{ .offset = 60 * 1024, .len = 4096, .dst = dst[16384..].ptr, .tag = 2 }, // all there
        };
        try ring.submit(&reads);
        var by_tag = [_]?Completion{null} ** 3;
        try reapAll(ring, &by_tag);
        try testing.expectEqual(ring_mod.IoStatus.truncated, by_tag[0].?.status);
        try testing.expectEqual(@as(u32, 1000), by_tag[0].?.bytes);
        try testing.expectEqualSlices(u8, file.data[64 * 1024 ..], dst[0..1000]);
        try testing.expectEqual(ring_mod.IoStatus.truncated, by_tag[1].?.status);
        try testing.expectEqual(@as(u32, 0), by_tag[1].?.bytes);
        try expectBytes(&file, reads[2], by_tag[2]);
        try testing.expect(std.mem.indexOf(u8, ring.sink.message(), "truncated") != null);
        try testing.expect(std.mem.indexOf(u8, ring.sink.message(), file.path) != null);
    }
}

test "fault: the Nth read fails with EIO and the others complete" {
    var file = try TestFile.create(256 * 1024, 7);
    defer file.deinit();
    const n = 10;
    const dst = try testing.allocator.alignedAlloc(u8, 4096, n * 4096);
    defer testing.allocator.free(dst);
    for (all_methods) |m| {
        var sink: ErrorSink = .{};
        const ring = (try openOrSkip(file.path, .{ .method = m, .queue_depth = 3 }, null, &sink)) orelse continue;
        defer ring.close();
        io_fault.set(.{ .fail_read = 4, .fail_errno = 5 });
        defer io_fault.clear();
        var prng = std.Random.DefaultPrng.init(8);
        var reads: [n]Read = undefined;
        randomReads(&prng, file.data.len, dst, n, &reads);
        try ring.submit(&reads);
        var by_tag = [_]?Completion{null} ** n;
        try reapAll(ring, &by_tag);
        for (reads, by_tag, 0..) |rd, c, i| {
            if (i == 3) {
                try testing.expectEqual(ring_mod.IoStatus.io_error, c.?.status);
                try testing.expectEqual(@as(u32, 0), c.?.bytes);
            } else try expectBytes(&file, rd, c);
        }
        const msg = ring.sink.message();
        for ([_][]const u8{ "EIO", file.path, "injected", "offset" }) |part|
            try testing.expect(std.mem.indexOf(u8, msg, part) != null);
    }
}

test "fault: the Nth read comes back short and the file ends there (truncated)" {
    var file = try TestFile.create(256 * 1024, 9);
    defer file.deinit();
    const dst = try testing.allocator.alignedAlloc(u8, 4096, 4 * 8192);
    defer testing.allocator.free(dst);
    for (all_methods) |m| {
        var sink: ErrorSink = .{};
        const ring = (try openOrSkip(file.path, .{ .method = m, .queue_depth = 2 }, null, &sink)) orelse continue;
        defer ring.close();
        io_fault.set(.{ .short_read = 2, .short_eof = true });
        defer io_fault.clear();
        var reads: [4]Read = undefined;
        for (&reads, 0..) |*rd, i| rd.* = .{ .offset = i * 16384, .len = 8192, .dst = dst[i * 8192 ..].ptr, .tag = i };
        try ring.submit(&reads);
        var by_tag = [_]?Completion{null} ** 4;
        try reapAll(ring, &by_tag);
        try testing.expectEqual(ring_mod.IoStatus.truncated, by_tag[1].?.status);
        try testing.expectEqual(@as(u32, 4096), by_tag[1].?.bytes);
        try testing.expectEqualSlices(u8, file.data[16384..][0..4096], dst[8192..][0..4096]);
        for ([_]usize{ 0, 2, 3 }) |i| try expectBytes(&file, reads[i], by_tag[i]);
        try testing.expect(std.mem.indexOf(u8, ring.sink.message(), "truncated") != null);
    }
}

test "fault: a transient short read is resubmitted for the rest without the caller noticing" {
    var file = try TestFile.create(256 * 1024, 10);
    defer file.deinit();
    const dst = try testing.allocator.alignedAlloc(u8, 4096, 4 * 16384);
    defer testing.allocator.free(dst);
    for (all_methods) |m| {
        for ([_]bool{ true, false }) |direct| {
            var sink: ErrorSink = .{};
            const ring = (try openOrSkip(file.path, .{ .method = m, .queue_depth = 2, .direct = direct }, null, &sink)) orelse continue;
            defer ring.close();
            io_fault.set(.{ .short_read = 3, .short_eof = false });
            defer io_fault.clear();
            @memset(dst, 0);
            var reads: [4]Read = undefined;
            for (&reads, 0..) |*rd, i| rd.* = .{ .offset = 4096 + i * 20480, .len = 16384, .dst = dst[i * 16384 ..].ptr, .tag = i };
            try ring.submit(&reads);
            var by_tag = [_]?Completion{null} ** 4;
            try reapAll(ring, &by_tag);
            for (reads, by_tag) |rd, c| try expectBytes(&file, rd, c);
        }
    }
}

test "fault: io_uring off falls back to the pread pool (auto) or is refused (asked for)" {
    var file = try TestFile.create(64 * 1024, 11);
    defer file.deinit();
    io_fault.set(.{ .uring_off_errno = 1 }); // EPERM, as with kernel.io_uring_disabled = 2
    defer io_fault.clear();
    var sink: ErrorSink = .{};
    const ring = try Ring.open(testing.allocator, file.path, .{}, null, &sink);
    defer ring.close();
    try testing.expectEqual(Method.pread_pool, ring.method());
    for ([_][]const u8{ "io_uring unavailable", "EPERM", "pread pool of 2 threads" }) |part|
        try testing.expect(std.mem.indexOf(u8, ring.note(), part) != null);
    // And it reads.
    const dst = try testing.allocator.alignedAlloc(u8, 4096, 8192);
    defer testing.allocator.free(dst);
    const rd = Read{ .offset = 4096, .len = 8192, .dst = dst.ptr, .tag = 0 };
    try ring.submit(&.{rd});
    var by_tag = [_]?Completion{null};
    try reapAll(ring, &by_tag);
    try expectBytes(&file, rd, by_tag[0]);

    try testing.expectError(error.Unsupported, Ring.open(testing.allocator, file.path, .{ .method = .io_uring }, null, &sink));
    try testing.expect(std.mem.indexOf(u8, sink.message(), "EPERM") != null);
    try testing.expect(std.mem.indexOf(u8, sink.message(), file.path) != null);
}

test "fault: a file system that refuses O_DIRECT is read through the page cache, and the note says so" {
    var file = try TestFile.create(64 * 1024, 12);
    defer file.deinit();
    io_fault.set(.{ .direct_errno = 22 }); // EINVAL
    defer io_fault.clear();
    for ([_]Method{ .io_uring, .pread_pool }) |m| {
        var sink: ErrorSink = .{};
        const ring = (try openOrSkip(file.path, .{ .method = m }, null, &sink)) orelse continue;
        defer ring.close();
        try testing.expect(!ring.isDirect());
        try testing.expectEqual(@as(u32, 1), ring.alignment());
        try testing.expect(std.mem.indexOf(u8, ring.note(), "O_DIRECT refused") != null);
        // Unaligned reads are fine without O_DIRECT.
        var dst: [1000]u8 = undefined;
        const rd = Read{ .offset = 777, .len = 1000, .dst = &dst, .tag = 0 };
        try ring.submit(&.{rd});
        var by_tag = [_]?Completion{null};
        try reapAll(ring, &by_tag);
        try expectBytes(&file, rd, by_tag[0]);
    }
}

test "misaligned O_DIRECT reads are refused before any starts; bad options and files are named" {
    var file = try TestFile.create(64 * 1024, 13);
    defer file.deinit();
    var sink: ErrorSink = .{};
    const ring = try Ring.open(testing.allocator, file.path, .{ .method = .pread_pool }, null, &sink);
    defer ring.close();
    try testing.expect(ring.isDirect());
    const dst = try testing.allocator.alignedAlloc(u8, 4096, 8192);
    defer testing.allocator.free(dst);
    const good = Read{ .offset = 0, .len = 4096, .dst = dst.ptr, .tag = 0 };
    for ([_]Read{
        .{ .offset = 100, .len = 4096, .dst = dst.ptr, .tag = 1 },
        .{ .offset = 0, .len = 1000, .dst = dst.ptr, .tag = 1 },
        .{ .offset = 0, .len = 4096, .dst = dst[8..].ptr, .tag = 1 },
    }) |bad| {
        try testing.expectError(error.InvalidArgument, ring.submit(&.{ good, bad }));
        try testing.expectEqual(@as(usize, 0), ring.outstanding());
        try testing.expect(std.mem.indexOf(u8, ring.sink.message(), "multiples of 512") != null);
    }

    try testing.expectError(error.InvalidArgument, Ring.open(testing.allocator, file.path, .{ .queue_depth = 0 }, null, &sink));
    try testing.expect(std.mem.indexOf(u8, sink.message(), "queue depth 0") != null);
    try testing.expectError(error.Io, Ring.open(testing.allocator, "/nonexistent/sparrow.bin", .{}, null, &sink));
    try testing.expect(std.mem.indexOf(u8, sink.message(), "ENOENT") != null);
    try testing.expect(std.mem.indexOf(u8, sink.message(), "/nonexistent/sparrow.bin") != null);
    const dir = try file.tmp.dir.realpathAlloc(testing.allocator, ".");
    defer testing.allocator.free(dir);
    try testing.expectError(error.InvalidArgument, Ring.open(testing.allocator, dir, .{}, null, &sink));
    try testing.expect(std.mem.indexOf(u8, sink.message(), "directory") != null);
}

test "closing a ring with reads in flight and queued waits for them and frees everything" {
    var file = try TestFile.create(256 * 1024, 14);
    defer file.deinit();
    const n = 50;
    const dst = try testing.allocator.alignedAlloc(u8, 4096, n * 4096);
    defer testing.allocator.free(dst);
    for (all_methods) |m| {
        var sink: ErrorSink = .{};
        const ring = (try openOrSkip(file.path, .{ .method = m, .queue_depth = 8 }, null, &sink)) orelse continue;
        var prng = std.Random.DefaultPrng.init(15);
        var reads: [n]Read = undefined;
        randomReads(&prng, file.data.len, dst, n, &reads);
        try ring.submit(&reads);
        ring.close(); // testing.allocator reports anything left behind
    }
}

test "the benchmark reads what it says it read" {
    var file = try TestFile.create(1 << 20, 16);
    defer file.deinit();
    for (all_methods) |m| {
        for ([_]bool{ false, true }) |sequential| {
            var sink: ErrorSink = .{};
            const stats = io_bench.run(testing.allocator, file.path, .{ .method = m, .queue_depth = 4, .block_bytes = 8192, .n_reads = 300, .seed = 1, .sequential = sequential }, &sink) catch |e| {
                if (e == error.Unsupported) continue;
                std.debug.print("{s}\n", .{sink.message()});
                return e;
            };
            try testing.expectEqual(@as(u64, 300), stats.reads);
            try testing.expectEqual(@as(u64, 300 * 8192), stats.bytes);
            try testing.expectEqual(m, stats.method);
            try testing.expect(stats.elapsed_ns > 0);
        }
    }
}
