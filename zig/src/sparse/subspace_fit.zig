//! A training-free predictor: score = V Vᵀ W x + b, where W is the layer's gate matrix and V (ffn x r)
//! spans the top-r principal directions of the gate vectors g = W x captured on calibration text,
//! with b = μ - V Vᵀ μ keeping their mean. So the score is the captured gate's best rank-r
//! reconstruction (PCA), computed from two products and no gradient steps: nothing to tune, no
//! overfitting to a few thousand tokens, minutes on two cores even at 7B.
//!
//! Stored as fc1 = Vᵀ W (r x dim), fc2 = V (ffn x r), bias b; the hidden layer is linear (no relu),
//! which the sidecar records. V comes from a randomized range finder with power iterations on the
//! centred gate matrix, then an exact eigen-decomposition of its small projection.
const std = @import("std");
const kernels = @import("kernels");
const quant = kernels.quant;
const DType = kernels.DType;
const WeightView = @import("backend_api").WeightView;
const ThreadPool = @import("../engine/thread_pool.zig").ThreadPool;
const GemmJob = @import("gemm_job.zig").GemmJob;
const weight_rows = @import("../engine/weight_rows.zig");
const Capture = @import("capture.zig").Capture;

/// Extra directions of the range finder beyond the rank (its accuracy margin).
const oversample = 10;
/// Power iterations: each sharpens the subspace towards the top singular vectors.
const power_iterations = 2;
/// Rows of W dequantized at a time when forming fc1.
const w_chunk_rows = 512;

/// Fits layer `l`'s predictor from the first `n_train` captured tokens and the gate matrix `gate`.
/// fc1: r x dim, fc2: ffn x r, bias: ffn.
pub fn fitSubspace(a: std.mem.Allocator, pool: *ThreadPool, cap: *const Capture, l: usize, gate: *const WeightView, r: usize, n_train: usize, seed: u64, fc1: []f32, fc2: []f32, bias: []f32) !void {
    const ffn = cap.ffn;
    const dim = cap.dim;
    std.debug.assert(fc1.len == r * dim and fc2.len == ffn * r and bias.len == ffn and n_train >= 2);
    var arena_state = std.heap.ArenaAllocator.init(a);
    defer arena_state.deinit();
    const arena = arena_state.allocator();

    // Centred gate vectors G (n x ffn) and their mean μ (kept in `bias` until the end).
    const n = n_train;
    const g = try arena.alloc(f32, n * ffn);
    @memset(bias, 0);
    for (0..n) |t| {
        const row = g[t * ffn ..][0..ffn];
        for (row, cap.gateOf(l, t), bias) |*o, v, *m| {
            o.* = @floatCast(v);
            m.* += o.*;
        }
    }
    const inv_n = 1.0 / @as(f32, @floatFromInt(n));
    for (bias) |*m| m.* *= inv_n;
    for (0..n) |t| {
        for (g[t * ffn ..][0..ffn], bias) |*o, m| o.* -= m;
    }

    // Range finder: Z spans the top right singular directions of G.
    const k = @min(r + oversample, n, ffn);
    std.debug.assert(r <= k);
    const z = try arena.alloc(f32, ffn * k);
    var prng = std.Random.DefaultPrng.init(seed);
    for (z) |*v| v.* = prng.random().floatNorm(f32);
    const y = try arena.alloc(f32, n * k);
    const tmp = try arena.alloc(f32, k * @max(n, ffn));
    var yj = GemmJob{ .kind = .nn, .a = g, .b = z, .c = y, .mdim = n, .n = k, .k = ffn };
    yj.exec(pool, n); // Y = G Ω
    for (0..power_iterations + 1) |_| {
        orthonormalize(y, n, k, tmp);
        @memset(z, 0);
        var zj = GemmJob{ .kind = .tn, .a = g, .b = y, .c = z, .mdim = ffn, .n = k, .k = n };
        zj.exec(pool, ffn); // Z = Gᵀ Y
        orthonormalize(z, ffn, k, tmp);
        yj.exec(pool, n); // Y = G Z
    }

    // G Z = Y: the top-r eigenvectors E of Yᵀ Y rotate Z onto G's principal directions.
    const c = try arena.alloc(f64, k * k);
    for (0..k) |i| {
        for (i..k) |j| {
            var s: f64 = 0;
            for (0..n) |t| s += @as(f64, y[t * k + i]) * y[t * k + j];
            c[i * k + j] = s;
            c[j * k + i] = s;
        }
    }
    const evec = try arena.alloc(f64, k * k);
    const eval = try arena.alloc(f64, k);
    jacobiEigen(c, k, evec, eval);
    const idx = try arena.alloc(usize, k);
    for (idx, 0..) |*v, i| v.* = i;
    std.mem.sort(usize, idx, eval, struct {
        fn desc(e: []f64, x: usize, w: usize) bool {
            return e[x] > e[w];
        }
    }.desc);
    const e_top = try arena.alloc(f32, k * r); // k x r
    for (0..k) |i| {
        for (0..r) |j| e_top[i * r + j] = @floatCast(evec[i * k + idx[j]]);
    }
    var vj = GemmJob{ .kind = .nn, .a = z, .b = e_top, .c = fc2, .mdim = ffn, .n = r, .k = k };
    vj.exec(pool, ffn); // V = Z E  (ffn x r), orthonormal columns

    // fc1 = Vᵀ W, a chunk of W's rows at a time.
    @memset(fc1, 0);
    const wbuf = try arena.alloc(f32, w_chunk_rows * dim);
    var row0: usize = 0;
    while (row0 < ffn) : (row0 += w_chunk_rows) {
        const rows = @min(w_chunk_rows, ffn - row0);
        for (0..rows) |i| weight_rows.dequantizeRow(gate, row0 + i, wbuf[i * dim ..][0..dim]);
        var fj = GemmJob{ .kind = .tn, .a = fc2[row0 * r ..][0 .. rows * r], .b = wbuf[0 .. rows * dim], .c = fc1, .mdim = r, .n = dim, .k = rows };
        fj.exec(pool, r);
    }

    // b = μ - V (Vᵀ μ)
    const vm = try arena.alloc(f32, r);
    @memset(vm, 0);
    for (0..ffn) |i| {
        for (0..r) |j| vm[j] += fc2[i * r + j] * bias[i];
    }
    for (0..ffn) |i| {
        var s: f32 = 0;
        for (0..r) |j| s += fc2[i * r + j] * vm[j];
        bias[i] -= s;
    }
}

