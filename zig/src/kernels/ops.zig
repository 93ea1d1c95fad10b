//! Element-wise and small ops of the transformer block, in f32. Sums that decide a scale (RMSNorm's
//! mean square, softmax's normaliser) accumulate in f64: they are O(n) and cheap next to the matvecs,
//! and f64 keeps them from drifting on long vectors.
const std = @import("std");

pub const RopeLayout = enum(u32) {
    /// Rotate pairs (x[2i], x[2i+1]): llama.cpp's "normal" mode, llama2.c, Meta's original weights.
    interleaved = 0,
    /// Rotate pairs (x[i], x[i + rope_dim/2]): GPT-NeoX / Hugging Face layout.
    neox = 1,
};

pub const Activation = enum(u32) {
    /// silu(gate) * up
    swiglu = 0,
    /// relu(gate) * up
    relu = 1,
    /// relu(gate) * relu(up), as in TurboSparse
    drelu = 2,
};

/// out = x / sqrt(mean(x^2) + eps) * weight
pub fn rmsnorm(out: []f32, x: []const f32, weight: []const f32, eps: f32) void {
    std.debug.assert(out.len == x.len and weight.len == x.len);
    var ss: f64 = 0;
    for (x) |v| ss += @as(f64, v) * v;
    const scale: f32 = @floatCast(1.0 / @sqrt(ss / @as(f64, @floatFromInt(x.len)) + eps));
    for (out, x, weight) |*o, v, w| o.* = w * (v * scale);
}

/// The rotation of position `pos` for RoPE: `cos_sin` (rope_dim floats) gets cos and sin of the
/// angle of each pair i (0 <= i < rope_dim/2), pos * theta^(-2i/rope_dim), computed in f64. Every layer
/// of a token turns by the same angles, so the forward pass computes this once per token: per layer it
/// cost 2 x 64 f64 pow/cos/sin on the 7B shape, 0.5 ms of a ~60 ms sparse token in all.
pub fn ropeAngles(pos: usize, rope_dim: usize, theta: f32, cos_sin: []f32) void {
    std.debug.assert(cos_sin.len >= rope_dim);
    for (0..rope_dim / 2) |i| {
        const exponent = @as(f64, @floatFromInt(2 * i)) / @as(f64, @floatFromInt(rope_dim));
        const freq = 1.0 / std.math.pow(f64, theta, exponent);
        const angle = @as(f64, @floatFromInt(pos)) * freq;
        cos_sin[2 * i] = @floatCast(@cos(angle));
        cos_sin[2 * i + 1] = @floatCast(@sin(angle));
    }
}

/// Rotates the first `rope_dim` dimensions of each `head_dim`-sized head in `vec` by the angles in
/// `cos_sin` (from `ropeAngles`); `layout` says which two elements form pair i.
pub fn rope(vec: []f32, head_dim: usize, rope_dim: usize, layout: RopeLayout, cos_sin: []const f32) void {
    const half = rope_dim / 2;
    std.debug.assert(vec.len % head_dim == 0 and cos_sin.len >= rope_dim);
    var h: usize = 0;
    while (h < vec.len) : (h += head_dim) {
        const head = vec[h .. h + head_dim];
        for (0..half) |i| {
            const a, const b = switch (layout) {
                .interleaved => .{ 2 * i, 2 * i + 1 },
                .neox => .{ i, i + half },
            };
            const c = cos_sin[2 * i];
            const s = cos_sin[2 * i + 1];
            const x0 = head[a];
            const x1 = head[b];
            head[a] = x0 * c - x1 * s;
            head[b] = x0 * s + x1 * c;
        }
    }
}

const lanes = std.simd.suggestVectorLength(f32) orelse 4;
const V = @Vector(lanes, f32);

/// dot(a, b) in f32 with vector lanes (attention scores: q against cached keys).
pub fn dotF32(a: []const f32, b: []const f32) f32 {
    std.debug.assert(a.len == b.len);
    var acc0: V = @splat(0);
    var acc1: V = @splat(0);
    var i: usize = 0;
    while (i + 2 * lanes <= a.len) : (i += 2 * lanes) {
        acc0 = @mulAdd(V, a[i..][0..lanes].*, b[i..][0..lanes].*, acc0);
        acc1 = @mulAdd(V, a[i + lanes ..][0..lanes].*, b[i + lanes ..][0..lanes].*, acc1);
    }
    var sum = @reduce(.Add, acc0 + acc1);
    while (i < a.len) : (i += 1) sum += a[i] * b[i];
    return sum;
}

