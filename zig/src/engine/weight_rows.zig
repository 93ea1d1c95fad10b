//! One row of a weight matrix, read whatever layout the model keeps it in (backend_api `Layout`):
//! for code outside the backends that reads weights itself (the neuron store's reordered and
//! transposed copies, the subspace predictor fit). A row of a row-pair matrix is not contiguous:
//! its 8-block batches alternate with its pair partner's.
const std = @import("std");
const api = @import("backend_api");
const WeightView = api.WeightView;
const kernels = @import("kernels");
const DType = kernels.DType;
const quant = kernels.quant;

/// The bytes of row `r`'s pieces, in order: the whole row, or each of its 8-block batches.
const Pieces = struct {
    view: *const WeightView,
    r: usize,

    fn rowPairs(self: Pieces) bool {
        return self.view.layout == @intFromEnum(api.Layout.row_pairs);
    }

    fn batchBytes(self: Pieces) usize {
        return 8 * @as(DType, @enumFromInt(self.view.dtype)).blockBytes().?;
    }

    fn count(self: Pieces) usize {
        return if (self.rowPairs()) self.view.row_bytes / self.batchBytes() else 1;
    }

    fn at(self: Pieces, k: usize) []const u8 {
        const v = self.view;
        if (!self.rowPairs()) return v.data[self.r * v.row_bytes ..][0..v.row_bytes];
        const bb = self.batchBytes();
        const pair = v.data + (self.r & ~@as(usize, 1)) * v.row_bytes;
        return pair[(2 * k + (self.r & 1)) * bb ..][0..bb];
    }
};

/// Copies row `r` of `view` into `out` (row_bytes), blocks in order.
pub fn copyRow(view: *const WeightView, r: usize, out: []u8) void {
    const p = Pieces{ .view = view, .r = r };
    var o: usize = 0;
    for (0..p.count()) |k| {
        const piece = p.at(k);
        @memcpy(out[o..][0..piece.len], piece);
        o += piece.len;
    }
}

/// Dequantizes row `r` of `view` into `out` (n_cols floats).
pub fn dequantizeRow(view: *const WeightView, r: usize, out: []f32) void {
    const t: DType = @enumFromInt(view.dtype);
    const p = Pieces{ .view = view, .r = r };
    const n = p.count();
    const per = view.n_cols / n;
    for (0..n) |k| quant.dequantizeRow(t, p.at(k).ptr, out[k * per ..][0..per]);
}

test "rows of a row-pair matrix read back as they were before the repack" {
    const gpa = std.testing.allocator;
    var prng = std.Random.DefaultPrng.init(3);
    const n_rows = 6;
    const n_cols = 512;
    for ([_]DType{ .q8_0, .q4_0, .q4_1 }) |t| {
        const rb = t.rowBytes(n_cols).?;
        const data = try gpa.alloc(u8, rb * n_rows);
        defer gpa.free(data);
        for (0..n_rows) |r| kernels.dot.fillRandomRow(prng.random(), t, n_cols, data[r * rb ..][0..rb]);
        const plain = try gpa.dupe(u8, data);
        defer gpa.free(plain);
        var scratch: [2 * 1088]u8 = undefined;
        kernels.dot.repackRowPairs(t, data.ptr, rb, 0, n_rows, &scratch);
        const view = WeightView{ .data = data.ptr, .row_bytes = rb, .n_cols = n_cols, .n_rows = n_rows, .dtype = @intFromEnum(t), .layout = @intFromEnum(api.Layout.row_pairs) };
        var row: [1088]u8 = undefined;
        var got: [n_cols]f32 = undefined;
        var want: [n_cols]f32 = undefined;
        for (0..n_rows) |r| {
            copyRow(&view, r, row[0..rb]);
            try std.testing.expectEqualSlices(u8, plain[r * rb ..][0..rb], row[0..rb]);
            dequantizeRow(&view, r, &got);
            quant.dequantizeRow(t, plain[r * rb ..].ptr, &want);
            try std.testing.expectEqualSlices(f32, &want, &got);
        }
    }
}
