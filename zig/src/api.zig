//! The core library's C ABI: the only file with `export fn`. core/ffi.ts holds the matching symbol
//! table. Every function that can fail returns a status code (status.zig) and leaves a message in
//! the error sink of the handle it was called on; calls without a handle use a thread-local sink,
//! which is safe because TypeScript makes those calls synchronously on its own thread.
const std = @import("std");
const backend_api = @import("backend_api");
const kernels = @import("kernels");
const status = @import("status.zig");
const desc = @import("engine/model_desc.zig");
const model_mod = @import("engine/model.zig");
const memory_info = @import("engine/memory_info.zig");
const Model = model_mod.Model;
const session_mod = @import("engine/session.zig");
const Session = session_mod.Session;
const forward = @import("engine/forward.zig");
const sparse_desc = @import("sparse/sparse_desc.zig");
const sparse_ffn = @import("sparse/sparse_ffn.zig");
const sparse_model = @import("sparse/sparse_model.zig");
const SparseModel = sparse_model.SparseModel;
const offload_desc = @import("offload/offload_desc.zig");
const Capture = @import("sparse/capture.zig").Capture;
const neuron_store = @import("sparse/neuron_store.zig");
const ThreadPool = @import("engine/thread_pool.zig").ThreadPool;
const Backend = @import("engine/backend.zig").Backend;
const train = @import("sparse/train.zig");
const subspace_fit = @import("sparse/subspace_fit.zig");
const kernel_bench = @import("bench/kernel_bench.zig");

const Status = status.Status;
const allocator = std.heap.c_allocator;

threadlocal var global_sink: status.ErrorSink = .{};

/// Version of this C ABI (the functions below and the structs they take). core/ffi.ts refuses a
/// library whose number differs, which catches a stale build after an update.
pub const abi_version: u32 = 2;

export fn sp_abi_version() u32 {
    return abi_version;
}

/// Writes [abi_version, plugin api_version, model desc version, @sizeOf(TensorDesc),
/// @sizeOf(ModelDesc), @sizeOf(LayerDesc), @sizeOf(SessionOptions)] for TypeScript to cross-check.
export fn sp_layout(out: *[7]u64) void {
    out.* = .{ abi_version, backend_api.api_version, desc.desc_version, @sizeOf(desc.TensorDesc), @sizeOf(desc.ModelDesc), @sizeOf(desc.LayerDesc), @sizeOf(session_mod.SessionOptions) };
}

/// Bytes in a row of `n` elements of type `dtype`, or 0 if not computable (unknown type, partial
/// block). Lets the TS type table be checked against the kernels'.
export fn sp_dtype_row_bytes(dtype: u32, n: u64) u64 {
    const dt: kernels.DType = @enumFromInt(dtype);
    return dt.rowBytes(n) orelse 0;
}

/// Whether weights of GGML type `dtype` can be computed with (the kernels have a dot product for it).
export fn sp_weight_type_supported(dtype: u32) bool {
    const dt: kernels.DType = @enumFromInt(dtype);
    return dt.isWeightType();
}

/// Copies the last error message of `model`, `session`, or (both null) this thread's last handle-less
/// call into `buf`; returns the message's full length.
export fn sp_last_error(model: ?*Model, session: ?*Session, buf: [*]u8, cap: u64) u64 {
    const sink = if (session) |s| &s.sink else if (model) |m| &m.sink else &global_sink;
    return sink.copyTo(buf[0..cap]);
}

export fn sp_model_open(path: [*]const u8, path_len: u64, desc_ptr: [*]const u8, desc_len: u64, out: *?*Model) i32 {
    out.* = null;
    out.* = Model.open(allocator, path[0..path_len], desc_ptr[0..desc_len], &global_sink) catch |e| return model_mod.status(e).code();
    return Status.ok.code();
}

