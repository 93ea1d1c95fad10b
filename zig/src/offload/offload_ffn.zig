//! One token's sparse FFN of one layer when the neurons live in a bundle file: the I/O-compute
//! pipeline.
//!
//! The chosen neurons (hot-first positions) split into those in the cache (hot or cold region) and
//! those on disk. Reads for the missing ones go to the ring first; then every thread computes the
//! cached neurons' gate and up rows in clusters while the reads are in flight, and each arriving
//! bundle's as it lands. The down columns are summed into y in position order, one column range per
//! thread, as far as the neurons computed so far reach (sparse/down_order.zig): the in-memory path
//! sums in the same order, so both give bitwise the same output. There is no barrier per matrix.
//!
//! Two-phase files (gate parts apart from up/down parts, as in PowerInfer-2): a missing neuron's gate
//! part is read first; when it lands its gate is computed, and only if the gate fires is its up/down
//! part read, then computed as it lands. A cold slot may keep a gate part alone; a later token that
//! picks that neuron starts from its gate with no read.
//!
//! Whichever thread runs out of work takes the lock and plays I/O thread: it submits reads as queue
//! depth allows (up/down parts first: they finish neurons), reaps completions and publishes them.
//! Time it spends blocked on the ring while no thread computes is I/O on the critical path, reported
//! per layer. Every slot the token uses stays pinned until the token's down columns are summed; the
//! cold region holds at least a layer's neurons that are not hot (the memory plan's minimum), so a
//! read always finds a slot.
const std = @import("std");
const kernels = @import("kernels");
const ops = kernels.ops;
const Session = @import("../engine/session.zig").Session;
const Status = @import("../status.zig").Status;
const ring_mod = @import("../io/ring.zig");
const OffloadStore = @import("offload_store.zig").OffloadStore;
const none = @import("offload_store.zig").none;
const sparse_ffn = @import("../sparse/sparse_ffn.zig");
const down_order = @import("../sparse/down_order.zig");

const AtomicUsize = std.atomic.Value(usize);

/// Per-store scratch of the pipeline, allocated with the store (one session at a time uses it).
pub const Scratch = struct {
    res_slots: []u32 = &.{}, // (ffn) cached candidates' slots, in selection order
    res_sel: []u32 = &.{}, // (ffn) their indices in the selection
    res_clusters: []u32 = &.{}, // (ffn + 1) cluster starts in res_slots
    work_slots: []u32 = &.{}, // (ffn) per cluster: the slots whose gate fires
    work_sel: []u32 = &.{}, // (ffn) their indices in the selection
    g: []f32 = &.{}, // (ffn) gate values of resident candidates, then of entries
    u: []f32 = &.{},
    miss_pos: []u32 = &.{}, // (ffn) entries: positions of the missing candidates, then of gate-only cached ones
    miss_slot: []u32 = &.{}, // (ffn) the slot of each entry
    miss_sel: []u32 = &.{}, // (ffn) the index in the selection of each entry
    arrived: []u32 = &.{}, // (2 * ffn) parts ready to compute, in arrival order: entry * 2 + phase
    want: []u32 = &.{}, // (ffn) entries whose gate fired and whose up/down part is to be read
    // Per selected neuron, for the down columns (down_order.Frontier): h, slot, and known yet.
    sel_h: []f32 = &.{}, // (ffn)
    sel_row: []u32 = &.{}, // (ffn)
    ready: []std.atomic.Value(u8) = &.{}, // (ffn)
    reads: []ring_mod.Read = &.{}, // (queue depth)
    comps: []ring_mod.Completion = &.{}, // (queue depth)

    const u32_fields = .{ "res_slots", "res_sel", "work_slots", "work_sel", "miss_pos", "miss_slot", "miss_sel", "want", "sel_row" };
    const f32_fields = .{ "g", "u", "sel_h" };

    pub fn init(a: std.mem.Allocator, ffn: usize, queue_depth: usize) !Scratch {
        // Every slice starts empty, so a failed allocation frees what came before it.
        var sc = Scratch{};
        errdefer sc.deinit(a);
        inline for (u32_fields) |f| @field(sc, f) = try a.alloc(u32, ffn);
        inline for (f32_fields) |f| @field(sc, f) = try a.alloc(f32, ffn);
        sc.arrived = try a.alloc(u32, 2 * ffn);
        sc.res_clusters = try a.alloc(u32, ffn + 1);
        sc.ready = try a.alloc(std.atomic.Value(u8), ffn);
        sc.reads = try a.alloc(ring_mod.Read, queue_depth);
        sc.comps = try a.alloc(ring_mod.Completion, queue_depth);
        return sc;
    }

    pub fn deinit(sc: *Scratch, a: std.mem.Allocator) void {
        inline for (u32_fields ++ f32_fields ++ .{ "arrived", "res_clusters", "ready", "reads", "comps" }) |f| a.free(@field(sc, f));
    }
};