/// Orthonormal columns for the (rows x k, row-major) matrix `m`, in place: modified Gram-Schmidt,
/// twice (one pass loses orthogonality in f32), on a column-major copy in `tmp`.
fn orthonormalize(m: []f32, rows: usize, k: usize, tmp: []f32) void {
    for (0..rows) |i| {
        for (0..k) |j| tmp[j * rows + i] = m[i * k + j];
    }
    for (0..2) |_| {
        for (0..k) |j| {
            const cj = tmp[j * rows ..][0..rows];
            for (0..j) |p| {
                const cp = tmp[p * rows ..][0..rows];
                var d: f64 = 0;
                for (cj, cp) |x, w| d += @as(f64, x) * w;
                const df: f32 = @floatCast(d);
                for (cj, cp) |*x, w| x.* -= df * w;
            }
            var norm: f64 = 0;
            for (cj) |x| norm += @as(f64, x) * x;
            const s: f32 = if (norm > 0) @floatCast(1 / @sqrt(norm)) else 0;
            for (cj) |*x| x.* *= s;
        }
    }
    for (0..rows) |i| {
        for (0..k) |j| m[i * k + j] = tmp[j * rows + i];
    }
}

/// Eigen-decomposition of the symmetric k x k matrix `c` (destroyed) by cyclic Jacobi rotations:
/// eigenvalues in `eval`, eigenvectors in the columns of `evec`.
fn jacobiEigen(c: []f64, k: usize, evec: []f64, eval: []f64) void {
    @memset(evec, 0);
    for (0..k) |i| evec[i * k + i] = 1;
    for (0..64) |_| {
        var off: f64 = 0;
        var diag: f64 = 0;
        for (0..k) |i| {
            diag += c[i * k + i] * c[i * k + i];
            for (i + 1..k) |j| off += c[i * k + j] * c[i * k + j];
        }
        if (off <= 1e-22 * diag) break;
        for (0..k) |p| {
            for (p + 1..k) |q| {
                const apq = c[p * k + q];
                if (@abs(apq) < 1e-300) continue;
                const theta = (c[q * k + q] - c[p * k + p]) / (2 * apq);
                const t = std.math.sign(theta) / (@abs(theta) + @sqrt(theta * theta + 1)) + @as(f64, if (theta == 0) 1 else 0);
                const cs = 1 / @sqrt(t * t + 1);
                const sn = t * cs;
                for (0..k) |i| {
                    const cip = c[i * k + p];
                    const ciq = c[i * k + q];
                    c[i * k + p] = cs * cip - sn * ciq;
                    c[i * k + q] = sn * cip + cs * ciq;
                }
                for (0..k) |i| {
                    const cpi = c[p * k + i];
                    const cqi = c[q * k + i];
                    c[p * k + i] = cs * cpi - sn * cqi;
                    c[q * k + i] = sn * cpi + cs * cqi;
                }
                for (0..k) |i| {
                    const vip = evec[i * k + p];
                    const viq = evec[i * k + q];
                    evec[i * k + p] = cs * vip - sn * viq;
                    evec[i * k + q] = sn * vip + cs * viq;
                }
            }
        }
    }
    for (0..k) |i| eval[i] = c[i * k + i];
}

