//! What TypeScript hands the core to run sparse FFNs from a bundle file (core/offload.ts writes the
//! same layout): the bundle geometry read from the file's header (core/bundle_format.ts), how many
//! slots each cache region gets (from the memory budget), and the I/O ring's settings.
const std = @import("std");

/// Bump on any layout change (core/offload.ts holds the same number).
pub const offload_desc_version: u32 = 2;

/// Ring method value meaning "the best one available" (io_uring, else a pread pool).
pub const method_auto: u32 = 0xFFFF_FFFF;

pub const OffloadDesc = extern struct {
    version: u32,
    n_layers: u32,
    /// ggml types of a bundle's gate row, up row and down column.
    gate_type: u32,
    up_type: u32,
    down_type: u32,
    /// Bytes of each part of a neuron's bundle.
    gate_bytes: u32,
    up_bytes: u32,
    down_bytes: u32,
    /// Single-phase: bytes between consecutive bundles [gate | up | down | zero padding]. Two-phase:
    /// bytes between consecutive gate bundles [gate | zero padding].
    stride: u32,
    /// Two-phase: bytes between consecutive up/down bundles [up | down | zero padding]; 0 for a
    /// single-phase file.
    updown_stride: u32,
    /// Slots of the cold region (an LRU shared by all layers).
    cold_slots: u32,
    /// I/O ring: method (io/ring.zig Method, or method_auto), reads in flight, O_DIRECT (0/1).
    method: u32,
    queue_depth: u32,
    direct: u32,
};

pub const LayerOffloadDesc = extern struct {
    /// File offset of the layer's first bundle (hot-first position 0); two-phase: first gate bundle.
    bundles_offset: u64,
    /// Two-phase: file offset of the layer's first up/down bundle; unused otherwise.
    updown_offset: u64,
    /// Leading positions of the layer pinned in the hot region.
    hot: u32,
    reserved: u32 = 0,
};

comptime {
    std.debug.assert(@sizeOf(OffloadDesc) == 56);
    std.debug.assert(@sizeOf(LayerOffloadDesc) == 24);
}
