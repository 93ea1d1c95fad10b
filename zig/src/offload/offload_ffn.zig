//! One token's sparse FFN of one layer when the neurons live in a bundle file: the I/O-compute
//! pipeline.
//!
//! The chosen neurons (hot-first positions) split into those in the cache (hot or cold region) and
//! those on disk. Reads for the missing ones go to the ring first; then every thread computes the
//! cached neurons in clusters while the reads are in flight, and computes each arriving bundle as it
//! lands. There is no barrier per matrix: a neuron's gate, up and down are one bundle, computed
//! whole by whichever thread takes it.
//!
//! Whichever thread runs out of work takes the lock and plays I/O thread: it submits reads as slots
//! and queue depth allow (the cold region may be smaller than one token's misses: slots of computed
//! neurons are reused within the token), reaps completions and publishes them. Time it spends
//! blocked on the ring while no thread computes is I/O on the critical path, reported per layer.
const std = @import("std");
const kernels = @import("kernels");
const ops = kernels.ops;
const Session = @import("../engine/session.zig").Session;
const Status = @import("../status.zig").Status;
const ring_mod = @import("../io/ring.zig");
const OffloadStore = @import("offload_store.zig").OffloadStore;
const none = @import("offload_store.zig").none;
const sparse_ffn = @import("../sparse/sparse_ffn.zig");

const AtomicUsize = std.atomic.Value(usize);

/// Per-store scratch of the pipeline, allocated with the store (one session at a time uses it).
pub const Scratch = struct {
    res_slots: []u32, // (ffn) cached candidates' slots, in selection order
    res_clusters: []u32, // (ffn + 1) cluster starts in res_slots
    work_slots: []u32, // (ffn) per cluster: the slots whose output is not zero
    g: []f32, // (ffn) gate values of resident then missing candidates
    u: []f32,
    miss_pos: []u32, // (ffn) positions of the missing candidates
    miss_slot: []u32, // (ffn) the slot each was read into
    arrived: []u32, // (ffn) indices into miss_*, in arrival order
    reads: []ring_mod.Read, // (queue depth)
    comps: []ring_mod.Completion, // (queue depth)

    pub fn init(a: std.mem.Allocator, ffn: usize, queue_depth: usize) !Scratch {
        var sc: Scratch = undefined;
        inline for (.{ "res_slots", "work_slots", "miss_pos", "miss_slot", "arrived" }) |f| {
            @field(sc, f) = try a.alloc(u32, ffn);
        }
        sc.res_clusters = try a.alloc(u32, ffn + 1);
        sc.g = try a.alloc(f32, ffn);
        sc.u = try a.alloc(f32, ffn);
        sc.reads = try a.alloc(ring_mod.Read, queue_depth);
        sc.comps = try a.alloc(ring_mod.Completion, queue_depth);
        return sc;
    }

    pub fn deinit(sc: *Scratch, a: std.mem.Allocator) void {
        inline for (.{ "res_slots", "work_slots", "miss_pos", "miss_slot", "arrived", "res_clusters", "g", "u", "reads", "comps" }) |f| a.free(@field(sc, f));
    }
};

