//! A read-only memory mapping of a whole model file. Weights are used in place from the mapping:
//! they never pass through the JS heap, and the kernel pages them in on demand.
//!
//! The mapping starts on a 2 MiB boundary and is advised for huge pages, so that where the page
//! cache holds the file in 2 MiB folios (which it allocates for a huge-advised mapping's faults, on
//! filesystems with large folios: seen on ext4, Linux 6.18) they are mapped whole: a matrix-vector
//! product streams hundreds of MB per token, and with 4 KiB mappings every 4 KiB costs a TLB miss.
//! Measured on the 7B-shape synthetic ReLU Q4_0 model, 2 threads, in a copy-to-huge-pages experiment:
//! dense decode 5.38-5.67 -> 5.63-6.27 tok/s, predictor decode 11.1-13.2 -> 12.7-14.2 tok/s.
const std = @import("std");
const posix = std.posix;
const ErrorSink = @import("../status.zig").ErrorSink;

pub const MappedFile = struct {
    bytes: []align(std.heap.page_size_min) const u8,

    /// Maps `path`; on failure fills `sink` with a message naming the file and the system error.
    pub fn open(path: []const u8, sink: *ErrorSink) error{ Io, BadModel }!MappedFile {
        const file = std.fs.cwd().openFile(path, .{}) catch |e| {
            _ = sink.fail(.io, "cannot open model file '{s}': {s}", .{ path, @errorName(e) });
            return error.Io;
        };
        defer file.close();
        const size = file.getEndPos() catch |e| {
            _ = sink.fail(.io, "cannot stat model file '{s}': {s}", .{ path, @errorName(e) });
            return error.Io;
        };
        if (size == 0) {
            _ = sink.fail(.bad_model, "model file '{s}' is empty", .{path});
            return error.BadModel;
        }
        const mapping = mapAligned(file.handle, size) catch |e| {
            _ = sink.fail(.io, "cannot map model file '{s}' ({d} bytes): {s}", .{ path, size, @errorName(e) });
            return error.Io;
        };
        if (@import("builtin").os.tag == .linux) posix.madvise(@constCast(mapping.ptr), mapping.len, posix.MADV.HUGEPAGE) catch {};
        return .{ .bytes = mapping };
    }

    const huge = 2 << 20;

    /// Maps the file at a 2 MiB-aligned address: reserves size + 2 MiB of address space, maps the
    /// file over its first aligned address, and returns the slack on either side.
    fn mapAligned(fd: posix.fd_t, size: u64) posix.MMapError![]align(std.heap.page_size_min) const u8 {
        const reserve = try posix.mmap(null, size + huge, posix.PROT.NONE, .{ .TYPE = .PRIVATE, .ANONYMOUS = true }, -1, 0);
        const base = @intFromPtr(reserve.ptr);
        const start = std.mem.alignForward(usize, base, huge);
        const mapping = posix.mmap(@ptrFromInt(start), size, posix.PROT.READ, .{ .TYPE = .PRIVATE, .FIXED = true }, fd, 0) catch |e| {
            posix.munmap(reserve);
            return e;
        };
        const page = std.heap.pageSize();
        const end = std.mem.alignForward(usize, start + size, page);
        if (start > base) posix.munmap(@alignCast(reserve[0 .. start - base]));
        if (base + reserve.len > end) posix.munmap(@alignCast(@as([*]align(std.heap.page_size_min) u8, @ptrFromInt(end))[0 .. base + reserve.len - end]));
        return mapping;
    }

    pub fn close(self: *MappedFile) void {
        posix.munmap(self.bytes);
        self.* = undefined;
    }
};
