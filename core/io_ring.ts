/**
 * A thin handle on the core's I/O ring (zig/src/io/ring.zig): open a file with io_uring, a pread
 * thread pool or mmap, read many ranges at once, and the ring benchmark. The engine drives the ring
 * from Zig; this is for tests, benchmarks and tools.
 *
 * Reads land in a page-aligned buffer the core owns (O_DIRECT needs aligned memory, and a JS
 * ArrayBuffer must never be handed to a ring that outlives the call), or in a caller's Uint8Array
 * within {@link IoRing.readMany}, which returns only once every read it started has finished.
 *
 * @module
 */
import { SparrowError, unwrap } from "./errors.ts";
import { core } from "./ffi.ts";

/** How a ring reads. */
export type IoMethod = "io_uring" | "pread_pool" | "mmap";

const methods: readonly IoMethod[] = ["io_uring", "pread_pool", "mmap"];
/** `method` argument of the C ABI meaning "best available". */
const methodAuto = 0xffff_ffff;

function methodId(method: IoMethod | "auto"): number {
  if (method === "auto") return methodAuto;
  const id = methods.indexOf(method);
  if (id < 0) throw new SparrowError("invalid_argument", `unknown I/O method "${method}"`);
  return id;
}

function methodName(id: number): IoMethod {
  const m = methods[id];
  if (m === undefined) throw new SparrowError("internal", `the core reported I/O method ${id}`);
  return m;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const messageBuf = new Uint8Array(1024);

/** The core's message for the last failure on `handle` (or, null, of the last handle-less call). */
function lastIoError(handle: Deno.PointerValue): string {
  const n = Number(core().sp_io_last_error(handle, messageBuf, BigInt(messageBuf.length)));
  return decoder.decode(messageBuf.subarray(0, Math.min(n, messageBuf.length)));
}

/** Settings of {@link IoRing.open}. */
export interface IoRingOptions {
  /** How to read; "auto" (the default) is io_uring where it works, else the pread pool. */
  method?: IoMethod | "auto";
  /** Reads in flight at once (default 32). */
  queueDepth?: number;
  /** Bypass the page cache with O_DIRECT (default true; ignored by mmap). */
  direct?: boolean;
  /** Threads of the pread pool (default 2). */
  preadThreads?: number;
  /** Bytes of the ring's own page-aligned buffer (default 0: none). */
  bufferBytes?: number;
  /** Register that buffer with io_uring, so reads into it are fixed reads (default true). */
  registerBuffer?: boolean;
}

/** One range of {@link IoRing.readMany}: `length` bytes at file `offset` to `dstOffset`. */
export interface IoRead {
  /** Byte offset in the file. */
  offset: number;
  /** Bytes to read. */
  length: number;
  /** Where they go in the destination (the ring's buffer, or the array given). */
  dstOffset: number;
}

// Backstop for rings dropped without close(); the normal path is an explicit close().
const ringFinalizer = new FinalizationRegistry<Deno.PointerObject>((ptr) => core().sp_io_close(ptr));

/**
 * An open I/O ring on one file.
 *
 * @example Reading two blocks
 * ```ts ignore
 * using ring = IoRing.open("model.bundles", { bufferBytes: 8192 });
 * ring.readMany([{ offset: 0, length: 4096, dstOffset: 0 }, { offset: 1 << 20, length: 4096, dstOffset: 4096 }]);
 * const first = ring.bufferBytes(0, 4096);
 * ```
 */
export class IoRing {
  #ptr: Deno.PointerObject | null;
  /** The file read. */
  readonly path: string;
  /** Bytes of the ring's own buffer. */
  readonly bufferLength: number;

  private constructor(ptr: Deno.PointerObject, path: string, bufferLength: number) {
    this.#ptr = ptr;
    this.path = path;
    this.bufferLength = bufferLength;
    ringFinalizer.register(this, ptr, this);
  }

  /**
   * Opens `path` for reading through a ring.
   *
   * @param path The file.
   * @param options Method, queue depth, O_DIRECT, buffer.
   * @throws {SparrowError} `io` when the file cannot be opened, `unsupported` when io_uring is asked
   * for and unavailable, `invalid_argument` for bad options.
   */
  static open(path: string, options: IoRingOptions = {}): IoRing {
    const pathBytes = encoder.encode(path);
    const out = new BigUint64Array(1);
    const bufferBytes = options.bufferBytes ?? 0;
    unwrap(
      core().sp_io_open(
        pathBytes,
        BigInt(pathBytes.length),
        methodId(options.method ?? "auto"),
        options.queueDepth ?? 32,
        options.direct ?? true,
        options.preadThreads ?? 2,
        BigInt(bufferBytes),
        options.registerBuffer ?? true,
        new Uint8Array(out.buffer),
      ),
      () => lastIoError(null),
    );
    const ptr = Deno.UnsafePointer.create(out[0]);
    if (ptr === null) throw new SparrowError("internal", `sp_io_open returned no handle for ${path}`);
    return new IoRing(ptr, path, bufferBytes);
  }

  get #handle(): Deno.PointerObject {
    if (this.#ptr === null) throw new SparrowError("closed", `the I/O ring on ${this.path} is closed`);
    return this.#ptr;
  }

  /** The method that runs. */
  get method(): IoMethod {
    return methodName(core().sp_io_method(this.#handle));
  }

  /** Whether O_DIRECT is in effect. */
  get direct(): boolean {
    return core().sp_io_direct(this.#handle);
  }

  /** What offsets, lengths and destinations must be multiples of (1 without O_DIRECT). */
  get alignment(): number {
    return core().sp_io_alignment(this.#handle);
  }

  /** Which method runs and why, in a sentence. */
  get note(): string {
    const buf = new Uint8Array(512);
    const n = Number(core().sp_io_note(this.#handle, buf, BigInt(buf.length)));
    return decoder.decode(buf.subarray(0, Math.min(n, buf.length)));
  }

  /**
   * Reads every range, all in flight together up to the queue depth, and returns once all are done.
   *
   * @param reads The ranges.
   * @param dst Where they go; the ring's own buffer when omitted. A JS array is rarely aligned
   * enough for O_DIRECT: use it with `direct: false` or mmap.
   * @throws {SparrowError} `io` naming the file, offset and errno of the first read that failed
   * (or "truncated" for a read past the end of the file); `invalid_argument` for a range outside
   * the destination or misaligned under O_DIRECT.
   */
  readMany(reads: readonly IoRead[], dst?: Uint8Array<ArrayBuffer>): void {
    const h = this.#handle;
    const offsets = new BigUint64Array(reads.length);
    const lens = new Uint32Array(reads.length);
    const dstOffsets = new BigUint64Array(reads.length);
    reads.forEach((r, i) => {
      offsets[i] = BigInt(r.offset);
      lens[i] = r.length;
      dstOffsets[i] = BigInt(r.dstOffset);
    });
    unwrap(
      core().sp_io_read_many(
        h,
        offsets,
        lens,
        dstOffsets,
        BigInt(reads.length),
        dst ?? null,
        BigInt(dst?.length ?? 0),
      ),
      () => lastIoError(h),
    );
  }

  /**
   * A copy of `length` bytes of the ring's buffer at `offset`.
   *
   * @param offset Byte offset in the buffer.
   * @param length Bytes to copy.
   */
  bufferBytes(offset: number, length: number): Uint8Array {
    if (offset < 0 || length < 0 || offset + length > this.bufferLength) {
      throw new SparrowError(
        "invalid_argument",
        `bytes [${offset}, ${offset + length}) are outside the ring buffer of ${this.bufferLength}`,
      );
    }
    const ptr = core().sp_io_buffer(this.#handle);
    if (ptr === null || length === 0) return new Uint8Array(0);
    return new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr, length, offset)).slice();
  }

  /** Waits for reads in flight and frees the ring. Safe to call twice. */
  close(): void {
    if (this.#ptr === null) return;
    core().sp_io_close(this.#ptr);
    this.#ptr = null;
    ringFinalizer.unregister(this);
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Faults the core injects into I/O rings, for tests (zig/src/io/io_fault.zig). */
export interface IoFaultPlan {
  /** 1-based number of the read (counted from now, over all rings) that fails. */
  failRead?: number;
  /** The errno it fails with (default 5, EIO). */
  failErrno?: number;
  /** 1-based number of the read that comes back with half its bytes. */
  shortRead?: number;
  /** Whether the file then ends there (default true: a truncated file) or the rest reads normally. */
  shortEof?: boolean;
  /** Make io_uring_setup fail with this errno (1 = EPERM, 38 = ENOSYS). */
  uringOffErrno?: number;
  /** Make opening with O_DIRECT fail with this errno (22 = EINVAL, a file system refusing it). */
  directErrno?: number;
}

/**
 * Installs a fault plan; no plan (or an empty one) turns faults off.
 *
 * @param plan What to break.
 */
export function setIoFaults(plan: IoFaultPlan = {}): void {
  core().sp_io_set_faults(
    BigInt(plan.failRead ?? 0),
    plan.failErrno ?? 5,
    BigInt(plan.shortRead ?? 0),
    plan.shortEof ?? true,
    plan.uringOffErrno ?? 0,
    plan.directErrno ?? 0,
  );
}

/** Settings of {@link ioBench}. */
export interface IoBenchOptions {
  /** How to read (default "auto"). */
  method?: IoMethod | "auto";
  /** Reads in flight (the pread pool gets as many threads, up to 64). */
  queueDepth: number;
  /** Bytes per read, a multiple of 512. */
  blockBytes: number;
  /** Reads in all. */
  reads: number;
  /** Seed of the random offsets (default 1). */
  seed?: number;
  /** Read blocks in order instead of at random. */
  sequential?: boolean;
  /** O_DIRECT (default true). */
  direct?: boolean;
}

/** What {@link ioBench} measured. */
export interface IoBenchResult {
  /** From the first submit to the last completion. */
  elapsedNs: number;
  /** Bytes read. */
  bytes: number;
  /** Reads completed. */
  reads: number;
  /** The method that ran. */
  method: IoMethod;
  /** Whether O_DIRECT was in effect. */
  direct: boolean;
  /** Size of the file. */
  fileBytes: number;
}

/**
 * Reads `reads` blocks of `blockBytes` from `path` (at random block-aligned offsets, or in order),
 * `queueDepth` at a time, in the core, and times it.
 *
 * @param path The file.
 * @param options What to measure.
 * @throws {SparrowError} With the core's message when the file or a read fails.
 */
export function ioBench(path: string, options: IoBenchOptions): IoBenchResult {
  const pathBytes = encoder.encode(path);
  const out = new BigUint64Array(6);
  const flags = (options.sequential ? 1 : 0) | (options.direct === false ? 2 : 0);
  unwrap(
    core().sp_io_bench(
      pathBytes,
      BigInt(pathBytes.length),
      methodId(options.method ?? "auto"),
      options.queueDepth,
      options.blockBytes,
      BigInt(options.reads),
      BigInt(options.seed ?? 1),
      flags,
      out,
    ),
    () => lastIoError(null),
  );
  return {
    elapsedNs: Number(out[0]),
    bytes: Number(out[1]),
    reads: Number(out[2]),
    method: methodName(Number(out[3])),
    direct: out[4] !== 0n,
    fileBytes: Number(out[5]),
  };
}
