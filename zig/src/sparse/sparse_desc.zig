//! What TypeScript hands the core to set up sparse FFNs (core/sparse_desc.ts writes the same
//! layout): per layer, the predictor's two matrices (in the sidecar file, or absent), the score
//! threshold that selects a neuron, and the CATS threshold on |silu(gate)| for SwiGLU models.
const std = @import("std");
const TensorDesc = @import("../engine/model_desc.zig").TensorDesc;

/// Bump on any layout change (core/sparse_desc.ts holds the same number).
pub const sparse_desc_version: u32 = 2;

pub const SparseDesc = extern struct {
    version: u32,
    n_layers: u32,
    /// Element type of the transposed down projection built in memory (ggml type id).
    down_type: u32,
    reserved: u32 = 0,
};

pub const LayerSparseDesc = extern struct {
    /// (rank rows, dim cols): hidden = relu(fc1 · x). n_dims = 0: no predictor for this layer.
    fc1: TensorDesc,
    /// (ffn rows, rank cols): score = fc2 · hidden, one per neuron in the model's own order.
    fc2: TensorDesc,
    /// (ffn,) f32 added to the scores; absent (n_dims = 0) in PowerInfer's predictors.
    fc2_bias: TensorDesc,
    /// A neuron is predicted active when its score >= this (PowerInfer's sparse_threshold).
    score_threshold: f32,
    /// SwiGLU models: a neuron counts as active when |silu(gate)| > this (0 for ReLU models).
    cats_threshold: f32,
    /// Bit 0: the predictor's hidden layer is linear (score = fc2 · (fc1 · x)), as calibration's
    /// subspace fit makes them; PowerInfer's have a relu there.
    flags: u32,
    reserved: u32 = 0,
};

pub const flag_linear_predictor: u32 = 1;

comptime {
    std.debug.assert(@sizeOf(SparseDesc) == 16);
    std.debug.assert(@sizeOf(LayerSparseDesc) == 3 * 112 + 16);
}
