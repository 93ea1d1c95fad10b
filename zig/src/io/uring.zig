//! The io_uring backend of the ring: one submission queue entry per job, IORING_OP_READ_FIXED when
//! the destination lies inside one of the registered buffers (the region, cut into pieces of at
//! most 1 GiB), IORING_OP_READ otherwise.
//!
//! std.os.linux.IoUring keeps the queues (get_sqe, flush_sq, the completion ring); the system calls
//! that can fail (setup, enter, register) are made here directly so their errno reaches the
//! message intact. The ring never has more jobs in flight than it has slots, and the queues are
//! sized to the slot count, so the submission queue is never full and the completion queue (twice
//! as large) never overflows.
const std = @import("std");
const builtin = @import("builtin");
const posix = std.posix;
const linux = std.os.linux;
const IoUring = linux.IoUring;
const job_mod = @import("job.zig");
const Job = job_mod.Job;
const Raw = job_mod.Raw;
const io_fault = @import("io_fault.zig");
const io_errors = @import("io_errors.zig");

pub const supported = builtin.os.tag == .linux;

/// Why io_uring cannot be used: the call that failed and its errno.
pub const Failure = struct {
    call: []const u8,
    errno: posix.E,
    /// Set when the fault plan, not the kernel, said no.
    injected: bool = false,
};

/// io_uring_enter gave up: its errno (EBADF and friends; EINTR, EAGAIN and EBUSY are retried).
pub const EnterError = struct { errno: posix.E };

/// EAGAIN/EBUSY from io_uring_enter while waiting are retried after a pause this long, at most
/// `busy_retries_max` times (10 s in all) before the ring reports the errno.
const busy_pause_ns = std.time.ns_per_ms;
const busy_retries_max = 10_000;
/// Most bytes one registered buffer may span (io_uring refuses longer iovecs with EFAULT).
pub const max_registered_len: usize = 1 << 30;
/// Most pieces a registered region is cut into (64 GiB).
const max_registered_buffers = 64;

