//! The neuron cache of offloaded sparse FFNs, in memory as one slab of bundle-sized slots:
//!
//! - hot region: per layer, the top-ranked (hot-first) positions, read once at load and pinned;
//! - cold region: an LRU (clock) of recently read bundles, shared by all layers.
//!
//! (The fixed region, attention, norms, embeddings and predictors, stays in the mapped model and
//! sidecar.) A slot holds one neuron's bundle exactly as the file stores it, so a read lands in place
//! with no copy, and the compute kernels see three strided matrices over the slab whose rows are
//! slots:
//!
//! - single-phase files: slot r = [gate row | up row | down column | padding], one read;
//! - two-phase files: the slab is two arrays, gate parts [gate row | padding] and up/down parts
//!   [up row | down column | padding], slot r being row r of each. A cold slot may hold the gate part
//!   only (`full` = 0): the pipeline reads the up/down part only when the gate fires.
//!
//! Not thread-safe: one session at a time evaluates with a store (sparse_model.zig enforces it). Within
//! a token, workers only read slots and set `full` on slots they own; the one thread
//! holding the pipeline's lock (offload_ffn.zig) changes the maps.
const std = @import("std");
const huge_pages = @import("../engine/huge_pages.zig");
const posix = std.posix;
const kernels = @import("kernels");
const DType = kernels.DType;
const WeightView = @import("backend_api").WeightView;
const ring_mod = @import("../io/ring.zig");
const Ring = ring_mod.Ring;
const desc = @import("offload_desc.zig");
const ErrorSink = @import("../status.zig").ErrorSink;
const Status = @import("../status.zig").Status;

pub const none = std.math.maxInt(u32);

/// Bytes per read while loading the hot region (larger reads are split).
const load_chunk_bytes = 8 << 20;

pub const OffloadLayer = struct {
    /// Position k (hot-first) -> neuron index in the model; and the inverse.
    perm: []u32,
    inv: []u32,
    /// File offset of position 0's bundle (two-phase: its gate bundle).
    file_offset: u64,
    /// Two-phase: file offset of position 0's up/down bundle.
    updown_offset: u64,
    /// Positions [0, hot) live in slots [hot_base, hot_base + hot).
    hot: u32,
    hot_base: u32,
};

