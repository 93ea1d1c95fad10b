//! Transparent huge pages for the large gathered-from stores (the transposed down projection, the
//! neuron cache): rows are read from all over them, and with 4 KiB pages nearly every row costs a
//! TLB miss and a page walk. Measured on the 7B-shape synthetic ReLU model, 2 threads: predictor
//! decode 9.6-10.2 -> 11.0-11.6 tok/s with the down store advised.
const std = @import("std");
const builtin = @import("builtin");

const huge = 2 << 20;

/// Asks for huge pages over the whole 2 MiB pages inside `region` (advice only: effective when THP
/// is in "madvise" or "always" mode; ignored elsewhere).
pub fn advise(region: []u8) void {
    if (builtin.os.tag != .linux) return;
    const begin = std.mem.alignForward(usize, @intFromPtr(region.ptr), huge);
    const end = std.mem.alignBackward(usize, @intFromPtr(region.ptr) + region.len, huge);
    if (end <= begin) return;
    const ptr: [*]align(std.heap.page_size_min) u8 = @ptrFromInt(begin);
    std.posix.madvise(ptr, end - begin, std.posix.MADV.HUGEPAGE) catch {};
}
