//! Status codes returned across the FFI boundary, and the message that explains the last failure.
//!
//! Zig reports operating errors (bad files, bad arguments, I/O) as a `Status` plus a message; the
//! TypeScript side turns both into one typed error (core/errors.ts). Programmer errors are asserts.
//! Keep the numbers in step with `StatusCode` in core/errors.ts.
const std = @import("std");

pub const Status = enum(i32) {
    ok = 0,
    invalid_argument = 1,
    out_of_memory = 2,
    io = 3,
    unsupported = 4,
    abi_mismatch = 5,
    bad_model = 6,
    busy = 7,
    context_full = 8,
    internal = 9,

    pub fn code(self: Status) i32 {
        return @intFromEnum(self);
    }
};

/// A fixed-size message buffer, owned by whatever handle the failing call was made on (a session, a
/// model, or the process-wide slot for calls without a handle). Fixed size: reporting an error never
/// allocates.
pub const ErrorSink = struct {
    pub const capacity = 1024;

    buf: [capacity]u8 = undefined,
    len: usize = 0,

    /// Records a formatted message (truncated to `capacity`) and returns `status` so call sites can
    /// write `return sink.fail(.bad_model, "...", .{...});`.
    pub fn fail(self: *ErrorSink, status: Status, comptime fmt: []const u8, args: anytype) Status {
        std.debug.assert(status != .ok);
        const written = std.fmt.bufPrint(&self.buf, fmt, args) catch blk: {
            const ellipsis = "...";
            @memcpy(self.buf[capacity - ellipsis.len ..], ellipsis);
            break :blk self.buf[0..];
        };
        self.len = written.len;
        return status;
    }

    pub fn clear(self: *ErrorSink) void {
        self.len = 0;
    }

    pub fn message(self: *const ErrorSink) []const u8 {
        return self.buf[0..self.len];
    }

    /// Copies the message into a caller buffer; returns the full message length (which may exceed
    /// `out.len`, in which case the copy is truncated).
    pub fn copyTo(self: *const ErrorSink, out: []u8) usize {
        const n = @min(out.len, self.len);
        @memcpy(out[0..n], self.buf[0..n]);
        return self.len;
    }
};

test "ErrorSink formats, truncates and copies" {
    var sink: ErrorSink = .{};
    try std.testing.expectEqual(Status.bad_model, sink.fail(.bad_model, "tensor {s} has {d} dims", .{ "blk.0.attn_q.weight", 5 }));
    try std.testing.expectEqualStrings("tensor blk.0.attn_q.weight has 5 dims", sink.message());
    var small: [6]u8 = undefined;
    try std.testing.expectEqual(sink.len, sink.copyTo(&small));
    try std.testing.expectEqualStrings("tensor", &small);
    const long = "x" ** (ErrorSink.capacity + 10);
    _ = sink.fail(.io, "{s}", .{long});
    try std.testing.expectEqual(ErrorSink.capacity, sink.len);
    try std.testing.expect(std.mem.endsWith(u8, sink.message(), "..."));
}
