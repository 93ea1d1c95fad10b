/**
 * The only `Deno.dlopen` of the native core: one typed symbol table, opened once per process.
 *
 * Each entry mirrors an `export fn` in zig/src/api.zig; comments give the C-side types. The library
 * is checked on open: its ABI version and struct layouts must be the ones this file was written for,
 * so a stale build fails with a clear error instead of corrupting memory.
 *
 * @module
 */
import { SparrowError } from "./errors.ts";
import { findNativeLibrary } from "./native_lib.ts";
import { ioSymbols } from "./ffi_io.ts";

/** C ABI version this file speaks (`abi_version` in zig/src/api.zig). */
export const coreAbiVersion = 2;
/** Plugin table version (`api_version` in zig/src/backend_api.zig). */
export const pluginApiVersion = 3;
/** Model description version (`desc_version` in zig/src/engine/model_desc.zig). */
export const modelDescVersion = 1;

/** Struct sizes this side writes; checked against the library's own (`sp_layout`). */
export const layout = {
  tensorDesc: 112,
  modelDesc: 392,
  layerDesc: 1008,
  sessionOptions: 16,
} as const;

const symbols = {
  /** u32 sp_abi_version(void) */
  sp_abi_version: { parameters: [], result: "u32" },
  /** void sp_layout(u64 out[7]) */
  sp_layout: { parameters: ["buffer"], result: "void" },
  /** u64 sp_dtype_row_bytes(u32 dtype, u64 n) */
  sp_dtype_row_bytes: { parameters: ["u32", "u64"], result: "u64" },
  /** bool sp_weight_type_supported(u32 dtype) */
  sp_weight_type_supported: { parameters: ["u32"], result: "bool" },
  /** u64 sp_last_error(Model* model_or_null, Session* session_or_null, u8* buf, u64 cap) */
  sp_last_error: { parameters: ["pointer", "pointer", "buffer", "u64"], result: "u64" },
  /** i32 sp_model_open(const u8* path, u64 path_len, const u8* desc, u64 desc_len, Model** out) */
  sp_model_open: { parameters: ["buffer", "u64", "buffer", "u64", "buffer"], result: "i32" },
  /** u64 sp_memory_available(): MemAvailable, lowered to the room under the memory cgroup's limit; 0 unknown */
  sp_memory_available: { parameters: [], result: "u64" },
  /** i32 sp_model_copy_weights(Model* model, u32 with_ffn, u32 threads, const BackendApi* table or null) */
  sp_model_copy_weights: { parameters: ["pointer", "u32", "u32", "pointer"], result: "i32" },
  /** u32 sp_model_row_pairs(const Model*) */
  sp_model_row_pairs: { parameters: ["pointer"], result: "u32" },
  /** i32 sp_model_close(Model* model) */
  sp_model_close: { parameters: ["pointer"], result: "i32" },
  /** i32 sp_session_create(Model* model, const BackendApi* table, const SessionOptions* opts, Session** out) */
  sp_session_create: { parameters: ["pointer", "pointer", "buffer", "buffer"], result: "i32" },
  /** i32 sp_session_destroy(Session* session) */
  sp_session_destroy: { parameters: ["pointer"], result: "i32" },
  /** u32* sp_session_tokens(Session* session): (max_batch,) token input buffer */
  sp_session_tokens: { parameters: ["pointer"], result: "pointer" },
  /** f32* sp_session_logits(Session* session): (vocab,) or (max_batch, vocab) */
  sp_session_logits: { parameters: ["pointer"], result: "pointer" },
  /** void sp_session_info(Session* session, u64 out[6]) */
  sp_session_info: { parameters: ["pointer", "buffer"], result: "void" },
  /** i32 sp_eval(Session* session, u32 n_tokens, u32 pos0), on a worker thread */
  sp_eval: { parameters: ["pointer", "u32", "u32"], result: "i32", nonblocking: true },
  /** The same function, called on the JS thread: ~40 µs less per call, but blocks the event loop. */
  sp_eval_sync: { name: "sp_eval", parameters: ["pointer", "u32", "u32"], result: "i32" },
  /** void sp_sparse_layout(u64 out[5]) */
  sp_sparse_layout: { parameters: ["buffer"], result: "void" },
  /** i32 sp_sparse_create(Model*, const u8* sidecar, u64 len, const u8* desc, u64 len, const u32* perms, u64 n, u32 threads, Sparse** out) */
  sp_sparse_create: {
    parameters: ["pointer", "buffer", "u64", "buffer", "u64", "buffer", "u64", "u32", "buffer"],
    result: "i32",
  },
  /** i32 sp_sparse_destroy(Sparse*) */
  sp_sparse_destroy: { parameters: ["pointer"], result: "i32" },
  /** i32 sp_session_set_sparse(Session*, Sparse* or null, const SparseConfig*) */
  sp_session_set_sparse: { parameters: ["pointer", "pointer", "buffer"], result: "i32" },
  /** u64 sp_session_sparse_stats(Session*, u64* out, u64 cap, bool reset) */
  sp_session_sparse_stats: { parameters: ["pointer", "buffer", "u64", "bool"], result: "u64" },
  /** i32 sp_capture_start(Session*, u64 max_tokens, bool with_up) */
  sp_capture_start: { parameters: ["pointer", "u64", "bool"], result: "i32" },
  /** u64 sp_capture_count(Session*) */
  sp_capture_count: { parameters: ["pointer"], result: "u64" },
  /** void sp_capture_stop(Session*) */
  sp_capture_stop: { parameters: ["pointer"], result: "void" },
  /** i32 sp_calib_cats(Session*, u32 layer, const f32* targets, u64 n, f32* out) */
  sp_calib_cats: { parameters: ["pointer", "u32", "buffer", "u64", "buffer"], result: "i32" },
  /** i32 sp_transpose_down(Model*, u32 layer, u32 down_type, u32* perm, u64 perm_len, u8* out, u64 out_len, u32 threads) */
  sp_transpose_down: {
    parameters: ["pointer", "u32", "u32", "buffer", "u64", "buffer", "u64", "u32"],
    result: "i32",
  },
  /** i32 sp_sparse_create_offloaded(Model*, sidecar path, len, desc, len, u32* perms, u64 n, bundles path, len, offload desc, len, SparseModel** out) */
  sp_sparse_create_offloaded: {
    parameters: [
      "pointer",
      "buffer",
      "u64",
      "buffer",
      "u64",
      "buffer",
      "u64",
      "buffer",
      "u64",
      "buffer",
      "u64",
      "buffer",
    ],
    result: "i32",
  },
  /** i32 sp_sparse_load_hot(SparseModel*, u32 layer) */
  sp_sparse_load_hot: { parameters: ["pointer", "u32"], result: "i32" },
  /** i64 sp_sparse_io_method(SparseModel*, u8* note, u64 cap, u32* method): note length, -1 when in memory */
  sp_sparse_io_method: { parameters: ["pointer", "buffer", "u64", "buffer"], result: "i64" },
  /** u64 sp_sparse_cache_bytes(SparseModel*) */
  sp_sparse_cache_bytes: { parameters: ["pointer"], result: "u64" },
  /** i32 sp_calib_masks(Session*, u32 layer, f32 threshold, u64 t0, u64 n, u32* out) */
  sp_calib_masks: { parameters: ["pointer", "u32", "f32", "u64", "u64", "buffer"], result: "i32" },
  /** i32 sp_calib_frequency(Session*, u32 layer, f32 threshold, f32* out) */
  sp_calib_frequency: { parameters: ["pointer", "u32", "f32", "buffer"], result: "i32" },
  /** i32 sp_calib_train(Session*, u32 layer, const TrainParams*, f32* fc1, f32* fc2, f32* bias, TrainReport* out) */
  sp_calib_train: { parameters: ["pointer", "u32", "buffer", "buffer", "buffer", "buffer", "buffer"], result: "i32" },
  /** i32 sp_calib_thresholds(Session*, u32 layer, fc1, fc2, bias, u32 rank, bool linear, f32 val_fraction, const f32* label_thr, u64 n, f32 recall, f32* score, f32* recall, f32* ratio) */
  sp_calib_thresholds: {
    parameters: [
      "pointer",
      "u32",
      "buffer",
      "buffer",
      "buffer",
      "u32",
      "bool",
      "f32",
      "buffer",
      "u64",
      "f32",
      "buffer",
      "buffer",
      "buffer",
    ],
    result: "i32",
  },
  /** Bench* sp_bench_create(u32 kind, u32 dtype, u64 rows, u64 cols, u32 tokens, u32 threads): kernel benchmarks */
  sp_bench_create: { parameters: ["u32", "u32", "u64", "u64", "u32", "u32"], result: "pointer" },
  /** u64 sp_bench_run(Bench* bench): ns for one operation */
  sp_bench_run: { parameters: ["pointer"], result: "u64" },
  /** u64 sp_bench_bytes(Bench* bench) */
  sp_bench_bytes: { parameters: ["pointer"], result: "u64" },
  /** void sp_bench_destroy(Bench* bench) */
  sp_bench_destroy: { parameters: ["pointer"], result: "void" },
  ...ioSymbols,
} as const satisfies Deno.ForeignLibraryInterface;

