//! f32 matrix products for predictor training (sparse/train.zig): the three shapes a two-layer MLP's
//! forward and backward passes need. Row-major throughout; each function computes rows [m0, m1) of
//! C so a thread pool can split them. Register-tiled over 8-wide vectors; naive loops in the test
//! are the reference.
const std = @import("std");

const L = 8;
const V = @Vector(L, f32);

/// C[m][n] = sum_k A[m][k] * B[n][k]  (A: M x K, B: N x K; "A times B transposed").
pub fn gemmNT(a: []const f32, b: []const f32, c: []f32, n: usize, k: usize, m0: usize, m1: usize) void {
    var m = m0;
    while (m < m1) : (m += 1) {
        const ar = a[m * k ..][0..k];
        var j: usize = 0;
        while (j + 4 <= n) : (j += 4) {
            var acc: [4]V = .{ @splat(0), @splat(0), @splat(0), @splat(0) };
            var i: usize = 0;
            while (i + L <= k) : (i += L) {
                const av: V = ar[i..][0..L].*;
                inline for (0..4) |q| acc[q] = @mulAdd(V, av, b[(j + q) * k + i ..][0..L].*, acc[q]);
            }
            inline for (0..4) |q| {
                var s = @reduce(.Add, acc[q]);
                for (i..k) |r| s += ar[r] * b[(j + q) * k + r];
                c[m * n + j + q] = s;
            }
        }
        while (j < n) : (j += 1) {
            var s: f32 = 0;
            for (0..k) |r| s += ar[r] * b[j * k + r];
            c[m * n + j] = s;
        }
    }
}

/// C[m][:] = sum_k A[m][k] * B[k][:]  (A: M x K, B: K x N).
pub fn gemmNN(a: []const f32, b: []const f32, c: []f32, n: usize, k: usize, m0: usize, m1: usize) void {
    for (m0..m1) |m| {
        const cr = c[m * n ..][0..n];
        @memset(cr, 0);
        for (0..k) |r| {
            const s = a[m * k + r];
            if (s == 0) continue; // relu-masked and sparse gradients: many exact zeros
            axpy(cr, s, b[r * n ..][0..n]);
        }
    }
}

/// C[m][:] += sum_k A[k][m] * B[k][:]  (A: K x M, B: K x N; "A transposed times B", accumulating).
pub fn gemmTNAccumulate(a: []const f32, b: []const f32, c: []f32, mdim: usize, n: usize, k: usize, m0: usize, m1: usize) void {
    for (m0..m1) |m| {
        const cr = c[m * n ..][0..n];
        for (0..k) |r| {
            const s = a[r * mdim + m];
            if (s == 0) continue;
            axpy(cr, s, b[r * n ..][0..n]);
        }
    }
}

inline fn axpy(y: []f32, s: f32, x: []const f32) void {
    const sv: V = @splat(s);
    var i: usize = 0;
    while (i + L <= y.len) : (i += L) y[i..][0..L].* = @mulAdd(V, sv, x[i..][0..L].*, y[i..][0..L].*);
    while (i < y.len) : (i += 1) y[i] += s * x[i];
}

test "gemm shapes match naive loops" {
    const gpa = std.testing.allocator;
    var prng = std.Random.DefaultPrng.init(3);
    const rng = prng.random();
    const M = 7;
    const N = 13;
    const K = 19;
    const a = try gpa.alloc(f32, M * K);
    defer gpa.free(a);
    const b = try gpa.alloc(f32, N * K);
    defer gpa.free(b);
    const c = try gpa.alloc(f32, M * N);
    defer gpa.free(c);
    for (a) |*v| v.* = rng.floatNorm(f32);
    for (b) |*v| v.* = rng.floatNorm(f32);
    // NT: A (M x K), B (N x K)
    gemmNT(a, b, c, N, K, 0, M);
    for (0..M) |m| for (0..N) |j| {
        var s: f64 = 0;
        for (0..K) |r| s += @as(f64, a[m * K + r]) * b[j * K + r];
        try std.testing.expectApproxEqAbs(s, c[m * N + j], 1e-4);
    };
    // NN: A (M x K), B (K x N): reuse b as a K x N matrix
    gemmNN(a, b[0 .. K * N], c, N, K, 0, M);
    for (0..M) |m| for (0..N) |j| {
        var s: f64 = 0;
        for (0..K) |r| s += @as(f64, a[m * K + r]) * b[r * N + j];
        try std.testing.expectApproxEqAbs(s, c[m * N + j], 1e-4);
    };
    // TN: A (K x M) = a viewed as K x M, B (K x N)
    @memset(c, 1);
    gemmTNAccumulate(a[0 .. K * M], b[0 .. K * N], c, M, N, K, 0, M);
    for (0..M) |m| for (0..N) |j| {
        var s: f64 = 1;
        for (0..K) |r| s += @as(f64, a[r * M + m]) * b[r * N + j];
        try std.testing.expectApproxEqAbs(s, c[m * N + j], 1e-4);
    };
}
