//! The mmap backend of the ring: the whole file mapped read-only, a "read" is a copy out of the
//! mapping that completes at once. A fallback where neither io_uring nor threads are wanted, and
//! the baseline the other methods are measured against: it always goes through the page cache
//! (O_DIRECT has no meaning here), one page fault at a time.
//!
//! The mapping is advised MADV_RANDOM: the ring's reads are scattered neuron bundles, and
//! read-ahead around each would spend bandwidth on bytes nobody asked for. The file's size is taken
//! at open; reads past it come back short (end of file), as with pread. A file truncated by someone
//! else after open would make the copy fault (SIGBUS), as with any mapping.
const std = @import("std");
const posix = std.posix;
const Job = @import("job.zig").Job;

pub const MmapReader = struct {
    /// Empty for an empty file (mmap refuses a length of 0, and there is nothing to read).
    bytes: []align(std.heap.page_size_min) const u8,

    /// Maps `size` bytes of `fd`; on failure `failure` names what posix.mmap returned.
    pub fn init(fd: posix.fd_t, size: u64, failure: *anyerror) error{Map}!MmapReader {
        if (size == 0) return .{ .bytes = &.{} };
        const len = std.math.cast(usize, size) orelse {
            failure.* = error.FileTooBig;
            return error.Map;
        };
        const mapping = posix.mmap(null, len, posix.PROT.READ, .{ .TYPE = .PRIVATE }, fd, 0) catch |e| {
            failure.* = e;
            return error.Map;
        };
        posix.madvise(mapping.ptr, mapping.len, posix.MADV.RANDOM) catch {}; // advice only
        return .{ .bytes = mapping };
    }

    pub fn deinit(self: *MmapReader) void {
        if (self.bytes.len != 0) posix.munmap(self.bytes);
        self.* = undefined;
    }

    /// Copies what the file has of `job`: the bytes copied (0 at or past the end).
    pub fn read(self: *const MmapReader, job: Job) i64 {
        if (job.offset >= self.bytes.len) return 0;
        const start: usize = @intCast(job.offset);
        const n = @min(job.len, self.bytes.len - start);
        @memcpy(job.dst[0..n], self.bytes[start..][0..n]);
        return @intCast(n);
    }
};