pub const Uring = struct {
    ring: IoUring,
    fd: posix.fd_t,
    /// The registered region (buffers 0, 1, ... of `max_registered_len` each), when registration
    /// succeeded.
    registered: ?[]u8 = null,
    /// Jobs sent as IORING_OP_READ_FIXED (lets tests see the registered path taken).
    fixed_reads: u64 = 0,

    /// Sets up a ring with room for `entries` jobs in flight reading `fd`, and checks that the
    /// kernel has IORING_OP_READ (Linux 5.6+).
    pub fn init(entries: u32, fd: posix.fd_t, failure: *Failure) error{Unavailable}!Uring {
        if (!supported) {
            failure.* = .{ .call = "io_uring_setup", .errno = .NOSYS };
            return error.Unavailable;
        }
        if (io_fault.uringOffErrno()) |e| {
            failure.* = .{ .call = "io_uring_setup", .errno = io_errors.errnoFromInt(e), .injected = true };
            return error.Unavailable;
        }
        var params = std.mem.zeroes(linux.io_uring_params);
        const rc = linux.io_uring_setup(std.math.ceilPowerOfTwoAssert(u32, entries), &params);
        switch (linux.E.init(rc)) {
            .SUCCESS => {},
            else => |e| {
                failure.* = .{ .call = "io_uring_setup", .errno = e };
                return error.Unavailable;
            },
        }
        const ring_fd: posix.fd_t = @intCast(rc);
        errdefer posix.close(ring_fd);
        // One mmap for both queues (Linux 5.4+) is what std's queues are written for.
        if (params.features & linux.IORING_FEAT_SINGLE_MMAP == 0) {
            failure.* = .{ .call = "io_uring_setup (no IORING_FEAT_SINGLE_MMAP)", .errno = .NOSYS };
            return error.Unavailable;
        }
        if (probeRead(ring_fd)) |e| {
            failure.* = .{ .call = "io_uring_register(PROBE) for IORING_OP_READ", .errno = e };
            return error.Unavailable;
        }
        var sq = IoUring.SubmissionQueue.init(ring_fd, params) catch {
            failure.* = .{ .call = "mmap of the io_uring queues", .errno = .NOMEM };
            return error.Unavailable;
        };
        errdefer sq.deinit();
        const cq = IoUring.CompletionQueue.init(ring_fd, params, sq) catch {
            failure.* = .{ .call = "mmap of the io_uring queues", .errno = .NOMEM };
            return error.Unavailable;
        };
        return .{
            .ring = .{ .fd = ring_fd, .sq = sq, .cq = cq, .flags = params.flags, .features = params.features },
            .fd = fd,
        };
    }

    /// Registers `region` as fixed buffers (IORING_REGISTER_BUFFERS), cut into pieces of at most
    /// `max_registered_len` bytes: the kernel refuses a larger iovec with EFAULT. On failure (often
    /// RLIMIT_MEMLOCK without CAP_IPC_LOCK) returns the errno, and reads stay plain reads.
    pub fn registerBuffer(self: *Uring, region: []u8) ?posix.E {
        const n = (region.len + max_registered_len - 1) / max_registered_len;
        if (n == 0) return null;
        if (n > max_registered_buffers) return .NOMEM;
        var iovs: [max_registered_buffers]posix.iovec = undefined;
        for (iovs[0..n], 0..) |*iov, i| {
            const off = i * max_registered_len;
            iov.* = .{ .base = region.ptr + off, .len = @min(max_registered_len, region.len - off) };
        }
        const rc = linux.io_uring_register(self.ring.fd, .REGISTER_BUFFERS, &iovs, @intCast(n));
        switch (linux.E.init(rc)) {
            .SUCCESS => {
                self.registered = region;
                return null;
            },
            else => |e| return e,
        }
    }

    pub fn deinit(self: *Uring) void {
        // Closing the ring's fd also drops the buffer registration.
        self.ring.deinit();
        self.* = undefined;
    }

    /// Queues `job` for slot `slot`; `flush` hands it to the kernel.
    pub fn start(self: *Uring, slot: u32, job: Job) void {
        const sqe = self.ring.get_sqe() catch unreachable; // never full: see the file comment
        if (self.registeredIndex(job)) |index| {
            sqe.prep_rw(.READ_FIXED, self.fd, @intFromPtr(job.dst), job.len, job.offset);
            sqe.buf_index = index;
            self.fixed_reads += 1;
        } else {
            sqe.prep_rw(.READ, self.fd, @intFromPtr(job.dst), job.len, job.offset);
        }
        sqe.user_data = slot;
    }

    /// The registered buffer that holds all of `job`'s destination, if one does (a job across two
    /// pieces is a plain read).
    fn registeredIndex(self: *const Uring, job: Job) ?u16 {
        const region = self.registered orelse return null;
        const begin = @intFromPtr(region.ptr);
        const dst = @intFromPtr(job.dst);
        if (dst < begin or dst - begin > region.len or job.len > region.len - (dst - begin)) return null;
        const at = dst - begin;
        const index = at / max_registered_len;
        if (at + job.len > (index + 1) * max_registered_len) return null;
        return @intCast(index);
    }

    /// Hands queued jobs to the kernel without waiting. EAGAIN/EBUSY leave them queued for the next
    /// call (the kernel wants completions reaped first).
    pub fn flush(self: *Uring) ?EnterError {
        while (true) {
            const to_submit = self.ring.flush_sq();
            if (to_submit == 0) return null;
            switch (enter(self.ring.fd, to_submit, 0, 0)) {
                .SUCCESS, .AGAIN, .BUSY => return null,
                .INTR => continue,
                else => |e| return .{ .errno = e },
            }
        }
    }

    /// Copies up to `out.len` results; with `wait`, first waits until at least one is there.
    pub fn poll(self: *Uring, out: []Raw, wait: bool, err: *EnterError) error{Enter}!usize {
        var busy_retries: u32 = 0;
        while (self.ring.cq_ready() == 0) {
            const to_submit = self.ring.flush_sq();
            if (!wait and to_submit == 0) return 0;
            const flags: u32 = if (wait) linux.IORING_ENTER_GETEVENTS else 0;
            switch (enter(self.ring.fd, to_submit, @intFromBool(wait), flags)) {
                .SUCCESS => if (!wait) break,
                .INTR => {},
                .AGAIN, .BUSY => |e| {
                    if (!wait) break;
                    busy_retries += 1;
                    if (busy_retries > busy_retries_max) {
                        err.* = .{ .errno = e };
                        return error.Enter;
                    }
                    std.time.sleep(busy_pause_ns);
                },
                else => |e| {
                    err.* = .{ .errno = e };
                    return error.Enter;
                },
            }
        }
        const cq = &self.ring.cq;
        const n = @min(out.len, self.ring.cq_ready());
        var head = cq.head.*;
        for (out[0..n]) |*r| {
            const cqe = cq.cqes[head & cq.mask];
            r.* = .{ .slot = @intCast(cqe.user_data), .res = cqe.res };
            head +%= 1;
        }
        self.ring.cq_advance(n);
        return n;
    }
};

fn enter(ring_fd: posix.fd_t, to_submit: u32, min_complete: u32, flags: u32) linux.E {
    return linux.E.init(linux.io_uring_enter(ring_fd, to_submit, min_complete, flags, null));
}

/// Null when the kernel can do IORING_OP_READ, else why not (a kernel before 5.6 has neither the
/// op nor the probe, and answers EINVAL).
fn probeRead(ring_fd: posix.fd_t) ?posix.E {
    const max_ops = 256;
    const Probe = extern struct { head: linux.io_uring_probe, ops: [max_ops]linux.io_uring_probe_op };
    var probe = std.mem.zeroes(Probe);
    switch (linux.E.init(linux.io_uring_register(ring_fd, .REGISTER_PROBE, &probe, max_ops))) {
        .SUCCESS => {},
        else => |e| return e,
    }
    const read_op = @intFromEnum(linux.IORING_OP.READ);
    if (read_op >= probe.head.ops_len or probe.ops[read_op].flags & linux.IO_URING_OP_SUPPORTED == 0) return .OPNOTSUPP;
    return null;
}
