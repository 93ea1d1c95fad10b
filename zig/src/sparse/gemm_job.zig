//! f32 matrix products split over a thread pool by rows of C, for predictor training and the
//! subspace fit (kernels/gemm_f32.zig computes each row range).
const kernels = @import("kernels");
const gemm = kernels.gemm_f32;
const ThreadPool = @import("../engine/thread_pool.zig").ThreadPool;

/// The rows of C a pool job computes with one of the three product shapes.
pub const GemmJob = struct {
    kind: enum { nt, nn, tn },
    a: []const f32,
    b: []const f32,
    c: []f32,
    mdim: usize,
    n: usize,
    k: usize,

    fn run(ctx: *anyopaque, begin: usize, end: usize, _: usize) void {
        const j: *GemmJob = @ptrCast(@alignCast(ctx));
        switch (j.kind) {
            .nt => gemm.gemmNT(j.a, j.b, j.c, j.n, j.k, begin, end),
            .nn => gemm.gemmNN(j.a, j.b, j.c, j.n, j.k, begin, end),
            .tn => gemm.gemmTNAccumulate(j.a, j.b, j.c, j.mdim, j.n, j.k, begin, end),
        }
    }

    /// Computes `rows` rows of C on `pool`, in chunks of about a quarter of each thread's share.
    pub fn exec(self: *GemmJob, pool: *ThreadPool, rows: usize) void {
        pool.run(self, GemmJob.run, rows, @max(1, rows / (pool.threadCount() * 4)));
    }
};