/** The opened core library's symbols. */
export type CoreSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];

let opened: { lib: Deno.DynamicLibrary<typeof symbols>; path: string } | undefined;

/**
 * Opens the core library (once per process) and checks its ABI.
 *
 * @returns The typed symbols.
 * @throws {SparrowError} `native_library_missing` if it cannot be found or built, `abi_mismatch` if
 * it was built from other sources than this TypeScript.
 */
export function core(): CoreSymbols {
  if (opened) return opened.lib.symbols;
  const path = findNativeLibrary("sparrow_core");
  // The version first, through a table of one symbol: a library built from older sources may lack
  // symbols of the full table, and then the user should read "rebuild", not "symbol not found".
  let version: number;
  try {
    const probe = Deno.dlopen(path, { sp_abi_version: symbols.sp_abi_version });
    version = probe.symbols.sp_abi_version();
    probe.close();
  } catch (e) {
    throw new SparrowError("native_library_missing", `cannot load ${path}: ${(e as Error).message}`, { cause: e });
  }
  if (version !== coreAbiVersion) {
    throw new SparrowError(
      "abi_mismatch",
      `${path} speaks ABI version ${version}, this TypeScript ${coreAbiVersion}; rebuild it with \`zig build -Doptimize=ReleaseFast\` in zig/`,
    );
  }
  let lib: Deno.DynamicLibrary<typeof symbols>;
  try {
    lib = Deno.dlopen(path, symbols);
  } catch (e) {
    throw new SparrowError("native_library_missing", `cannot load ${path}: ${(e as Error).message}`, { cause: e });
  }
  const abi = lib.symbols.sp_abi_version();
  const got = new BigUint64Array(7);
  lib.symbols.sp_layout(got);
  const want = [
    coreAbiVersion,
    pluginApiVersion,
    modelDescVersion,
    layout.tensorDesc,
    layout.modelDesc,
    layout.layerDesc,
    layout.sessionOptions,
  ];
  if (abi !== coreAbiVersion || want.some((w, i) => BigInt(w) !== got[i])) {
    lib.close();
    throw new SparrowError(
      "abi_mismatch",
      `${path} was built from different sources (ABI/layout [${[...got].join(", ")}], expected [${
        want.join(", ")
      }]); rebuild it with \`zig build -Doptimize=ReleaseFast\` in zig/`,
    );
  }
  opened = { lib, path };
  return lib.symbols;
}

/** Path of the opened core library (opening it if needed). */
export function corePath(): string {
  core();
  return opened!.path;
}

const errorBuf = new Uint8Array(1024);

/**
 * The core's message for the last failure on a model, a session, or (both null) the last
 * handle-less call made on this thread.
 */
export function lastError(model: Deno.PointerValue, session: Deno.PointerValue): string {
  const n = Number(core().sp_last_error(model, session, errorBuf, BigInt(errorBuf.length)));
  return new TextDecoder().decode(errorBuf.subarray(0, Math.min(n, errorBuf.length)));
}
