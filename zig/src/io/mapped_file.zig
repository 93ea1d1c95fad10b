//! A read-only memory mapping of a whole model file. Weights are used in place from the mapping:
//! they never pass through the JS heap, and the kernel pages them in on demand.
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
        const mapping = posix.mmap(null, size, posix.PROT.READ, .{ .TYPE = .PRIVATE }, file.handle, 0) catch |e| {
            _ = sink.fail(.io, "cannot map model file '{s}' ({d} bytes): {s}", .{ path, size, @errorName(e) });
            return error.Io;
        };
        return .{ .bytes = mapping };
    }

    pub fn close(self: *MappedFile) void {
        posix.munmap(self.bytes);
        self.* = undefined;
    }
};