test "jacobiEigen diagonalizes a symmetric matrix" {
    const k = 6;
    var prng = std.Random.DefaultPrng.init(3);
    var c: [k * k]f64 = undefined;
    var orig: [k * k]f64 = undefined;
    for (0..k) |i| {
        for (i..k) |j| {
            const v = prng.random().floatNorm(f64);
            c[i * k + j] = v;
            c[j * k + i] = v;
        }
    }
    orig = c;
    var evec: [k * k]f64 = undefined;
    var eval: [k]f64 = undefined;
    jacobiEigen(&c, k, &evec, &eval);
    // A v = λ v for every eigenpair.
    for (0..k) |e| {
        for (0..k) |i| {
            var s: f64 = 0;
            for (0..k) |j| s += orig[i * k + j] * evec[j * k + e];
            try std.testing.expectApproxEqAbs(eval[e] * evec[i * k + e], s, 1e-9);
        }
    }
}

test "orthonormalize gives orthonormal columns spanning the input" {
    const rows = 40;
    const k = 5;
    var prng = std.Random.DefaultPrng.init(4);
    var m: [rows * k]f32 = undefined;
    for (&m) |*v| v.* = prng.random().floatNorm(f32);
    var tmp: [rows * k]f32 = undefined;
    orthonormalize(&m, rows, k, &tmp);
    for (0..k) |p| {
        for (0..k) |q| {
            var d: f32 = 0;
            for (0..rows) |i| d += m[i * k + p] * m[i * k + q];
            try std.testing.expectApproxEqAbs(@as(f32, if (p == q) 1 else 0), d, 1e-5);
        }
    }
}

test "fitSubspace recovers a gate of rank r exactly" {
    const gpa = std.testing.allocator;
    const dim = 64;
    const ffn = 96;
    const r = 6;
    const n = 120;
    var prng = std.Random.DefaultPrng.init(11);
    const rng = prng.random();
    // W = A Bᵀ (ffn x dim) of rank r, plus a constant input channel so the gate has a nonzero mean.
    const w = try gpa.alloc(f32, ffn * dim);
    defer gpa.free(w);
    var a_m: [ffn * r]f32 = undefined;
    var b_m: [dim * r]f32 = undefined;
    for (&a_m) |*v| v.* = rng.floatNorm(f32);
    for (&b_m) |*v| v.* = rng.floatNorm(f32) / 8;
    for (0..ffn) |i| {
        for (0..dim) |j| {
            var s: f32 = 0;
            for (0..r) |q| s += a_m[i * r + q] * b_m[j * r + q];
            w[i * dim + j] = s;
        }
    }
    const cap = try Capture.create(gpa, 1, dim, ffn, n, false);
    defer cap.destroy();
    var x: [dim]f32 = undefined;
    var g: [ffn]f32 = undefined;
    for (0..n) |_| {
        for (&x, 0..) |*v, j| v.* = if (j == 0) 3 else rng.floatNorm(f32);
        for (&g, 0..) |*o, i| {
            var s: f32 = 0;
            for (0..dim) |j| s += w[i * dim + j] * x[j];
            o.* = s;
        }
        cap.record(0, 1, &x, &g, &.{});
        cap.commit(1);
    }
    const pool = try ThreadPool.init(gpa, 2);
    defer pool.deinit();
    const view = WeightView{ .data = @ptrCast(w.ptr), .row_bytes = dim * 4, .n_cols = dim, .n_rows = ffn, .dtype = @intFromEnum(DType.f32) };
    var fc1: [r * dim]f32 = undefined;
    var fc2: [ffn * r]f32 = undefined;
    var bias: [ffn]f32 = undefined;
    try fitSubspace(gpa, pool, cap, 0, &view, r, n, 1, &fc1, &fc2, &bias);
    // score = fc2 (fc1 x) + bias equals the gate for a fresh input (within f16 capture rounding).
    for (&x, 0..) |*v, j| v.* = if (j == 0) 3 else rng.floatNorm(f32);
    var h: [r]f32 = undefined;
    for (&h, 0..) |*o, q| {
        var s: f32 = 0;
        for (0..dim) |j| s += fc1[q * dim + j] * x[j];
        o.* = s;
    }
    var worst: f32 = 0;
    var scale: f32 = 0;
    for (0..ffn) |i| {
        var want: f32 = 0;
        for (0..dim) |j| want += w[i * dim + j] * x[j];
        var got: f32 = bias[i];
        for (0..r) |q| got += fc2[i * r + q] * h[q];
        worst = @max(worst, @abs(got - want));
        scale = @max(scale, @abs(want));
    }
    try std.testing.expect(worst <= 1e-2 * scale);
}