/// Copies the model's weights (`with_ffn` 0: those outside the FFNs; 1: all) out of the file mapping
/// into anonymous memory on `threads` threads (Model.copyWeights).
/// With a backend table (the plugin the model's sessions will use; before any session is open),
/// matrices that backend computes with as row pairs are stored so (model.zig `copyWeights`). A table
/// that does not validate or init only means none are.
export fn sp_model_copy_weights(model: *Model, with_ffn: u32, threads: u32, table: ?*const backend_api.BackendApi) i32 {
    var backend: ?Backend = null;
    if (table) |t| {
        if (model.sessions.load(.acquire) != 0)
            return model.sink.fail(.busy, "sessions are open on the model: its weights cannot be repacked now", .{}).code();
        var ignored: Status = .ok;
        var scratch_sink = status.ErrorSink{};
        backend = Backend.init(t, &scratch_sink, &ignored) catch null;
    }
    defer if (backend) |*b| b.deinit();
    model.copyWeights(with_ffn != 0, threads, if (backend) |*b| b else null) catch return model.sink.fail(.out_of_memory, "out of memory copying the model's weights ({s}) into memory", .{if (with_ffn != 0) "all of them" else "those outside the FFNs"}).code();
    return Status.ok.code();
}

/// How many of the model's matrices `sp_model_copy_weights` stored as row pairs.
export fn sp_model_row_pairs(model: *const Model) u32 {
    return model.row_pair_matrices;
}

/// Bytes of memory this process may still take (engine/memory_info.zig: MemAvailable, lowered to the
/// room under the memory cgroup's limit); 0 where that cannot be read.
export fn sp_memory_available() u64 {
    return memory_info.availableBytes() orelse 0;
}

/// Refused (busy) while sessions on the model are open.
export fn sp_model_close(model: *Model) i32 {
    const open_sessions = model.sessions.load(.acquire);
    if (open_sessions != 0)
        return model.sink.fail(.busy, "model has {d} open session(s); close them first", .{open_sessions}).code();
    model.close();
    return Status.ok.code();
}

export fn sp_session_create(model: *Model, table: *const backend_api.BackendApi, opts: *const session_mod.SessionOptions, out: *?*Session) i32 {
    out.* = null;
    var status_out: Status = .internal;
    out.* = Session.create(allocator, model, table, opts.*, &global_sink, &status_out) catch return status_out.code();
    return Status.ok.code();
}

/// Refused (busy) while an eval runs on the session.
export fn sp_session_destroy(session: *Session) i32 {
    if (session.busy.load(.acquire))
        return session.sink.fail(.busy, "session is evaluating; wait for it to finish", .{}).code();
    session.destroy();
    return Status.ok.code();
}

/// Where TypeScript writes the token ids of the next batch: (max_batch,) u32.
export fn sp_session_tokens(session: *Session) [*]u32 {
    return session.tokens.ptr;
}

/// Where eval leaves logits: (vocab,) or, with the all-logits flag, (max_batch, vocab) f32.
export fn sp_session_logits(session: *Session) [*]f32 {
    return session.logits.ptr;
}

/// Writes [n_ctx, max_batch, kv_len, vocab, allocated bytes, threads] of the session.
export fn sp_session_info(session: *Session, out: *[6]u64) void {
    out.* = .{ session.n_ctx, session.max_batch, session.kv_len, session.model.hp.vocab_size, session.allocatedBytes(), session.pool.threadCount() };
}

/// Evaluates the first `n_tokens` ids of the token buffer at positions pos0.. . TypeScript calls
/// this nonblocking (on a worker thread), so it touches no JS memory.
export fn sp_eval(session: *Session, n_tokens: u32, pos0: u32) i32 {
    if (session.busy.cmpxchgStrong(false, true, .acq_rel, .acquire) != null)
        return session.sink.fail(.busy, "session is already evaluating", .{}).code();
    defer session.busy.store(false, .release);
    session.sink.clear();
    return forward.eval(session, n_tokens, pos0).code();
}

/// Writes [sparse desc version, @sizeOf(SparseDesc), @sizeOf(LayerSparseDesc), @sizeOf(SparseConfig),
/// counters per layer in sp_session_sparse_stats] for TypeScript to cross-check.
export fn sp_sparse_layout(out: *[5]u64) void {
    out.* = .{ sparse_desc.sparse_desc_version, @sizeOf(sparse_desc.SparseDesc), @sizeOf(sparse_desc.LayerSparseDesc), @sizeOf(sparse_ffn.SparseConfig), sparse_ffn.stats_fields };
}

