//! Fault injection for the I/O ring, for tests. Compiled into every build so the TypeScript tests
//! can reach it (sp_io_set_faults), and inert until a plan is set: a ring then pays one atomic load
//! per read.
//!
//! Reads are counted from the moment a plan is set, over every ring in the process, in the order
//! rings start them (submission order: the overflow queue is FIFO). A fault acts on the first
//! result of the read it names, after the kernel has really finished it, so no fault can leave the
//! kernel writing into memory the caller believes is done with:
//! - fail: the result is replaced by -errno, and the read completes with that error;
//! - short: the result is cut to half the bytes (rounded down to the ring's alignment); with
//!   `short_eof` the rest of the file is gone (the ring's attempt to read the remainder finds end of
//!   file, as with a truncated file), without it the remainder is read for real (a transient short
//!   read, which the ring must resubmit transparently).
//! Two more act at open: `uring_off_errno` makes io_uring_setup fail with that errno (auto falls
//! back to the pread pool; asking for io_uring fails), `direct_errno` makes opening with O_DIRECT
//! fail with that errno (EINVAL is what a file system that refuses O_DIRECT returns).
const std = @import("std");

pub const Plan = struct {
    /// 1-based ordinal of the read that fails; 0 = none.
    fail_read: u64 = 0,
    /// The errno it fails with (5 = EIO).
    fail_errno: u32 = 5,
    /// 1-based ordinal of the read that comes back short; 0 = none.
    short_read: u64 = 0,
    /// Whether the rest of the file is gone after the short read (a truncated file).
    short_eof: bool = true,
    /// Nonzero: io_uring_setup fails with this errno (1 = EPERM, 38 = ENOSYS).
    uring_off_errno: u32 = 0,
    /// Nonzero: opening with O_DIRECT fails with this errno (22 = EINVAL).
    direct_errno: u32 = 0,

    fn isEmpty(p: Plan) bool {
        return p.fail_read == 0 and p.short_read == 0 and p.uring_off_errno == 0 and p.direct_errno == 0;
    }
};

/// What happens to a read's first result.
pub const Effect = union(enum) {
    none,
    fail: u32,
    short: struct { eof: bool },
};

var mutex: std.Thread.Mutex = .{};
var plan: Plan = .{};
var active = std.atomic.Value(bool).init(false);
var reads_started = std.atomic.Value(u64).init(0);

/// Installs `p` and restarts the read count; an empty plan turns faults off.
pub fn set(p: Plan) void {
    mutex.lock();
    defer mutex.unlock();
    plan = p;
    reads_started.store(0, .monotonic);
    active.store(!p.isEmpty(), .release);
}

pub fn clear() void {
    set(.{});
}

fn snapshot() ?Plan {
    if (!active.load(.acquire)) return null;
    mutex.lock();
    defer mutex.unlock();
    return plan;
}

/// Called once per read as the ring starts it: its ordinal, or 0 when no plan is set.
pub fn nextOrdinal() u64 {
    if (!active.load(.acquire)) return 0;
    return reads_started.fetchAdd(1, .monotonic) + 1;
}

/// The fault planned for the read numbered `ordinal` (from nextOrdinal).
pub fn effectFor(ordinal: u64) Effect {
    if (ordinal == 0) return .none;
    const p = snapshot() orelse return .none;
    if (p.fail_read == ordinal) return .{ .fail = p.fail_errno };
    if (p.short_read == ordinal) return .{ .short = .{ .eof = p.short_eof } };
    return .none;
}

/// The errno io_uring_setup is to fail with, if any.
pub fn uringOffErrno() ?u32 {
    const p = snapshot() orelse return null;
    return if (p.uring_off_errno != 0) p.uring_off_errno else null;
}

/// The errno opening with O_DIRECT is to fail with, if any.
pub fn directErrno() ?u32 {
    const p = snapshot() orelse return null;
    return if (p.direct_errno != 0) p.direct_errno else null;
}

test "a plan names reads by ordinal and is inert when empty" {
    defer clear();
    try std.testing.expectEqual(@as(u64, 0), nextOrdinal());
    set(.{ .fail_read = 2, .fail_errno = 5, .short_read = 3, .short_eof = false });
    const a = nextOrdinal();
    const b = nextOrdinal();
    const c = nextOrdinal();
    try std.testing.expectEqual(Effect.none, effectFor(a));
    try std.testing.expectEqual(Effect{ .fail = 5 }, effectFor(b));
    try std.testing.expectEqual(Effect{ .short = .{ .eof = false } }, effectFor(c));
    try std.testing.expectEqual(@as(?u32, null), uringOffErrno());
    clear();
    try std.testing.expectEqual(@as(u64, 0), nextOrdinal());
    try std.testing.expectEqual(Effect.none, effectFor(b));
}