/// Counters of one layer's cache and I/O, summed over tokens.
pub const IoCounters = struct {
    hot_hits: u64 = 0,
    cold_hits: u64 = 0,
    misses: u64 = 0,
    read_bytes: u64 = 0,
    /// Nanoseconds the pipeline waited on reads with no thread computing.
    stall_ns: u64 = 0,
};

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
    n_missing: usize,
    next_res: AtomicUsize = AtomicUsize.init(0),
    n_arrived: AtomicUsize = AtomicUsize.init(0),
    next_arrival: AtomicUsize = AtomicUsize.init(0),
    done_missing: AtomicUsize = AtomicUsize.init(0),
    computing: AtomicUsize = AtomicUsize.init(0),
    failed: std.atomic.Value(bool) = std.atomic.Value(bool).init(false),
    lock: std.Thread.Mutex = .{},
    // Owned by the lock holder:
    submitted: usize = 0,
    stall_ns: u64 = 0,
    fail_status: Status = .ok,

    fn run(ctx: *anyopaque, _: usize, _: usize, thread: usize) void {
        const p: *Pipeline = @ptrCast(@alignCast(ctx));
        const dim = p.s.model.hp.dim;
        const y = p.s.sparse_scratch.?.y[thread * dim ..][0..dim];
        var active: u64 = 0;
        while (!p.failed.load(.acquire)) {
            // 1. cached clusters
            const c = p.next_res.fetchAdd(1, .acq_rel);
            if (c < p.n_res_clusters) {
                _ = p.computing.fetchAdd(1, .acq_rel);
                active += p.cluster(c, y);
                _ = p.computing.fetchSub(1, .acq_rel);
                continue;
            }
            // 2. arrived bundles
            const j = p.next_arrival.load(.acquire);
            if (j < p.n_arrived.load(.acquire)) {
                if (p.next_arrival.cmpxchgWeak(j, j + 1, .acq_rel, .acquire) == null) {
                    _ = p.computing.fetchAdd(1, .acq_rel);
                    active += p.arrival(p.sc.arrived[j], y);
                    _ = p.computing.fetchSub(1, .acq_rel);
                    _ = p.done_missing.fetchAdd(1, .acq_rel);
                }
                continue;
            }
            if (p.done_missing.load(.acquire) == p.n_missing) break;
            // 3. nothing to compute: drive the I/O
            if (p.lock.tryLock()) {
                defer p.lock.unlock();
                p.driveIo();
            } else {
                std.atomic.spinLoopHint();
            }
        }
        p.s.sparse_scratch.?.active_count[thread] += active;
    }

    /// Gate, up, activation and down of cached cluster `c`; returns neurons with nonzero output.
    fn cluster(p: *Pipeline, c: usize, y: []f32) u64 {
        const sc = p.sc;
        const a = sc.res_clusters[c];
        const b = sc.res_clusters[c + 1];
        const slots = sc.res_slots[a..b];
        const g = sc.g[a..b];
        const u = sc.u[a..b];
        const be = &p.s.backend;
        be.sparseMatvec(&p.st.gate, p.act_gate, slots, g.ptr);
        be.sparseMatvec(&p.st.up, p.act_up, slots, u.ptr);
        var n: usize = 0;
        for (slots, 0..) |slot, j| {
            const h = sparse_ffn.activate(p.kind, g[j], u[j], p.cats);
            if (h != 0) {
                sc.work_slots[a + n] = slot;
                g[n] = h;
                n += 1;
            }
        }
        if (n > 0) be.axpyRows(&p.st.down, sc.work_slots[a .. a + n], g.ptr, y.ptr);
        for (slots) |slot| p.st.pin[slot].store(0, .release);
        return n;
    }

    /// The same for one bundle that arrived from disk (missing candidate `m`).
    fn arrival(p: *Pipeline, m: u32, y: []f32) u64 {
        const sc = p.sc;
        const slot = sc.miss_slot[m];
        const at = sc.res_clusters[p.n_res_clusters] + m; // after the cached candidates' entries
        const be = &p.s.backend;
        const one = sc.miss_slot[m .. m + 1];
        be.sparseMatvec(&p.st.gate, p.act_gate, one, sc.g[at..].ptr);
        be.sparseMatvec(&p.st.up, p.act_up, one, sc.u[at..].ptr);
        var h = sparse_ffn.activate(p.kind, sc.g[at], sc.u[at], p.cats);
        const fired = h != 0;
        if (fired) be.axpyRows(&p.st.down, one, @ptrCast(&h), y.ptr);
        p.st.pin[slot].store(0, .release);
        return @intFromBool(fired);
    }

    /// Lock held: queue reads while slots and queue depth allow, then collect completions (waiting
    /// for one only when nothing else can be done).
    fn driveIo(p: *Pipeline) void {
        const st = p.st;
        const sc = p.sc;
        const ring = st.ring;
        const layer = &st.layers[p.l];
        var n: usize = 0;
        while (p.submitted < p.n_missing and ring.outstanding() + n < p.queue_depth) {
            const slot = st.evict() orelse break;
            const m = p.submitted;
            const k = sc.miss_pos[m];
            st.assign(slot, p.l, k);
            st.pin[slot].store(1, .release);
            sc.miss_slot[m] = slot;
            sc.reads[n] = .{ .offset = layer.file_offset + @as(u64, k) * st.stride, .len = @intCast(st.stride), .dst = st.slab.ptr + @as(usize, slot) * st.stride, .tag = m };
            n += 1;
            p.submitted += 1;
        }
        if (n > 0) ring.submit(sc.reads[0..n]) catch |e| return p.fail(.io, "cannot queue {d} bundle reads of layer {d} ({s}): {s}", .{ n, p.l, @errorName(e), ring.sink.message() });
        if (ring.outstanding() == 0) {
            // Every cold slot is pinned by neurons still being computed: they free up shortly.
            std.Thread.yield() catch {};
            return;
        }
        const idle = p.computing.load(.acquire) == 0 and p.next_arrival.load(.acquire) == p.n_arrived.load(.acquire);
        const t0 = if (idle) std.time.nanoTimestamp() else 0;
        const got = ring.reap(sc.comps, if (idle) 1 else 0) catch |e| return p.fail(.io, "waiting for bundle reads of layer {d} ({s}): {s}", .{ p.l, @errorName(e), ring.sink.message() });
        if (idle) p.stall_ns += @intCast(std.time.nanoTimestamp() - t0);
        const base = p.n_arrived.load(.acquire);
        for (sc.comps[0..got], 0..) |comp, i| {
            const m: usize = @intCast(comp.tag);
            if (comp.status != .ok) {
                const k = sc.miss_pos[m];
                return p.fail(.io, "reading the bundle of layer {d} neuron position {d} (offset {d}): {s} ({s})", .{ p.l, k, layer.file_offset + @as(u64, k) * st.stride, @tagName(comp.status), ring.sink.message() });
            }
            sc.arrived[base + i] = @intCast(m);
        }
        p.n_arrived.store(base + got, .release);
    }

    fn fail(p: *Pipeline, status: Status, comptime fmt: []const u8, args: anytype) void {
        p.fail_status = p.s.sink.fail(status, fmt, args);
        p.failed.store(true, .release);
    }
};