/// Counters of one layer's cache and I/O, summed over tokens.
pub const IoCounters = struct {
    /// Candidates found whole in the hot region, in the cold region (two-phase: also those whose
    /// gate part alone was cached), and read from disk.
    hot_hits: u64 = 0,
    cold_hits: u64 = 0,
    misses: u64 = 0,
    read_bytes: u64 = 0,
    /// Nanoseconds the pipeline waited on reads with no thread computing.
    stall_ns: u64 = 0,
};

/// A part ready to compute: phase 0 = the gate part (single-phase: the whole bundle), 1 = up/down.
const phase_gate: u32 = 0;
const phase_updown: u32 = 1;

const Pipeline = struct {
    s: *Session,
    st: *OffloadStore,
    sc: *Scratch,
    l: usize,
    kind: ops.Activation,
    cats: f32,
    act_gate: [*]const u8,
    act_up: [*]const u8,
    queue_depth: usize,
    n_res_clusters: usize,
    /// Entries [0, n_missing) are read from disk; [n_missing, n_entries) have their gate part cached.
    n_missing: usize,
    n_entries: usize,
    /// Index of the first entry's g/u values (after the resident candidates').
    entry_base: usize,
    /// The down columns, summed in position order into `y` as the neurons become known.
    frontier: down_order.Frontier,
    y: [*]f32,
    next_res: AtomicUsize = AtomicUsize.init(0),
    n_arrived: AtomicUsize = AtomicUsize.init(0),
    next_arrival: AtomicUsize = AtomicUsize.init(0),
    computing: AtomicUsize = AtomicUsize.init(0),
    /// Up/down reads wanted: slots reserved, then published in order.
    want_reserved: AtomicUsize = AtomicUsize.init(0),
    want_published: AtomicUsize = AtomicUsize.init(0),
    failed: std.atomic.Value(bool) = std.atomic.Value(bool).init(false),
    lock: std.Thread.Mutex = .{},
    // Owned by the lock holder:
    submitted: usize = 0,
    want_submitted: usize = 0,
    stall_ns: u64 = 0,
    fail_status: Status = .ok,

    fn run(ctx: *anyopaque, _: usize, _: usize, thread: usize) void {
        const p: *Pipeline = @ptrCast(@alignCast(ctx));
        const sparse_sc = &p.s.sparse_scratch.?;
        var counts = Counts{};
        while (!p.failed.load(.acquire)) {
            // 0. between compute items, without waiting: queue what is wanted (an up/down part
            // whose gate just fired, a miss the queue had no room for) and publish what landed, so
            // reads are not left waiting on the computing threads
            if (p.n_missing > 0 and p.lock.tryLock()) {
                defer p.lock.unlock();
                p.driveIo(false);
            }
            // 1. cached clusters
            const c = p.next_res.fetchAdd(1, .acq_rel);
            if (c < p.n_res_clusters) {
                _ = p.computing.fetchAdd(1, .acq_rel);
                p.cluster(c, &counts);
                _ = p.computing.fetchSub(1, .acq_rel);
                continue;
            }
            // 2. arrived parts
            const j = p.next_arrival.load(.acquire);
            if (j < p.n_arrived.load(.acquire)) {
                if (p.next_arrival.cmpxchgWeak(j, j + 1, .acq_rel, .acquire) == null) {
                    _ = p.computing.fetchAdd(1, .acq_rel);
                    p.arrival(p.sc.arrived[j], &counts);
                    _ = p.computing.fetchSub(1, .acq_rel);
                }
                continue;
            }
            // 3. down columns of the neurons known so far
            if (p.frontier.canAdvance()) {
                _ = p.computing.fetchAdd(1, .acq_rel);
                const moved = p.frontier.advance(&p.s.backend, &p.st.down, p.s.model.hp.dim, p.y, thread);
                _ = p.computing.fetchSub(1, .acq_rel);
                if (moved) continue;
            }
            if (p.frontier.done()) break;
            // 4. nothing to compute: drive the I/O, waiting for a read if no thread computes
            if (p.lock.tryLock()) {
                defer p.lock.unlock();
                p.driveIo(true);
            } else {
                std.atomic.spinLoopHint();
            }
        }
        sparse_sc.active_count[thread] += counts.active;
        sparse_sc.up_rows[thread] += counts.up_rows;
    }

    const Counts = struct { active: u64 = 0, up_rows: u64 = 0 };

    /// Makes selected neuron `i` known to the down columns: its output `h` (0: it does not fire).
    fn publish(p: *Pipeline, i: u32, h: f32) void {
        p.sc.sel_h[i] = h;
        p.sc.ready[i].store(1, .release);
    }

    /// Gate, then up only where the gate fires, and the activation of cached cluster `c`.
    fn cluster(p: *Pipeline, c: usize, counts: *Counts) void {
        const sc = p.sc;
        const a = sc.res_clusters[c];
        const b = sc.res_clusters[c + 1];
        const slots = sc.res_slots[a..b];
        const sel = sc.res_sel[a..b];
        const work = sc.work_slots[a..b];
        const work_sel = sc.work_sel[a..b];
        const g = sc.g[a..b];
        const u = sc.u[a..b];
        const be = &p.s.backend;
        be.sparseMatvec(&p.st.gate, p.act_gate, slots, g.ptr);
        var m: usize = 0;
        for (slots, sel, 0..) |slot, i, j| {
            if (!sparse_ffn.gateFires(p.kind, g[j], p.cats)) {
                p.publish(i, 0);
                continue;
            }
            work[m] = slot;
            work_sel[m] = i;
            g[m] = g[j];
            m += 1;
        }
        be.sparseMatvec(&p.st.up, p.act_up, work[0..m], u.ptr);
        for (0..m) |j| {
            const h = sparse_ffn.activate(p.kind, g[j], u[j], p.cats);
            if (h != 0) counts.active += 1;
            p.publish(work_sel[j], h);
        }
        counts.up_rows += m;
    }

    /// One part of entry `item / 2` that is ready (phase `item % 2`).
    fn arrival(p: *Pipeline, item: u32, counts: *Counts) void {
        const sc = p.sc;
        const m = item / 2;
        const slot = sc.miss_slot[m];
        const at = p.entry_base + m;
        const be = &p.s.backend;
        const one = sc.miss_slot[m .. m + 1];
        if (item % 2 == phase_gate) {
            be.sparseMatvec(&p.st.gate, p.act_gate, one, sc.g[at..].ptr);
            if (p.st.twoPhase()) {
                if (sparse_ffn.gateFires(p.kind, sc.g[at], p.cats)) {
                    p.wantUpdown(@intCast(m));
                } else {
                    p.publish(sc.miss_sel[m], 0);
                }
                return;
            }
        } else {
            p.st.full[slot] = 1;
        }
        be.sparseMatvec(&p.st.up, p.act_up, one, sc.u[at..].ptr);
        counts.up_rows += 1;
        const h = sparse_ffn.activate(p.kind, sc.g[at], sc.u[at], p.cats);
        if (h != 0) counts.active += 1;
        p.publish(sc.miss_sel[m], h);
    }

    /// Asks the I/O thread for entry `m`'s up/down part (its gate fired).
    fn wantUpdown(p: *Pipeline, m: u32) void {
        const i = p.want_reserved.fetchAdd(1, .acq_rel);
        p.sc.want[i] = m;
        // Publish in reservation order, so the I/O thread never reads an entry not yet written.
        while (p.want_published.cmpxchgWeak(i, i + 1, .acq_rel, .acquire) != null) std.atomic.spinLoopHint();
    }

    /// Whether no thread has anything to compute until a read lands.
    fn idle(p: *Pipeline) bool {
        return p.computing.load(.acquire) == 0 and p.next_res.load(.acquire) >= p.n_res_clusters and
            p.next_arrival.load(.acquire) == p.n_arrived.load(.acquire) and
            p.want_published.load(.acquire) == p.want_submitted and !p.frontier.canAdvance();
    }

    /// Lock held: queue reads while the queue depth allows, then collect completions (waiting for one
    /// only if `may_wait` and nothing else can be done).
    fn driveIo(p: *Pipeline, may_wait: bool) void {
        const st = p.st;
        const sc = p.sc;
        const ring = st.ring;
        var n: usize = 0;
        // Up/down parts first: each finishes a neuron.
        const published = p.want_published.load(.acquire);
        while (p.want_submitted < published and ring.outstanding() + n < p.queue_depth) {
            const m = sc.want[p.want_submitted];
            sc.reads[n] = .{ .offset = p.partOffset(m, phase_updown), .len = @intCast(st.updown_stride), .dst = st.updownPart(sc.miss_slot[m]), .tag = m * 2 + phase_updown };
            n += 1;
            p.want_submitted += 1;
        }
        while (p.submitted < p.n_missing and ring.outstanding() + n < p.queue_depth) {
            // Every slot the token uses is pinned until its end; the memory plan leaves the cold
            // region room for a layer's neurons that are not hot, so this fails only on a bad plan.
            const slot = st.evict() orelse return p.fail(.internal, "no free slot in the cold region ({d} slots) for layer {d}: it must hold every neuron of a layer that is not hot", .{ st.owner.len, p.l });
            const m = p.submitted;
            st.assign(slot, p.l, sc.miss_pos[m]);
            st.pin[slot].store(1, .release);
            sc.miss_slot[m] = slot;
            sc.sel_row[sc.miss_sel[m]] = slot;
            sc.reads[n] = .{ .offset = p.partOffset(m, phase_gate), .len = @intCast(st.stride), .dst = st.gatePart(slot), .tag = m * 2 + phase_gate };
            n += 1;
            p.submitted += 1;
        }
        if (n > 0) ring.submit(sc.reads[0..n]) catch |e| return p.fail(.io, "cannot queue {d} bundle reads of layer {d} ({s}): {s}", .{ n, p.l, @errorName(e), ring.sink.message() });
        if (ring.outstanding() == 0) return;
        const wait = may_wait and p.idle();
        const t0 = if (wait) std.time.nanoTimestamp() else 0;
        const got = ring.reap(sc.comps, if (wait) 1 else 0) catch |e| return p.fail(.io, "waiting for bundle reads of layer {d} ({s}): {s}", .{ p.l, @errorName(e), ring.sink.message() });
        if (wait) p.stall_ns += @intCast(std.time.nanoTimestamp() - t0);
        const base = p.n_arrived.load(.acquire);
        for (sc.comps[0..got], 0..) |comp, i| {
            const item: u32 = @intCast(comp.tag);
            if (comp.status != .ok) {
                const m = item / 2;
                const part = if (item % 2 == phase_gate) (if (st.twoPhase()) "gate bundle" else "bundle") else "up/down bundle";
                return p.fail(.io, "reading the {s} of layer {d} neuron position {d} (offset {d}): {s} ({s})", .{ part, p.l, sc.miss_pos[m], p.partOffset(m, item % 2), @tagName(comp.status), ring.sink.message() });
            }
            sc.arrived[base + i] = item;
        }
        p.n_arrived.store(base + got, .release);
    }

    /// File offset of entry `m`'s gate part (single-phase: its bundle) or up/down part.
    fn partOffset(p: *const Pipeline, m: usize, phase: u32) u64 {
        const layer = &p.st.layers[p.l];
        const k: u64 = p.sc.miss_pos[m];
        return if (phase == phase_gate) layer.file_offset + k * p.st.stride else layer.updown_offset + k * p.st.updown_stride;
    }

    fn fail(p: *Pipeline, status: Status, comptime fmt: []const u8, args: anytype) void {
        p.fail_status = p.s.sink.fail(status, fmt, args);
        p.failed.store(true, .release);
    }
};