/// Builds sparse FFNs for `model`: the hot-first neuron order (`perms`: n_layers * ffn u32, or 0 of
/// them for the model's order), the transposed down projections, and the predictors described in
/// `desc` (tensors in the file at `sidecar_path`, which may be empty when no layer has one). Uses
/// `threads` threads while building. Counts as a user of the model until destroyed.
export fn sp_sparse_create(model: *Model, sidecar_path: [*]const u8, sidecar_len: u64, desc_ptr: [*]const u8, desc_len: u64, perms: [*]const u32, perms_len: u64, threads: u32, out: *?*SparseModel) i32 {
    out.* = null;
    if (threads == 0 or threads > 256) return global_sink.fail(.invalid_argument, "thread count {d} is outside [1, 256]", .{threads}).code();
    var status_out: Status = .internal;
    out.* = SparseModel.create(allocator, model, sidecar_path[0..sidecar_len], desc_ptr[0..desc_len], perms[0..perms_len], threads, null, &global_sink, &status_out) catch return status_out.code();
    return Status.ok.code();
}

/// Builds offloaded sparse FFNs: as sp_sparse_create, but the FFN neurons come from the bundle file
/// at `bundles_path`, described by `offload` (an OffloadDesc followed by one LayerOffloadDesc per
/// layer), with `perms` the file's hot-first orders. The neuron cache is allocated and the ring
/// opened; sp_sparse_load_hot then fills the hot region layer by layer.
export fn sp_sparse_create_offloaded(model: *Model, sidecar_path: [*]const u8, sidecar_len: u64, desc_ptr: [*]const u8, desc_len: u64, perms: [*]const u32, perms_len: u64, bundles_path: [*]const u8, bundles_len: u64, offload_ptr: [*]const u8, offload_len: u64, out: *?*SparseModel) i32 {
    out.* = null;
    const od_size = @sizeOf(offload_desc.OffloadDesc);
    const ld_size = @sizeOf(offload_desc.LayerOffloadDesc);
    if (offload_len < od_size or (offload_len - od_size) % ld_size != 0) return global_sink.fail(.invalid_argument, "offload description of {d} bytes", .{offload_len}).code();
    var od: offload_desc.OffloadDesc = undefined;
    @memcpy(std.mem.asBytes(&od), offload_ptr[0..od_size]);
    const n = (offload_len - od_size) / ld_size;
    const lds = allocator.alloc(offload_desc.LayerOffloadDesc, n) catch return global_sink.fail(.out_of_memory, "out of memory", .{}).code();
    defer allocator.free(lds);
    @memcpy(std.mem.sliceAsBytes(lds), offload_ptr[od_size..offload_len]);
    var status_out: Status = .internal;
    const cfg = sparse_model.OffloadConfig{ .desc = od, .layers = lds, .path = bundles_path[0..bundles_len] };
    out.* = SparseModel.create(allocator, model, sidecar_path[0..sidecar_len], desc_ptr[0..desc_len], perms[0..perms_len], 1, cfg, &global_sink, &status_out) catch return status_out.code();
    return Status.ok.code();
}

/// Offloaded sparse FFNs: reads layer `layer`'s hot neurons into the cache.
export fn sp_sparse_load_hot(sparse: *SparseModel, layer: u32) i32 {
    const st = sparse.offload orelse return global_sink.fail(.invalid_argument, "these sparse FFNs are not offloaded", .{}).code();
    if (layer >= st.n_layers) return global_sink.fail(.invalid_argument, "layer {d} of {d}", .{ layer, st.n_layers }).code();
    return st.loadHot(layer, &global_sink).code();
}

/// Offloaded sparse FFNs: the I/O method in use (io/ring.zig Method) and, into `note` (at most
/// `cap` bytes), why it was chosen; returns the note's full length. -1 when not offloaded.
export fn sp_sparse_io_method(sparse: *SparseModel, note: [*]u8, cap: u64, method_out: *u32) i64 {
    const st = sparse.offload orelse return -1;
    method_out.* = @intFromEnum(st.ring.method());
    const text = st.ring.note();
    const n = @min(text.len, cap);
    @memcpy(note[0..n], text[0..n]);
    return @intCast(text.len);
}

/// Offloaded sparse FFNs: bytes of the neuron cache (hot and cold regions).
export fn sp_sparse_cache_bytes(sparse: *SparseModel) u64 {
    const st = sparse.offload orelse return 0;
    return st.bytes();
}

