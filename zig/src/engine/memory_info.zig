//! How much memory this process may still take: the kernel's MemAvailable, lowered to the room left
//! under the limit of every memory cgroup the process sits in (v1 or v2, the group and each of its
//! ancestors). Inside a container MemAvailable describes the whole host, and a model copied into
//! memory by that measure alone would be OOM-killed under the container's limit. Read here rather
//! than in TypeScript: Deno reads /sys and /proc/self only with --allow-all.
const std = @import("std");

/// Limits at or above this mean "no limit" (cgroup v1 writes 2^63 rounded down to a page).
const unlimited: u64 = 1 << 60;

/// The bytes available, or null where MemAvailable cannot be read (not Linux).
pub fn availableBytes() ?u64 {
    var buf: [8192]u8 = undefined;
    const meminfo = readFile("/proc/meminfo", &buf) orelse return null;
    var available = (parseMeminfoKb(meminfo, "MemAvailable:") orelse return null) * 1024;
    if (cgroupRoom()) |room| available = @min(available, room);
    return available;
}

/// The least room (limit - usage) over the memory cgroups of this process, or null if none limits.
fn cgroupRoom() ?u64 {
    var buf: [4096]u8 = undefined;
    const own = readFile("/proc/self/cgroup", &buf) orelse return null;
    var least: ?u64 = null;
    var lines = std.mem.splitScalar(u8, own, '\n');
    while (lines.next()) |line| {
        // "hierarchy-id:controllers:path"; v2 is "0::path", v1's memory line lists "memory".
        var fields = std.mem.splitScalar(u8, line, ':');
        const id = fields.next() orelse continue;
        const controllers = fields.next() orelse continue;
        const path = fields.rest();
        if (path.len == 0 or path[0] != '/') continue;
        const v2 = std.mem.eql(u8, id, "0") and controllers.len == 0;
        const v1 = hasController(controllers, "memory");
        if (!v1 and !v2) continue;
        const root = if (v1) "/sys/fs/cgroup/memory" else "/sys/fs/cgroup";
        const limit_file = if (v1) "memory.limit_in_bytes" else "memory.max";
        const usage_file = if (v1) "memory.usage_in_bytes" else "memory.current";
        // The group and each ancestor up to the root: a parent's limit binds the child too.
        var dir = path;
        while (true) {
            if (groupRoom(root, dir, limit_file, usage_file)) |room| least = @min(least orelse room, room);
            if (dir.len <= 1) break;
            const cut = std.mem.lastIndexOfScalar(u8, dir, '/') orelse break;
            dir = if (cut == 0) "/" else dir[0..cut];
        }
    }
    return least;
}

fn hasController(list: []const u8, name: []const u8) bool {
    var it = std.mem.splitScalar(u8, list, ',');
    while (it.next()) |c| {
        if (std.mem.eql(u8, c, name)) return true;
    }
    return false;
}

/// limit - usage of one group, or null when it has no limit (or the files cannot be read).
fn groupRoom(root: []const u8, dir: []const u8, limit_file: []const u8, usage_file: []const u8) ?u64 {
    var path_buf: [std.fs.max_path_bytes]u8 = undefined;
    var buf: [64]u8 = undefined;
    const limit_path = std.fmt.bufPrint(&path_buf, "{s}{s}/{s}", .{ root, trimSlash(dir), limit_file }) catch return null;
    const limit = parseNumber(readFile(limit_path, &buf) orelse return null) orelse return null; // "max": none
    if (limit >= unlimited) return null;
    const usage_path = std.fmt.bufPrint(&path_buf, "{s}{s}/{s}", .{ root, trimSlash(dir), usage_file }) catch return null;
    const usage = parseNumber(readFile(usage_path, &buf) orelse return null) orelse return null;
    return limit -| usage;
}

fn trimSlash(dir: []const u8) []const u8 {
    return if (std.mem.eql(u8, dir, "/")) "" else dir;
}

fn readFile(path: []const u8, buf: []u8) ?[]const u8 {
    const file = std.fs.openFileAbsolute(path, .{}) catch return null;
    defer file.close();
    const n = file.readAll(buf) catch return null;
    return buf[0..n];
}

fn parseNumber(text: []const u8) ?u64 {
    return std.fmt.parseInt(u64, std.mem.trim(u8, text, " \n\t"), 10) catch null;
}

fn parseMeminfoKb(text: []const u8, key: []const u8) ?u64 {
    var lines = std.mem.splitScalar(u8, text, '\n');
    while (lines.next()) |line| {
        if (!std.mem.startsWith(u8, line, key)) continue;
        var words = std.mem.tokenizeAny(u8, line[key.len..], " \t");
        return parseNumber(words.next() orelse return null);
    }
    return null;
}

test "parseMeminfoKb finds the key's value in kB" {
    const text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   22000000 kB\n";
    try std.testing.expectEqual(@as(?u64, 22000000), parseMeminfoKb(text, "MemAvailable:"));
    try std.testing.expectEqual(@as(?u64, null), parseMeminfoKb(text, "SwapFree:"));
}

test "availableBytes is at most MemAvailable, and positive on Linux" {
    if (@import("builtin").os.tag != .linux) return error.SkipZigTest;
    var buf: [8192]u8 = undefined;
    const meminfo = readFile("/proc/meminfo", &buf).?;
    const mem = parseMeminfoKb(meminfo, "MemAvailable:").? * 1024;
    const got = availableBytes().?;
    try std.testing.expect(got > 0);
    // MemAvailable moves between the two reads: allow 64 MiB of drift.
    try std.testing.expect(got <= mem + (64 << 20));
}

test "hasController reads v1 controller lists" {
    try std.testing.expect(hasController("memory", "memory"));
    try std.testing.expect(hasController("cpu,memory", "memory"));
    try std.testing.expect(!hasController("cpu,cpuacct", "memory"));
}
