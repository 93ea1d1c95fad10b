//! Activation capture for calibration: while a session evaluates (dense), it records per layer and
//! token the FFN input x, the gate pre-activation and, for dReLU models, the up pre-activation, as
//! f16, into buffers allocated once. Calibration (sparse/train.zig) reads them in place: predictor
//! training data, CATS thresholds, neuron frequencies.
const std = @import("std");

pub const Capture = struct {
    allocator: std.mem.Allocator,
    n_layers: usize,
    dim: usize,
    ffn: usize,
    max_tokens: usize,
    /// Tokens recorded so far (every layer has this many).
    n: usize = 0,
    /// (layer, token, dim)
    x: []f16,
    /// (layer, token, ffn)
    gate: []f16,
    /// (layer, token, ffn), empty unless requested
    up: []f16,

    pub fn create(allocator: std.mem.Allocator, n_layers: usize, dim: usize, ffn: usize, max_tokens: usize, with_up: bool) !*Capture {
        const self = try allocator.create(Capture);
        errdefer allocator.destroy(self);
        const x = try allocator.alloc(f16, n_layers * max_tokens * dim);
        errdefer allocator.free(x);
        const gate = try allocator.alloc(f16, n_layers * max_tokens * ffn);
        errdefer allocator.free(gate);
        const up = try allocator.alloc(f16, if (with_up) n_layers * max_tokens * ffn else 0);
        self.* = .{ .allocator = allocator, .n_layers = n_layers, .dim = dim, .ffn = ffn, .max_tokens = max_tokens, .x = x, .gate = gate, .up = up };
        return self;
    }

    pub fn destroy(self: *Capture) void {
        const a = self.allocator;
        a.free(self.x);
        a.free(self.gate);
        a.free(self.up);
        a.destroy(self);
    }

    /// Records layer `l` of the tokens of a batch (rows t of x, gate, up), at token index n + t.
    /// Tokens past capacity are dropped; `commit` advances n once every layer has been recorded.
    pub fn record(self: *Capture, l: usize, n_tokens: usize, x: []const f32, gate: []const f32, up: []const f32) void {
        for (0..n_tokens) |t| {
            const at = self.n + t;
            if (at >= self.max_tokens) break;
            toF16(self.x[(l * self.max_tokens + at) * self.dim ..][0..self.dim], x[t * self.dim ..][0..self.dim]);
            toF16(self.gate[(l * self.max_tokens + at) * self.ffn ..][0..self.ffn], gate[t * self.ffn ..][0..self.ffn]);
            if (self.up.len > 0) toF16(self.up[(l * self.max_tokens + at) * self.ffn ..][0..self.ffn], up[t * self.ffn ..][0..self.ffn]);
        }
    }

    pub fn commit(self: *Capture, n_tokens: usize) void {
        self.n = @min(self.n + n_tokens, self.max_tokens);
    }

    pub fn xOf(self: *const Capture, l: usize, t: usize) []const f16 {
        return self.x[(l * self.max_tokens + t) * self.dim ..][0..self.dim];
    }

    pub fn gateOf(self: *const Capture, l: usize, t: usize) []const f16 {
        return self.gate[(l * self.max_tokens + t) * self.ffn ..][0..self.ffn];
    }

    pub fn upOf(self: *const Capture, l: usize, t: usize) ?[]const f16 {
        if (self.up.len == 0) return null;
        return self.up[(l * self.max_tokens + t) * self.ffn ..][0..self.ffn];
    }
};

fn toF16(dst: []f16, src: []const f32) void {
    for (dst, src) |*d, s| d.* = @floatCast(s);
}