/// Packing: writes layer `layer`'s down projection transposed, rows in `perm` order (ffn u32), as
/// `down_type` rows into `out` (ffn * row bytes, `out_len` checked): the very bytes a neuron store
/// built with that order and type holds, so bundles on disk and the in-memory path compute alike.
export fn sp_transpose_down(model: *Model, layer: u32, down_type: u32, perm: [*]const u32, perm_len: u64, out: [*]u8, out_len: u64, threads: u32) i32 {
    const hp = model.hp;
    const t: kernels.DType = @enumFromInt(down_type);
    if (layer >= hp.n_layers) return global_sink.fail(.invalid_argument, "layer {d} of {d}", .{ layer, hp.n_layers }).code();
    if (!kernels.axpy.supported(t) or hp.dim % 32 != 0) return global_sink.fail(.unsupported, "a transposed down projection cannot be stored as {s} for dim {d}", .{ t.name(), hp.dim }).code();
    const row_bytes = t.rowBytes(hp.dim).?;
    if (perm_len != hp.ffn_dim or out_len < row_bytes * hp.ffn_dim) return global_sink.fail(.invalid_argument, "order of {d} neurons (want {d}), output of {d} bytes (want {d})", .{ perm_len, hp.ffn_dim, out_len, row_bytes * hp.ffn_dim }).code();
    if (threads == 0 or threads > 256) return global_sink.fail(.invalid_argument, "thread count {d} is outside [1, 256]", .{threads}).code();
    const seen = allocator.alloc(bool, hp.ffn_dim) catch return global_sink.fail(.out_of_memory, "out of memory", .{}).code();
    defer allocator.free(seen);
    @memset(seen, false);
    for (perm[0..perm_len], 0..) |i, k| {
        if (i >= hp.ffn_dim or seen[i]) return global_sink.fail(.invalid_argument, "neuron order is not a permutation of 0..{d} (entry {d} = {d})", .{ hp.ffn_dim, k, i }).code();
        seen[i] = true;
    }
    const pool = ThreadPool.init(allocator, threads) catch return global_sink.fail(.out_of_memory, "out of memory", .{}).code();
    defer pool.deinit();
    const scratch = allocator.alloc(f32, threads * 32 * hp.ffn_dim) catch return global_sink.fail(.out_of_memory, "out of memory", .{}).code();
    defer allocator.free(scratch);
    neuron_store.transposeDown(model, layer, t, perm[0..perm_len], out[0..out_len], pool, scratch);
    return Status.ok.code();
}

/// Refused (busy) while sessions use it.
export fn sp_sparse_destroy(sparse: *SparseModel) i32 {
    const users = sparse.users.load(.acquire);
    if (users != 0) return global_sink.fail(.busy, "sparse FFNs are used by {d} session(s); detach them first", .{users}).code();
    sparse.destroy();
    return Status.ok.code();
}

/// Attaches sparse FFNs (null detaches) with `cfg` to a session. Refused while it evaluates.
export fn sp_session_set_sparse(session: *Session, sparse: ?*SparseModel, cfg: *const sparse_ffn.SparseConfig) i32 {
    if (session.busy.load(.acquire)) return session.sink.fail(.busy, "session is evaluating", .{}).code();
    return session.attachSparse(sparse, cfg.*, &session.sink).code();
}

/// Copies the session's sparse counters (layers x fields u64, see sparse_ffn.LayerStats) into
/// `out` (at most `cap` values) and returns how many there are; `reset` zeroes them after.
export fn sp_session_sparse_stats(session: *Session, out: [*]u64, cap: u64, reset: bool) u64 {
    const sc = session.sparse_scratch orelse return 0;
    const flat: []const u64 = std.mem.bytesAsSlice(u64, std.mem.sliceAsBytes(sc.stats));
    const n = @min(flat.len, cap);
    @memcpy(out[0..n], flat[0..n]);
    if (reset) @memset(sc.stats, .{});
    return flat.len;
}

