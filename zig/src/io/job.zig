//! What the ring hands a backend (a `Job`: one kernel-sized piece of a read) and what it gets back
//! (a `Raw` result), plus the fixed-capacity FIFO they travel in. Kept apart from ring.zig so the
//! backends (uring.zig, pread_pool.zig, mmap_reader.zig) need not know about rings.
const std = @import("std");

/// Read `len` bytes at `offset` into `dst`: a whole read, or the rest of one after a short read.
pub const Job = struct {
    offset: u64,
    dst: [*]u8,
    len: u32,
};

/// The kernel's answer for the job in slot `slot`: bytes read (>= 0) or a negated errno.
pub const Raw = struct {
    slot: u32,
    res: i64,
};

/// A FIFO of at most `capacity` items, allocated once. The ring sizes every queue to the queue
/// depth, and each slot has at most one job or result queued at a time, so a push never finds
/// it full; that is asserted rather than handled.
pub fn Fifo(comptime T: type) type {
    return struct {
        const Self = @This();

        items: []T,
        head: usize = 0,
        len: usize = 0,

        pub fn init(allocator: std.mem.Allocator, capacity: usize) error{OutOfMemory}!Self {
            std.debug.assert(capacity > 0);
            return .{ .items = try allocator.alloc(T, capacity) };
        }

        pub fn deinit(self: *Self, allocator: std.mem.Allocator) void {
            allocator.free(self.items);
            self.* = undefined;
        }

        pub fn push(self: *Self, item: T) void {
            std.debug.assert(self.len < self.items.len);
            self.items[(self.head + self.len) % self.items.len] = item;
            self.len += 1;
        }

        pub fn pop(self: *Self) ?T {
            if (self.len == 0) return null;
            const item = self.items[self.head];
            self.head = (self.head + 1) % self.items.len;
            self.len -= 1;
            return item;
        }
    };
}

test "Fifo keeps order across the wrap" {
    var q = try Fifo(u32).init(std.testing.allocator, 3);
    defer q.deinit(std.testing.allocator);
    q.push(1);
    q.push(2);
    try std.testing.expectEqual(@as(?u32, 1), q.pop());
    q.push(3);
    q.push(4);
    try std.testing.expectEqual(@as(?u32, 2), q.pop());
    try std.testing.expectEqual(@as(?u32, 3), q.pop());
    try std.testing.expectEqual(@as(?u32, 4), q.pop());
    try std.testing.expectEqual(@as(?u32, null), q.pop());
}
