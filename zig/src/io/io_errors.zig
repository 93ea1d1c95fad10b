//! Errors of the I/O ring: the errno of every system call it makes, named.
//!
//! Two levels, as in the rest of the core:
//! - `Error` is what a ring operation (open, submit, reap) fails with as a whole. It is coarse on
//!   purpose (it maps onto a `Status` for the C ABI); the detail (path, offset, errno name) goes into
//!   the caller's `ErrorSink` at the point of failure.
//! - `IoStatus` is the outcome of one read, carried by its completion: one read failing with EIO
//!   must not fail the reads beside it, so per-read errors are values, not Zig errors.
const std = @import("std");
const posix = std.posix;
const Status = @import("../status.zig").Status;

/// A ring operation failed as a whole; the sink given to it says why.
pub const Error = error{
    /// A bad option, a read the chosen mode cannot perform (misaligned for O_DIRECT), a directory.
    InvalidArgument,
    OutOfMemory,
    /// The file or the kernel interface failed (open, stat, mmap, io_uring_enter, thread creation).
    Io,
    /// The requested method cannot run here (io_uring disabled or missing).
    Unsupported,
};

pub fn status(e: Error) Status {
    return switch (e) {
        error.InvalidArgument => .invalid_argument,
        error.OutOfMemory => .out_of_memory,
        error.Io => .io,
        error.Unsupported => .unsupported,
    };
}

/// The outcome of one read. Numbered for the C ABI (sp_io_*); keep in step with core/io_ring.ts.
pub const IoStatus = enum(u32) {
    ok = 0,
    /// The file ends before the read does (a truncated or shorter file than expected).
    truncated = 1,
    /// EIO: the device reported an error.
    io_error = 2,
    /// EINVAL: the kernel refused the request (e.g. alignment stricter than the ring checked).
    invalid = 3,
    /// EBADF: the file descriptor is not readable.
    bad_file = 4,
    /// EFAULT: the destination is not writable memory (or outside the registered buffer).
    fault = 5,
    /// ENOMEM, ENOBUFS: the kernel ran out of memory for the request.
    no_memory = 6,
    /// EAGAIN or EINTR, still so after the ring's retries.
    again = 7,
    /// ECANCELED: the kernel cancelled the request.
    canceled = 8,
    /// EOVERFLOW, EFBIG: the offset is beyond what the file system can address.
    overflow = 9,
    /// EOPNOTSUPP, ENOSYS: the operation is not supported on this file or kernel.
    not_supported = 10,
    /// EISDIR: the file is a directory.
    is_dir = 11,
    /// ENXIO, ENODEV, ESPIPE: the file is not a seekable file or device.
    no_device = 12,
    /// Any other errno, or a result the kernel should never give; the message has the number.
    unexpected = 13,

    pub fn fromErrno(e: posix.E) IoStatus {
        return switch (e) {
            .SUCCESS => .ok,
            .IO => .io_error,
            .INVAL => .invalid,
            .BADF => .bad_file,
            .FAULT => .fault,
            .NOMEM, .NOBUFS => .no_memory,
            .AGAIN, .INTR => .again,
            .CANCELED => .canceled,
            .OVERFLOW, .FBIG => .overflow,
            .OPNOTSUPP, .NOSYS => .not_supported,
            .ISDIR => .is_dir,
            .NXIO, .NODEV, .SPIPE => .no_device,
            else => .unexpected,
        };
    }

    pub fn name(self: IoStatus) []const u8 {
        return @tagName(self);
    }
};

/// The errno for a raw value (a negated kernel result, a number from the fault plan).
pub fn errnoFromInt(value: u32) posix.E {
    return @enumFromInt(@as(@typeInfo(posix.E).@"enum".tag_type, @truncate(value)));
}

/// Formats an errno as "EIO (input/output error)", or "errno 200" for a number with no name, so
/// every message says exactly what the kernel said.
pub const Errno = struct {
    e: posix.E,

    pub fn format(self: Errno, comptime _: []const u8, _: std.fmt.FormatOptions, w: anytype) !void {
        const tag = std.enums.tagName(posix.E, self.e) orelse return w.print("errno {d}", .{@intFromEnum(self.e)});
        try w.print("E{s}", .{tag});
        if (describe(self.e)) |d| try w.print(" ({s})", .{d});
    }
};

pub fn errno(e: posix.E) Errno {
    return .{ .e = e };
}

/// A short description of the errnos a file read, open, mmap or io_uring call can return.
fn describe(e: posix.E) ?[]const u8 {
    return switch (e) {
        .PERM => "operation not permitted",
        .NOENT => "no such file or directory",
        .INTR => "interrupted by a signal",
        .IO => "input/output error",
        .NXIO => "no such device or address",
        .BADF => "bad file descriptor",
        .AGAIN => "resource temporarily unavailable",
        .NOMEM => "out of memory",
        .ACCES => "permission denied",
        .FAULT => "bad address",
        .BUSY => "device or resource busy",
        .NODEV => "no such device",
        .NOTDIR => "not a directory",
        .ISDIR => "is a directory",
        .INVAL => "invalid argument",
        .NFILE => "too many open files in the system",
        .MFILE => "too many open files",
        .FBIG => "file too large",
        .SPIPE => "illegal seek",
        .ROFS => "read-only file system",
        .NAMETOOLONG => "file name too long",
        .NOSYS => "function not implemented",
        .LOOP => "too many levels of symbolic links",
        .OVERFLOW => "value too large for defined data type",
        .NOBUFS => "no buffer space available",
        .OPNOTSUPP => "operation not supported",
        .CANCELED => "operation canceled",
        else => null,
    };
}

test "errnos are named, described and mapped to a read status" {
    var buf: [64]u8 = undefined;
    try std.testing.expectEqualStrings("EIO (input/output error)", try std.fmt.bufPrint(&buf, "{}", .{errno(.IO)}));
    try std.testing.expectEqualStrings("EPERM (operation not permitted)", try std.fmt.bufPrint(&buf, "{}", .{errno(errnoFromInt(1))}));
    try std.testing.expectEqualStrings("errno 4000", try std.fmt.bufPrint(&buf, "{}", .{errno(errnoFromInt(4000))}));
    try std.testing.expectEqual(IoStatus.io_error, IoStatus.fromErrno(.IO));
    try std.testing.expectEqual(IoStatus.again, IoStatus.fromErrno(.INTR));
    try std.testing.expectEqual(IoStatus.unexpected, IoStatus.fromErrno(.PERM));
    try std.testing.expectEqual(Status.unsupported, status(error.Unsupported));
}
