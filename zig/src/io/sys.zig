//! The few system calls of the I/O ring, returning the errno instead of a Zig error.
//!
//! std.posix would do, except that it treats some errnos as impossible (`pread` and `mmap` turn
//! EINVAL into `unreachable`), and EINVAL is exactly what a misaligned O_DIRECT read returns; and
//! it folds errnos into Zig errors, while every message here names the errno. Results follow the
//! kernel's convention, the one io_uring completions use too: a value >= 0 is the result, a value
//! < 0 is a negated errno.
const std = @import("std");
const builtin = @import("builtin");
const posix = std.posix;
const system = posix.system;

/// glibc (and bionic) on Linux have separate 64-bit-offset entry points; musl and other systems
/// have 64-bit offsets throughout.
const lfs64 = builtin.os.tag == .linux and builtin.link_libc and (builtin.abi.isGnu() or builtin.abi.isAndroid());

/// The kernel caps one read at this many bytes (MAX_RW_COUNT); longer reads come back short.
pub const max_read_bytes: u32 = 0x7fff_f000;

pub const has_o_direct = @hasField(posix.O, "DIRECT");

fn negErrno(rc: anytype) i64 {
    return -@as(i64, @intFromEnum(posix.errno(rc)));
}

/// Opens `path` read-only (with O_DIRECT when `direct`); the descriptor, or a negated errno.
pub fn openRead(path: [*:0]const u8, direct: bool) i64 {
    var flags: posix.O = .{ .ACCMODE = .RDONLY, .CLOEXEC = true };
    if (has_o_direct) flags.DIRECT = direct;
    const open_fn = if (lfs64) system.open64 else system.open;
    while (true) {
        const rc = open_fn(path, flags, @as(posix.mode_t, 0));
        switch (posix.errno(rc)) {
            .SUCCESS => return @intCast(rc),
            .INTR => continue,
            else => return negErrno(rc),
        }
    }
}

/// One pread(2) of at most `max_read_bytes`, retried when a signal interrupts it: bytes read (0 at
/// end of file), or a negated errno.
pub fn pread(fd: posix.fd_t, dst: [*]u8, len: u32, offset: u64) i64 {
    const pread_fn = if (lfs64) system.pread64 else system.pread;
    while (true) {
        const rc = pread_fn(fd, dst, @min(len, max_read_bytes), @bitCast(offset));
        switch (posix.errno(rc)) {
            .SUCCESS => return @intCast(rc),
            .INTR => continue,
            else => return negErrno(rc),
        }
    }
}

/// The alignment O_DIRECT needs on this file when the kernel reports one (statx STATX_DIOALIGN,
/// Linux 6.1+): the larger of the memory and offset alignments, or null when unknown. Zig's Statx
/// predates the field, so it is read at its kernel ABI offset.
pub fn directAlignment(fd: posix.fd_t) ?u32 {
    if (builtin.os.tag != .linux) return null;
    const linux = std.os.linux;
    const statx_dioalign: u32 = 0x2000;
    var stx = std.mem.zeroes(linux.Statx);
    if (linux.E.init(linux.statx(fd, "", linux.AT.EMPTY_PATH, statx_dioalign, &stx)) != .SUCCESS) return null;
    if (stx.mask & statx_dioalign == 0) return null;
    // struct statx: stx_dio_mem_align (u32) at byte 0x98, stx_dio_offset_align (u32) at 0x9c.
    const bytes = std.mem.asBytes(&stx);
    const mem_align = std.mem.readInt(u32, bytes[0x98..0x9c], builtin.cpu.arch.endian());
    const offset_align = std.mem.readInt(u32, bytes[0x9c..0xa0], builtin.cpu.arch.endian());
    if (offset_align == 0) return null; // the file system does not do direct I/O on this file
    return @max(mem_align, offset_align);
}

test "pread reports errors as negated errnos" {
    var buf: [16]u8 = undefined;
    try std.testing.expectEqual(-@as(i64, @intFromEnum(posix.E.BADF)), pread(-1, &buf, buf.len, 0));
    try std.testing.expect(openRead("/nonexistent/sparrow-io-test", false) == -@as(i64, @intFromEnum(posix.E.NOENT)));
}