/// out += a * v (attention: weighted sum of cached values).
pub fn axpy(out: []f32, a: f32, v: []const f32) void {
    std.debug.assert(out.len == v.len);
    const av: V = @splat(a);
    var i: usize = 0;
    while (i + lanes <= out.len) : (i += lanes) {
        out[i..][0..lanes].* = @mulAdd(V, av, v[i..][0..lanes].*, out[i..][0..lanes].*);
    }
    while (i < out.len) : (i += 1) out[i] += a * v[i];
}

/// In-place softmax. exp is taken a vector at a time (`expV`): attention's softmax over a long
/// context called libm's scalar exp once per cached position and query head, which at 8192 positions
/// took about a fifth of the attention kernel's time (bench/kernels_bench.ts).
pub fn softmax(x: []f32) void {
    const sum = expShifted(x).sum;
    const inv: V = @splat(@as(f32, @floatCast(1.0 / sum)));
    var i: usize = 0;
    while (i + lanes <= x.len) : (i += lanes) x[i..][0..lanes].* = @as(V, x[i..][0..lanes].*) * inv;
    while (i < x.len) : (i += 1) x[i] *= inv[0];
}

/// x[i] <- e^(x[i] - max(x)): softmax before its normalization. Returns the max and the sum of the
/// exponentials (in f64), which attention split over position ranges needs to merge the ranges.
pub fn expShifted(x: []f32) struct { max: f32, sum: f64 } {
    var max: f32 = -std.math.inf(f32);
    for (x) |v| max = @max(max, v);
    const m: V = @splat(max);
    const VD = @Vector(lanes, f64);
    var acc: VD = @splat(0);
    var i: usize = 0;
    while (i + lanes <= x.len) : (i += lanes) {
        const e = expV(@as(V, x[i..][0..lanes].*) - m);
        x[i..][0..lanes].* = e;
        acc += @as(VD, @floatCast(e));
    }
    var sum: f64 = @reduce(.Add, acc);
    while (i < x.len) : (i += 1) {
        x[i] = @exp(x[i] - max);
        sum += x[i];
    }
    return .{ .max = max, .sum = sum };
}

/// e^x for each lane, within 2 ulp of f32 exp for x in [-87, 88] (0 below, where f32 exp is
/// subnormal or 0; +inf above; NaN for NaN): x = n ln2 + r with |r| <= ln2/2, e^r from Cephes' degree-5
/// polynomial for expf, times 2^n built in the exponent bits.
pub fn expV(x: V) V {
    const lo: V = @splat(-87.0);
    const hi: V = @splat(88.0);
    const xc = @min(@max(x, lo), hi);
    const n = @round(xc * @as(V, @splat(1.44269504088896341)));
    // ln2 in two parts, so that n * ln2_hi is exact.
    const r = xc - n * @as(V, @splat(0.693359375)) - n * @as(V, @splat(-2.12194440e-4));
    var p: V = @splat(1.9875691500e-4);
    inline for ([_]f32{ 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1 }) |c| {
        p = @mulAdd(V, p, r, @splat(c));
    }
    p = @mulAdd(V, p, r * r, r + @as(V, @splat(1)));
    const IV = @Vector(lanes, i32);
    const scale: V = @bitCast((@as(IV, @intFromFloat(n)) + @as(IV, @splat(127))) << @splat(23));
    const y = p * scale;
    const zero: V = @splat(0);
    const inf: V = @splat(std.math.inf(f32));
    // NaN stays NaN (the clamp above would have turned it into a bound).
    return @select(f32, x != x, x, @select(f32, x < lo, zero, @select(f32, x > hi, inf, y)));
}

inline fn silu(x: f32) f32 {
    return x / (1.0 + @exp(-x));
}

/// gate <- act(gate, up): the FFN's hidden activation, written over `gate`.
pub fn ffnActivation(kind: Activation, gate: []f32, up: []const f32) void {
    switch (kind) {
        .swiglu => for (gate, up) |*g, u| {
            g.* = silu(g.*) * u;
        },
        .relu => for (gate, up) |*g, u| {
            g.* = @max(g.*, 0) * u;
        },
        .drelu => for (gate, up) |*g, u| {
            g.* = @max(g.*, 0) * @max(u, 0);
        },
    }
}

