/**
 * The I/O ring's entries of the core's symbol table (zig/src/api_io.zig), kept apart so the ring
 * can grow without touching the rest; core/ffi.ts spreads them into its one table.
 *
 * @module
 */

/** Symbols of zig/src/api_io.zig. */
export const ioSymbols = {
  /** i32 sp_io_open(const u8* path, u64 path_len, u32 method, u32 queue_depth, bool direct, u32 pread_threads, u64 buffer_bytes, bool register_buffer, IoHandle** out) */
  sp_io_open: { parameters: ["buffer", "u64", "u32", "u32", "bool", "u32", "u64", "bool", "buffer"], result: "i32" },
  /** void sp_io_close(IoHandle* h): waits for reads in flight */
  sp_io_close: { parameters: ["pointer"], result: "void" },
  /** u32 sp_io_method(IoHandle* h): 0 io_uring, 1 pread_pool, 2 mmap */
  sp_io_method: { parameters: ["pointer"], result: "u32" },
  /** bool sp_io_direct(IoHandle* h): O_DIRECT in effect */
  sp_io_direct: { parameters: ["pointer"], result: "bool" },
  /** u32 sp_io_alignment(IoHandle* h): what reads must be multiples of (1 without O_DIRECT) */
  sp_io_alignment: { parameters: ["pointer"], result: "u32" },
  /** u64 sp_io_note(IoHandle* h, u8* buf, u64 cap): full length of the note */
  sp_io_note: { parameters: ["pointer", "buffer", "u64"], result: "u64" },
  /** u8* sp_io_buffer(IoHandle* h): the handle's page-aligned buffer, or null */
  sp_io_buffer: { parameters: ["pointer"], result: "pointer" },
  /** u64 sp_io_last_error(IoHandle* h_or_null, u8* buf, u64 cap): full length of the message */
  sp_io_last_error: { parameters: ["pointer", "buffer", "u64"], result: "u64" },
  /** i32 sp_io_read_many(IoHandle* h, const u64* offsets, const u32* lens, const u64* dst_offsets, u64 n, u8* dst_or_null, u64 dst_len) */
  sp_io_read_many: {
    parameters: ["pointer", "buffer", "buffer", "buffer", "u64", "buffer", "u64"],
    result: "i32",
  },
  /** i32 sp_io_bench(const u8* path, u64 path_len, u32 method, u32 queue_depth, u32 block_bytes, u64 n_reads, u64 seed, u32 flags, u64 out[6]) */
  sp_io_bench: {
    parameters: ["buffer", "u64", "u32", "u32", "u32", "u64", "u64", "u32", "buffer"],
    result: "i32",
  },
  /** void sp_io_set_faults(u64 fail_read, u32 fail_errno, u64 short_read, bool short_eof, u32 uring_off_errno, u32 direct_errno) */
  sp_io_set_faults: { parameters: ["u64", "u32", "u64", "bool", "u32", "u32"], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;