/// Calibration: starts recording, per layer and evaluated token, the FFN input and the gate (and,
/// with `with_up`, up) pre-activations, for at most `max_tokens` tokens (dense FFNs only).
export fn sp_capture_start(session: *Session, max_tokens: u64, with_up: bool) i32 {
    if (session.busy.load(.acquire)) return session.sink.fail(.busy, "session is evaluating", .{}).code();
    if (max_tokens == 0 or max_tokens > 1 << 20) return session.sink.fail(.invalid_argument, "capture of {d} tokens is outside [1, 1048576]", .{max_tokens}).code();
    if (session.capture) |c| c.destroy();
    session.capture = null;
    const hp = session.model.hp;
    session.capture = Capture.create(allocator, hp.n_layers, hp.dim, hp.ffn_dim, max_tokens, with_up) catch
        return session.sink.fail(.out_of_memory, "out of memory for a capture of {d} tokens", .{max_tokens}).code();
    return Status.ok.code();
}

/// Calibration: tokens recorded so far.
export fn sp_capture_count(session: *Session) u64 {
    return if (session.capture) |c| c.n else 0;
}

/// Calibration: frees the recording.
export fn sp_capture_stop(session: *Session) void {
    if (session.capture) |c| c.destroy();
    session.capture = null;
}

fn captureOf(session: *Session, layer: u32) ?*Capture {
    const c = session.capture orelse {
        _ = session.sink.fail(.invalid_argument, "no activations were captured (sp_capture_start)", .{});
        return null;
    };
    if (layer >= c.n_layers or c.n < 2) {
        _ = session.sink.fail(.invalid_argument, "layer {d} of {d}, {d} captured tokens", .{ layer, c.n_layers, c.n });
        return null;
    }
    return c;
}

/// Calibration: CATS thresholds of `layer` for `n` target sparsities (quantiles of |silu(gate)|).
export fn sp_calib_cats(session: *Session, layer: u32, targets: [*]const f32, n: u64, out: [*]f32) i32 {
    const c = captureOf(session, layer) orelse return Status.invalid_argument.code();
    train.catsThresholds(allocator, c, layer, targets[0..n], out[0..n]) catch return session.sink.fail(.out_of_memory, "out of memory", .{}).code();
    return Status.ok.code();
}

/// Calibration: out[i] = how often neuron i of `layer` fires (|silu(gate)| > threshold for SwiGLU).
export fn sp_calib_frequency(session: *Session, layer: u32, threshold: f32, out: [*]f32) i32 {
    const c = captureOf(session, layer) orelse return Status.invalid_argument.code();
    train.neuronFrequency(c, session.model.hp.activation, layer, threshold, out[0..c.ffn]);
    return Status.ok.code();
}

/// Calibration: the active sets of recorded tokens [t0, t0 + n) of `layer` as bit masks, ceil(ffn /
/// 32) u32 words per token (see train.activeMasks).
export fn sp_calib_masks(session: *Session, layer: u32, threshold: f32, t0: u64, n: u64, out: [*]u32) i32 {
    const c = captureOf(session, layer) orelse return Status.invalid_argument.code();
    if (t0 > c.n or n > c.n - t0) return session.sink.fail(.invalid_argument, "tokens [{d}, {d}) of {d} recorded", .{ t0, t0 + n, c.n }).code();
    train.activeMasks(c, session.model.hp.activation, layer, threshold, t0, n, out[0 .. n * ((c.ffn + 31) / 32)]);
    return Status.ok.code();
}