/// Computes y = FFN(x) of layer `l` for the selected positions `sel_pos` (hot-first order), with
/// the activations prepared by the caller, into the session scratch's `y` (zeroed by the caller),
/// and each thread's active neurons and up rows into its counters there; returns the status (an I/O
/// failure names the layer, neuron and offset).
pub fn offloadFfn(s: *Session, st: *OffloadStore, sc: *Scratch, l: usize, sel_pos: []const u32, cluster_size: usize, kind: ops.Activation, cats: f32, act_gate: [*]const u8, act_up: [*]const u8, queue_depth: usize, counters: *IoCounters) Status {
    if (st.ring_broken) return s.sink.fail(.io, "the bundle file's reads failed beyond recovery earlier; reopen the model", .{});
    // Split into cached whole (grouped in clusters), missing, and (two-phase) cached gate part only;
    // pin what the token needs. Gate-only entries are stored from the end of miss_* and moved after
    // the missing ones below.
    var n_res: usize = 0;
    var n_missing: usize = 0;
    var n_partial: usize = 0;
    var n_clusters: usize = 0;
    const cap = sc.miss_pos.len;
    sc.res_clusters[0] = 0;
    for (sel_pos, 0..) |k, i| {
        sc.ready[i].store(0, .monotonic);
        const slot = st.slot_of[l * st.ffn + k];
        if (slot == none) {
            sc.miss_pos[n_missing] = k;
            sc.miss_sel[n_missing] = @intCast(i);
            n_missing += 1;
            continue;
        }
        if (st.isHot(slot)) counters.hot_hits += 1 else counters.cold_hits += 1;
        st.touch(slot);
        st.pin[slot].store(1, .release);
        sc.sel_row[i] = slot;
        if (st.full[slot] == 0) {
            n_partial += 1;
            sc.miss_pos[cap - n_partial] = k;
            sc.miss_slot[cap - n_partial] = slot;
            sc.miss_sel[cap - n_partial] = @intCast(i);
            continue;
        }
        sc.res_slots[n_res] = slot;
        sc.res_sel[n_res] = @intCast(i);
        n_res += 1;
        if (n_res - sc.res_clusters[n_clusters] == cluster_size) {
            n_clusters += 1;
            sc.res_clusters[n_clusters] = @intCast(n_res);
        }
    }
    if (n_res > sc.res_clusters[n_clusters]) {
        n_clusters += 1;
        sc.res_clusters[n_clusters] = @intCast(n_res);
    }
    counters.misses += n_missing;
    // Gate-only entries go right after the missing ones (cap - n_partial >= n_missing: every
    // selected position is one or the other), their gate parts ready to compute.
    inline for (.{ "miss_pos", "miss_slot", "miss_sel" }) |f| {
        std.mem.copyForwards(u32, @field(sc, f)[n_missing..][0..n_partial], @field(sc, f)[cap - n_partial ..]);
    }
    for (0..n_partial) |i| sc.arrived[i] = @intCast((n_missing + i) * 2 + phase_gate);

    const n_sel = sel_pos.len;
    var p = Pipeline{
        .s = s,
        .st = st,
        .sc = sc,
        .l = l,
        .kind = kind,
        .cats = cats,
        .act_gate = act_gate,
        .act_up = act_up,
        .queue_depth = queue_depth,
        .n_res_clusters = n_clusters,
        .n_missing = n_missing,
        .n_entries = n_missing + n_partial,
        .entry_base = n_res,
        .frontier = .{ .n = n_sel, .ready = sc.ready[0..n_sel], .h = sc.sel_h[0..n_sel], .row = sc.sel_row[0..n_sel], .n_chunks = down_order.chunkCount(s.pool.threadCount()) },
        .y = s.sparse_scratch.?.y.ptr,
    };
    p.n_arrived.store(n_partial, .release);
    // Queue the first reads before any compute, so the disk works while the cache is computed.
    if (n_missing > 0) p.driveIo(false);
    if (!p.failed.load(.acquire)) s.pool.run(&p, Pipeline.run, s.pool.threadCount(), 1);
    counters.read_bytes += @as(u64, p.submitted) * st.stride + @as(u64, p.want_submitted) * st.updown_stride;
    counters.stall_ns += p.stall_ns;
    if (p.failed.load(.acquire)) {
        recover(st, sc, &p);
        return p.fail_status;
    }
    for (sc.res_slots[0..n_res]) |slot| st.pin[slot].store(0, .release);
    for (sc.miss_slot[0..p.n_entries]) |slot| st.pin[slot].store(0, .release);
    return .ok;
}

/// After a failed read: waits out the reads still in flight (the kernel must not write into slots
/// reused later), forgets every cold slot this token was reading into, and unpins everything.
fn recover(st: *OffloadStore, sc: *Scratch, p: *Pipeline) void {
    if (!st.ring.drain()) st.ring_broken = true;
    for (0..p.n_entries) |m| {
        if (m >= p.submitted and m < p.n_missing) continue; // never given a slot
        const slot = sc.miss_slot[m];
        const k = sc.miss_pos[m];
        if (st.slot_of[p.l * st.ffn + k] == slot) st.forget(slot);
    }
    for (st.pin) |*pin| pin.store(0, .release);
}