test "rmsnorm normalises to unit mean square" {
    const x = [_]f32{ 1, 2, 3, 4 };
    const w = [_]f32{ 1, 1, 1, 1 };
    var out: [4]f32 = undefined;
    rmsnorm(&out, &x, &w, 0);
    var ms: f32 = 0;
    for (out) |v| ms += v * v;
    try std.testing.expectApproxEqAbs(@as(f32, 4), ms, 1e-5);
}

test "rope layouts rotate different pairs by the same angles" {
    var angles: [8]f32 = undefined;
    ropeAngles(3, 8, 10000, &angles);
    var a = [_]f32{ 1, 0, 1, 0, 1, 0, 1, 0 };
    rope(&a, 8, 8, .interleaved, &angles);
    // pair 0 is (a[0], a[1]) and turns by 3 radians
    try std.testing.expectApproxEqAbs(@as(f32, @cos(3.0)), a[0], 1e-6);
    try std.testing.expectApproxEqAbs(@as(f32, @sin(3.0)), a[1], 1e-6);
    var b = [_]f32{ 1, 1, 1, 1, 0, 0, 0, 0 };
    rope(&b, 8, 8, .neox, &angles);
    // pair 0 is (b[0], b[4])
    try std.testing.expectApproxEqAbs(@as(f32, @cos(3.0)), b[0], 1e-6);
    try std.testing.expectApproxEqAbs(@as(f32, @sin(3.0)), b[4], 1e-6);
}

test "relu activations zero what they should" {
    var g = [_]f32{ -1, 2, 3 };
    const u = [_]f32{ 5, -1, 2 };
    ffnActivation(.drelu, &g, &u);
    try std.testing.expectEqualSlices(f32, &[_]f32{ 0, 0, 6 }, &g);
    var g2 = [_]f32{ -1, 2, 3 };
    ffnActivation(.relu, &g2, &u);
    try std.testing.expectEqualSlices(f32, &[_]f32{ 0, -2, 6 }, &g2);
}

test "vector dot and axpy match scalar loops, tails included" {
    var a: [37]f32 = undefined;
    var b: [37]f32 = undefined;
    for (&a, &b, 0..) |*x, *y, i| {
        x.* = @as(f32, @floatFromInt(i)) * 0.5 - 3;
        y.* = 1.0 / @as(f32, @floatFromInt(i + 1));
    }
    var want: f32 = 0;
    for (a, b) |x, y| want += x * y;
    try std.testing.expectApproxEqRel(want, dotF32(&a, &b), 1e-5);
    var out = b;
    axpy(&out, 2, &a);
    for (out, a, b) |o, x, y| try std.testing.expectApproxEqAbs(y + 2 * x, o, 1e-5);
}

test "expV is within 2 ulp of exp, and softmax sums to 1" {
    var prng = std.Random.DefaultPrng.init(3);
    const rng = prng.random();
    for (0..2000) |_| {
        var x: V = undefined;
        for (0..lanes) |j| x[j] = (rng.float(f32) - 0.5) * 170;
        const e = expV(x);
        for (0..lanes) |j| {
            const want: f32 = @floatCast(@exp(@as(f64, x[j])));
            if (x[j] < -87) {
                try std.testing.expectEqual(@as(f32, 0), e[j]);
            } else {
                try std.testing.expect(@abs(e[j] - want) <= 2 * @abs(want) * std.math.floatEps(f32));
            }
        }
    }
    const nan = expV(@splat(std.math.nan(f32)));
    try std.testing.expect(std.math.isNan(nan[0]));
    var s: [37]f32 = undefined;
    for (&s) |*v| v.* = rng.floatNorm(f32) * 20;
    var want: [37]f64 = undefined;
    var max: f64 = -std.math.inf(f64);
    for (s) |v| max = @max(max, v);
    var total: f64 = 0;
    for (&want, s) |*w, v| {
        w.* = @exp(@as(f64, v) - max);
        total += w.*;
    }
    softmax(&s);
    var sum: f64 = 0;
    for (s, want) |got, w| {
        sum += got;
        try std.testing.expectApproxEqAbs(w / total, @as(f64, got), 1e-6);
    }
    try std.testing.expectApproxEqAbs(@as(f64, 1), sum, 1e-5);
}