/// Calibration: fits the predictor of `layer` into fc1 (rank x dim), fc2 (ffn x rank), bias (ffn):
/// trained (objectives 0 and 1) or the gate's principal subspace (objective 2, a linear predictor).
export fn sp_calib_train(session: *Session, layer: u32, params: *const train.TrainParams, fc1: [*]f32, fc2: [*]f32, bias: [*]f32, report: *train.TrainReport) i32 {
    const c = captureOf(session, layer) orelse return Status.invalid_argument.code();
    const p = params.*;
    if (p.rank == 0 or p.rank > 4096 or p.batch == 0 or !(p.val_fraction > 0 and p.val_fraction < 1) or !(p.learning_rate > 0) or p.objective > 2)
        return session.sink.fail(.invalid_argument, "training parameters rank {d}, batch {d}, val_fraction {d}, learning_rate {d}, objective {d} are not usable", .{ p.rank, p.batch, p.val_fraction, p.learning_rate, p.objective }).code();
    const r: usize = p.rank;
    const n_train = train.trainTokens(c, p.val_fraction);
    if (p.objective == 2) {
        if (r + 1 > n_train) return session.sink.fail(.invalid_argument, "rank {d} needs more than {d} training tokens", .{ r, n_train }).code();
        subspace_fit.fitSubspace(allocator, session.pool, c, layer, &session.model.layers[layer].ffn_gate, r, n_train, p.seed, fc1[0 .. r * c.dim], fc2[0 .. c.ffn * r], bias[0..c.ffn]) catch
            return session.sink.fail(.out_of_memory, "out of memory fitting the predictor of layer {d}", .{layer}).code();
        report.* = .{ .train_loss = 0, .val_loss = 0, .label_rate = 0 };
        report.train_loss = train.gateError(allocator, session.pool, c, layer, fc1[0 .. r * c.dim], fc2[0 .. c.ffn * r], bias[0..c.ffn], r, true, 0, n_train) catch 0;
        report.val_loss = train.gateError(allocator, session.pool, c, layer, fc1[0 .. r * c.dim], fc2[0 .. c.ffn * r], bias[0..c.ffn], r, true, n_train, c.n) catch 0;
        return Status.ok.code();
    }
    train.trainPredictor(allocator, session.pool, c, session.model.hp.activation, layer, p, fc1[0 .. r * c.dim], fc2[0 .. c.ffn * r], bias[0..c.ffn], report) catch
        return session.sink.fail(.out_of_memory, "out of memory training the predictor of layer {d}", .{layer}).code();
    return Status.ok.code();
}

/// Calibration: per target (label threshold), the predictor score threshold for `recall` on the
/// held-out tokens, the recall reached and predicted / truly active there. `linear`: the predictor
/// has no relu between fc1 and fc2.
export fn sp_calib_thresholds(session: *Session, layer: u32, fc1: [*]const f32, fc2: [*]const f32, bias: [*]const f32, rank: u32, linear: bool, val_fraction: f32, label_thresholds: [*]const f32, n: u64, recall: f32, out_score: [*]f32, out_recall: [*]f32, out_ratio: [*]f32) i32 {
    const c = captureOf(session, layer) orelse return Status.invalid_argument.code();
    const r: usize = rank;
    train.chooseThresholds(allocator, session.pool, c, session.model.hp.activation, layer, fc1[0 .. r * c.dim], fc2[0 .. c.ffn * r], bias[0..c.ffn], r, linear, val_fraction, label_thresholds[0..n], recall, out_score[0..n], out_recall[0..n], out_ratio[0..n]) catch
        return session.sink.fail(.out_of_memory, "out of memory choosing thresholds for layer {d}", .{layer}).code();
    return Status.ok.code();
}

/// Benchmark: creates a kernel benchmark (kind 0 memory read of rows*cols bytes, 1 matrix-vector, 2
/// matrix-matrix with `tokens` inputs, 3 gathered rows' dot products, 4 row axpy, 5 memory read of
/// rows of `cols` bytes, the last three over each row with probability 1/`tokens`) over a (rows, cols) matrix of `dtype` on `threads` threads; null if the
/// arguments are bad or memory runs out.
export fn sp_bench_create(kind: u32, dtype: u32, rows: u64, cols: u64, tokens: u32, threads: u32) ?*kernel_bench.Bench {
    const k = std.meta.intToEnum(kernel_bench.Kind, kind) catch return null;
    return kernel_bench.Bench.create(k, @enumFromInt(dtype), rows, cols, tokens, threads) catch null;
}

/// Benchmark: runs the operation once; returns its time in ns.
export fn sp_bench_run(bench: *kernel_bench.Bench) u64 {
    return bench.run();
}

/// Benchmark: bytes one run reads (memory, or weights).
export fn sp_bench_bytes(bench: *kernel_bench.Bench) u64 {
    return bench.bytes();
}

export fn sp_bench_destroy(bench: *kernel_bench.Bench) void {
    bench.destroy();
}

comptime {
    _ = @import("api_io.zig"); // the I/O ring's exports
}

test {
    std.testing.refAllDecls(@This());
    _ = @import("engine/thread_pool.zig");
    _ = @import("api_io.zig");
    _ = subspace_fit;
    _ = @import("offload/offload_store.zig");
    _ = @import("sparse/down_order.zig");
    _ = memory_info;
    _ = @import("engine/weight_rows.zig");
    _ = status;
}