/// Computes y = FFN(x) of layer `l` for the selected positions `sel_pos` (hot-first order), with
/// the activations prepared by the caller. Adds each thread's part into its accumulator in the
/// session scratch; returns the status (an I/O failure names the layer, neuron and offset).
pub fn offloadFfn(s: *Session, st: *OffloadStore, sc: *Scratch, l: usize, sel_pos: []const u32, cluster_size: usize, kind: ops.Activation, cats: f32, act_gate: [*]const u8, act_up: [*]const u8, queue_depth: usize, counters: *IoCounters) Status {
    if (st.ring_broken) return s.sink.fail(.io, "the bundle file's reads failed beyond recovery earlier; reopen the model", .{});
    // Split into cached (grouped in clusters) and missing; pin what the token needs.
    var n_res: usize = 0;
    var n_missing: usize = 0;
    var n_clusters: usize = 0;
    sc.res_clusters[0] = 0;
    for (sel_pos) |k| {
        const slot = st.slot_of[l * st.ffn + k];
        if (slot == none) {
            sc.miss_pos[n_missing] = k;
            n_missing += 1;
            continue;
        }
        if (st.isHot(slot)) counters.hot_hits += 1 else counters.cold_hits += 1;
        st.touch(slot);
        st.pin[slot].store(1, .release);
        sc.res_slots[n_res] = slot;
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
    };
    // Queue the first reads before any compute, so the disk works while the cache is computed.
    if (n_missing > 0) p.driveIo();
    if (!p.failed.load(.acquire)) s.pool.run(&p, Pipeline.run, s.pool.threadCount(), 1);
    counters.read_bytes += @as(u64, p.submitted) * st.stride;
    counters.stall_ns += p.stall_ns;
    if (p.failed.load(.acquire)) {
        recover(st, sc, &p);
        return p.fail_status;
    }
    return .ok;
}

/// After a failed read: waits out the reads still in flight (the kernel must not write into slots
/// reused later), forgets every bundle this token was reading, and unpins everything.
fn recover(st: *OffloadStore, sc: *Scratch, p: *Pipeline) void {
    if (!st.ring.drain()) st.ring_broken = true;
    for (sc.miss_slot[0..p.submitted], sc.miss_pos[0..p.submitted]) |slot, k| {
        if (st.slot_of[p.l * st.ffn + k] == slot) st.slot_of[p.l * st.ffn + k] = none;
        st.owner[slot - st.hot_slots] = none;
    }
    for (st.pin) |*pin| pin.store(0, .release);
}
