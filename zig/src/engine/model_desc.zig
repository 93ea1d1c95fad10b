//! The model description TypeScript hands to the core: hyperparameters plus, for every tensor the
//! forward pass uses, where it lives in the file. TS resolves GGUF names and metadata (models/*.ts);
//! Zig re-validates everything against the mapped file, since nothing crossing FFI is trusted.
//!
//! Layout: one `ModelDesc`, then `n_layers` `LayerDesc`, in one buffer. core/model_desc.ts writes the
//! same layout; the sizes are exported (`sp_desc_sizes`) and checked by a TS test.
const std = @import("std");

/// Bump on any layout change (core/model_desc.ts holds the same number).
pub const desc_version: u32 = 1;

pub const max_name = 64; // GGUF tensor names are at most 64 bytes (ggml's GGML_MAX_NAME)

pub const TensorDesc = extern struct {
    /// GGUF tensor name, NUL-padded; used only in error messages.
    name: [max_name]u8,
    /// Absolute offset of the tensor data in the file.
    offset: u64,
    /// ne[0] is the fastest-varying dimension (GGUF order): a matrix is (ne[1] rows, ne[0] columns).
    ne: [4]u64,
    /// 0 = tensor absent (only allowed where documented, e.g. a tied classifier).
    n_dims: u32,
    /// GGUF/ggml type id.
    dtype: u32,

    pub fn present(self: *const TensorDesc) bool {
        return self.n_dims != 0;
    }

    pub fn nameSlice(self: *const TensorDesc) []const u8 {
        return std.mem.sliceTo(&self.name, 0);
    }
};

pub const RopeLayout = @import("kernels").ops.RopeLayout;
pub const Activation = @import("kernels").ops.Activation;

pub const ModelDesc = extern struct {
    version: u32,
    n_layers: u32,
    dim: u32,
    ffn_dim: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    vocab_size: u32,
    ctx_train: u32,
    rope_dim: u32,
    rope_layout: u32,
    activation: u32,
    rope_theta: f32,
    rms_eps: f32,
    token_embd: TensorDesc,
    output_norm: TensorDesc,
    /// Absent (n_dims = 0) when the classifier is tied to token_embd.
    output: TensorDesc,
};

pub const LayerDesc = extern struct {
    attn_norm: TensorDesc, // (dim,)
    attn_q: TensorDesc, // (n_heads * head_dim rows, dim cols)
    attn_k: TensorDesc, // (n_kv_heads * head_dim, dim)
    attn_v: TensorDesc, // (n_kv_heads * head_dim, dim)
    attn_output: TensorDesc, // (dim, n_heads * head_dim)
    ffn_norm: TensorDesc, // (dim,)
    ffn_gate: TensorDesc, // (ffn_dim, dim)
    ffn_up: TensorDesc, // (ffn_dim, dim)
    ffn_down: TensorDesc, // (dim, ffn_dim)
};

comptime {
    std.debug.assert(@sizeOf(TensorDesc) == 112);
    std.debug.assert(@sizeOf(ModelDesc) == 56 + 3 * 112);
    std.debug.assert(@sizeOf(LayerDesc) == 9 * 112);
}