pub const OffloadStore = struct {
    allocator: std.mem.Allocator,
    ring: *Ring,
    n_layers: usize,
    ffn: usize,
    /// Bytes between gate parts (single-phase: between whole bundles), in the file and the slab.
    stride: usize,
    /// Two-phase: bytes between up/down parts, in the file and the slab; 0 for single-phase files.
    updown_stride: usize,
    gate_bytes: usize,
    up_bytes: usize,
    /// Slots [0, hot_slots) are the hot region, [hot_slots, n_slots) the cold one.
    slab: []align(std.heap.page_size_min) u8,
    n_slots: usize,
    hot_slots: usize,
    /// The slab seen as three matrices whose row r is slot r's gate row, up row, down column.
    gate: WeightView,
    up: WeightView,
    down: WeightView,
    layers: []OffloadLayer,
    /// (layer * ffn + position) -> slot, or `none` when on disk only.
    slot_of: []u32,
    /// Cold slot (index - hot_slots) -> the (layer * ffn + position) it holds, or `none`.
    owner: []u32,
    /// Cold slots: clock reference bits (set on use, cleared as the hand passes).
    ref: []u8,
    /// Every slot: 1 while the current token's layer uses it (not evictable).
    pin: []std.atomic.Value(u8),
    /// Two-phase: 1 when the slot holds its up/down part as well as its gate part.
    full: []u8,
    hand: usize = 0,
    /// Reads could not be waited out (see Ring.drain): the kernel may still write into the slab, so
    /// it is never unmapped, and no more reads are issued.
    ring_broken: bool = false,

    pub const CreateError = error{Failed};

    /// Allocates the slab and the maps and opens the ring on `path`; the hot region is read later, one
    /// layer per `loadHot` call (so the caller can report progress). `perms` holds n_layers * ffn
    /// positions -> neuron indices (the bundle file's order).
    pub fn create(allocator: std.mem.Allocator, dim: usize, ffn: usize, d: desc.OffloadDesc, layer_descs: []const desc.LayerOffloadDesc, perms: []const u32, path: []const u8, sink: *ErrorSink) error{ OutOfMemory, InvalidArgument, Io }!*OffloadStore {
        const n_layers: usize = d.n_layers;
        if (layer_descs.len != n_layers or perms.len != n_layers * ffn) {
            _ = sink.fail(.invalid_argument, "offload description covers {d} layers and {d} order entries; expected {d} and {d}", .{ layer_descs.len, perms.len, n_layers, n_layers * ffn });
            return error.InvalidArgument;
        }
        const two_phase = d.updown_stride != 0;
        const gate_part = if (two_phase) @as(usize, d.gate_bytes) else @as(usize, d.gate_bytes) + d.up_bytes + d.down_bytes;
        if (d.stride == 0 or d.stride % 512 != 0 or gate_part > d.stride) {
            _ = sink.fail(.invalid_argument, "bundle stride {d} must be a multiple of 512 holding {d} bytes of weights", .{ d.stride, gate_part });
            return error.InvalidArgument;
        }
        if (two_phase and (d.updown_stride % 512 != 0 or @as(usize, d.up_bytes) + d.down_bytes > d.updown_stride)) {
            _ = sink.fail(.invalid_argument, "up/down bundle stride {d} must be a multiple of 512 holding {d} bytes of weights", .{ d.updown_stride, @as(usize, d.up_bytes) + d.down_bytes });
            return error.InvalidArgument;
        }
        if (d.cold_slots == 0) {
            _ = sink.fail(.invalid_argument, "the cold region needs at least one slot", .{});
            return error.InvalidArgument;
        }
        var hot_slots: usize = 0;
        var fewest_hot: usize = ffn;
        for (layer_descs) |ld| {
            if (ld.hot > ffn) {
                _ = sink.fail(.invalid_argument, "{d} hot neurons in a layer of {d}", .{ ld.hot, ffn });
                return error.InvalidArgument;
            }
            hot_slots += ld.hot;
            fewest_hot = @min(fewest_hot, ld.hot);
        }
        // A token keeps every neuron it uses in a layer cached until that layer's down columns are
        // summed (offload_ffn.zig), so the cold region must hold a layer's neurons that are not hot.
        if (d.cold_slots < ffn - fewest_hot) {
            _ = sink.fail(.invalid_argument, "the cold region has {d} slots; it must hold the {d} neurons of a layer that are not hot", .{ d.cold_slots, ffn - fewest_hot });
            return error.InvalidArgument;
        }
        const n_slots = hot_slots + d.cold_slots;
        const slot_bytes = @as(usize, d.stride) + d.updown_stride;
        const slab_bytes = std.math.mul(usize, n_slots, slot_bytes) catch {
            _ = sink.fail(.out_of_memory, "{d} slots of {d} bytes overflow", .{ n_slots, slot_bytes });
            return error.OutOfMemory;
        };

        const self = try allocator.create(OffloadStore);
        errdefer allocator.destroy(self);
        // Anonymous pages: page-aligned for O_DIRECT, and charged to this process as the budget expects.
        const slab = posix.mmap(null, slab_bytes, posix.PROT.READ | posix.PROT.WRITE, .{ .TYPE = .PRIVATE, .ANONYMOUS = true }, -1, 0) catch {
            _ = sink.fail(.out_of_memory, "cannot allocate the neuron cache ({d} slots of {d} bytes = {d} MiB)", .{ n_slots, slot_bytes, slab_bytes >> 20 });
            return error.OutOfMemory;
        };
        errdefer posix.munmap(slab);
        huge_pages.advise(slab);

        const layers = try allocator.alloc(OffloadLayer, n_layers);
        errdefer allocator.free(layers);
        var built: usize = 0;
        errdefer for (layers[0..built]) |l| {
            allocator.free(l.perm);
            allocator.free(l.inv);
        };
        var base: u32 = 0;
        for (layers, layer_descs, 0..) |*layer, ld, l| {
            const perm = try allocator.dupe(u32, perms[l * ffn ..][0..ffn]);
            errdefer allocator.free(perm);
            const inv = try allocator.alloc(u32, ffn);
            errdefer allocator.free(inv);
            @memset(inv, none);
            for (perm, 0..) |i, k| {
                if (i >= ffn or inv[i] != none) {
                    _ = sink.fail(.invalid_argument, "bundle order of layer {d} is not a permutation of 0..{d} (entry {d} = {d})", .{ l, ffn, k, i });
                    return error.InvalidArgument;
                }
                inv[i] = @intCast(k);
            }
            if (ld.bundles_offset % 512 != 0 or (two_phase and ld.updown_offset % 512 != 0)) {
                _ = sink.fail(.invalid_argument, "bundles of layer {d} start at offsets {d} / {d}, not multiples of 512", .{ l, ld.bundles_offset, ld.updown_offset });
                return error.InvalidArgument;
            }
            layer.* = .{ .perm = perm, .inv = inv, .file_offset = ld.bundles_offset, .updown_offset = ld.updown_offset, .hot = ld.hot, .hot_base = base };
            base += ld.hot;
            built += 1;
        }
        const slot_of = try allocator.alloc(u32, n_layers * ffn);
        errdefer allocator.free(slot_of);
        @memset(slot_of, none);
        const owner = try allocator.alloc(u32, d.cold_slots);
        errdefer allocator.free(owner);
        @memset(owner, none);
        const ref = try allocator.alloc(u8, d.cold_slots);
        errdefer allocator.free(ref);
        @memset(ref, 0);
        const pin = try allocator.alloc(std.atomic.Value(u8), n_slots);
        errdefer allocator.free(pin);
        for (pin) |*p| p.* = std.atomic.Value(u8).init(0);
        const full = try allocator.alloc(u8, n_slots);
        errdefer allocator.free(full);
        @memset(full, 0);

        const method: ?ring_mod.Method = if (d.method == desc.method_auto) null else std.meta.intToEnum(ring_mod.Method, d.method) catch {
            _ = sink.fail(.invalid_argument, "unknown I/O method {d}", .{d.method});
            return error.InvalidArgument;
        };
        const ring = Ring.open(allocator, path, .{ .queue_depth = d.queue_depth, .method = method, .direct = d.direct != 0 }, slab, sink) catch return error.Io;

        // Where a slot's up row starts, and the stride of the up/down rows.
        const up_base = if (two_phase) slab.ptr + n_slots * @as(usize, d.stride) else slab.ptr + d.gate_bytes;
        const up_stride: usize = if (two_phase) d.updown_stride else d.stride;
        self.* = .{
            .allocator = allocator,
            .ring = ring,
            .n_layers = n_layers,
            .ffn = ffn,
            .stride = d.stride,
            .updown_stride = d.updown_stride,
            .gate_bytes = d.gate_bytes,
            .up_bytes = d.up_bytes,
            .slab = slab,
            .n_slots = n_slots,
            .hot_slots = hot_slots,
            .gate = .{ .data = slab.ptr, .row_bytes = d.stride, .n_cols = dim, .n_rows = n_slots, .dtype = d.gate_type },
            .up = .{ .data = up_base, .row_bytes = up_stride, .n_cols = dim, .n_rows = n_slots, .dtype = d.up_type },
            .down = .{ .data = up_base + d.up_bytes, .row_bytes = up_stride, .n_cols = dim, .n_rows = n_slots, .dtype = d.down_type },
            .layers = layers,
            .slot_of = slot_of,
            .owner = owner,
            .ref = ref,
            .pin = pin,
            .full = full,
        };
        return self;
    }

    pub fn destroy(self: *OffloadStore) void {
        const a = self.allocator;
        // The kernel must be done writing into the slab before it goes: if reads in flight cannot be
        // waited out, leak it rather than free memory a read may still land in.
        const drained = !self.ring_broken and self.ring.drain();
        self.ring.close();
        if (drained) posix.munmap(self.slab);
        for (self.layers) |l| {
            a.free(l.perm);
            a.free(l.inv);
        }
        a.free(self.layers);
        a.free(self.slot_of);
        a.free(self.owner);
        a.free(self.ref);
        a.free(self.pin);
        a.free(self.full);
        a.destroy(self);
    }

    /// Reads layer `l`'s hot positions into its hot slots: per part (one for single-phase files,
    /// gate then up/down for two-phase ones) one contiguous range in the file and in the slab, read
    /// in chunks through the ring.
    pub fn loadHot(self: *OffloadStore, l: usize, sink: *ErrorSink) Status {
        if (self.ring_broken) return sink.fail(.io, "the bundle file's reads failed beyond recovery earlier; reopen the model", .{});
        const layer = &self.layers[l];
        const status = self.loadRange(l, layer.file_offset, self.stride, self.gatePart(0), sink);
        if (status != .ok) return status;
        if (self.twoPhase()) {
            const s2 = self.loadRange(l, layer.updown_offset, self.updown_stride, self.updownPart(0), sink);
            if (s2 != .ok) return s2;
        }
        for (0..layer.hot) |k| {
            const slot = layer.hot_base + @as(u32, @intCast(k));
            self.slot_of[l * self.ffn + k] = slot;
            self.full[slot] = 1;
        }
        return .ok;
    }

    /// Reads layer `l`'s hot positions of one part: `layer.hot` parts `stride` apart from `file_offset`
    /// into the part array at `base`.
    fn loadRange(self: *OffloadStore, l: usize, file_offset: u64, stride: usize, base: [*]u8, sink: *ErrorSink) Status {
        const layer = &self.layers[l];
        const total = @as(usize, layer.hot) * stride;
        const dst = base + @as(usize, layer.hot_base) * stride;
        var done: usize = 0;
        var reads: [16]ring_mod.Read = undefined;
        while (done < total) {
            var n: usize = 0;
            var at = done;
            while (n < reads.len and at < total) : (n += 1) {
                const len = @min(load_chunk_bytes, total - at);
                reads[n] = .{ .offset = file_offset + at, .len = @intCast(len), .dst = dst + at, .tag = n };
                at += len;
            }
            self.ring.submit(reads[0..n]) catch |e| return sink.fail(.io, "cannot queue reads of layer {d}'s hot neurons: {s}", .{ l, @errorName(e) });
            var got: usize = 0;
            var comps: [16]ring_mod.Completion = undefined;
            while (got < n) {
                const c = self.ring.reap(comps[0 .. n - got], n - got) catch |e| return sink.fail(.io, "reading layer {d}'s hot neurons: {s}", .{ l, @errorName(e) });
                for (comps[0..c]) |comp| {
                    if (comp.status != .ok) {
                        const failed = sink.fail(.io, "reading layer {d}'s hot neurons at offset {d}: {s} ({s})", .{ l, reads[@intCast(comp.tag)].offset, @tagName(comp.status), self.ring.sink.message() });
                        if (!self.ring.drain()) self.ring_broken = true;
                        return failed;
                    }
                }
                got += c;
            }
            done = at;
        }
        return .ok;
    }

    /// A cold slot to read into, by the clock: skips pinned slots and gives recently used ones a
    /// second chance; the evicted bundle is forgotten (it is still on disk). Null when every cold
    /// slot is pinned by the current token.
    pub fn evict(self: *OffloadStore) ?u32 {
        const cold = self.owner.len;
        var steps: usize = 0;
        while (steps < 2 * cold + 1) : (steps += 1) {
            const c = self.hand;
            self.hand = if (self.hand + 1 == cold) 0 else self.hand + 1;
            const slot = self.hot_slots + c;
            if (self.pin[slot].load(.acquire) != 0) continue;
            if (self.ref[c] != 0) {
                self.ref[c] = 0;
                continue;
            }
            if (self.owner[c] != none) self.slot_of[self.owner[c]] = none;
            self.owner[c] = none;
            self.full[slot] = 0;
            return @intCast(slot);
        }
        return null;
    }

    /// Records that cold slot `slot` now holds (layer, position).
    pub fn assign(self: *OffloadStore, slot: u32, l: usize, k: usize) void {
        const c = slot - self.hot_slots;
        self.owner[c] = @intCast(l * self.ffn + k);
        self.slot_of[l * self.ffn + k] = slot;
        self.ref[c] = 1;
    }

    pub fn twoPhase(self: *const OffloadStore) bool {
        return self.updown_stride != 0;
    }

    /// Where slot `slot`'s gate part (single-phase: its whole bundle) and up/down part land.
    pub fn gatePart(self: *const OffloadStore, slot: u32) [*]u8 {
        return self.slab.ptr + @as(usize, slot) * self.stride;
    }

    pub fn updownPart(self: *const OffloadStore, slot: u32) [*]u8 {
        return @constCast(self.up.data) + @as(usize, slot) * self.updown_stride;
    }

    /// Forgets what cold slot `slot` holds (after a failed read into it).
    pub fn forget(self: *OffloadStore, slot: u32) void {
        const c = slot - self.hot_slots;
        if (self.owner[c] != none) self.slot_of[self.owner[c]] = none;
        self.owner[c] = none;
        self.full[slot] = 0;
    }

    pub fn isHot(self: *const OffloadStore, slot: u32) bool {
        return slot < self.hot_slots;
    }

    /// Marks a cold slot recently used (a cache hit).
    pub fn touch(self: *OffloadStore, slot: u32) void {
        if (slot >= self.hot_slots) self.ref[slot - self.hot_slots] = 1;
    }

    /// Bytes of memory the cache holds.
    pub fn bytes(self: *const OffloadStore) usize {
        return self.slab.len;
    }
};
