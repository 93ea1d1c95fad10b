/**
 * The I/O ring through FFI: every method reads the right bytes of a real file (O_DIRECT into the
 * ring's aligned buffer, registered or not, and buffered into a JS array); injected faults and
 * misuse surface as SparrowErrors that name the file, offset and errno; io_uring forced off falls
 * back to the pread pool and says so. io_uring cases skip with a message where it is unavailable.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { SparrowError } from "../core/errors.ts";
import { core } from "../core/ffi.ts";
import { ioBench, type IoMethod, type IoRead, IoRing, setIoFaults } from "../core/io_ring.ts";
import { skip } from "./_models.ts";

core(); // loaded for the life of the process, before any test (see tests/_models.ts)

const fileBytes = (1 << 20) + 1000; // the last block is partial
const dir = Deno.makeTempDirSync({ prefix: "sparrow-io-" });
const path = join(dir, "data.bin");
const data = new Uint8Array(fileBytes);
for (let at = 0; at < data.length; at += 65536) crypto.getRandomValues(data.subarray(at, at + 65536));
Deno.writeFileSync(path, data);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

/** Where io_uring works here; otherwise why not (the auto ring's note). */
const uringMissing: string | undefined = (() => {
  using ring = IoRing.open(path);
  return ring.method === "io_uring" ? undefined : ring.note;
})();

function methodsHere(): IoMethod[] {
  if (uringMissing !== undefined) skip(`io_uring cases: ${uringMissing}`);
  return uringMissing === undefined ? ["io_uring", "pread_pool", "mmap"] : ["pread_pool", "mmap"];
}

/** Seeded so a failure can be replayed. */
function randomReads(n: number, seed: number, slot: number): IoRead[] {
  let s = seed;
  const next = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0);
  return Array.from({ length: n }, (_, i) => {
    const length = 512 * (1 + (next() % 8));
    const offset = 512 * (next() % Math.floor((fileBytes - length) / 512));
    return { offset, length, dstOffset: i * slot };
  });
}

function assertBytes(got: Uint8Array, r: IoRead): void {
  assert.deepEqual(got, data.subarray(r.offset, r.offset + r.length), `bytes at file offset ${r.offset}`);
}

function assertIoError(fn: () => void, code: string, ...parts: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert(e instanceof SparrowError, `not a SparrowError: ${e}`);
    assert.equal(e.code, code, e.message);
    for (const p of parts) assert(e.message.includes(p), `"${e.message}" lacks "${p}"`);
    return true;
  });
}

function withFaults(plan: Parameters<typeof setIoFaults>[0], fn: () => void): void {
  setIoFaults(plan);
  try {
    fn();
  } finally {
    setIoFaults();
  }
}

Deno.test("every method reads random aligned ranges into the ring's buffer, byte for byte", () => {
  for (const method of methodsHere()) {
    for (const registerBuffer of [true, false]) {
      using ring = IoRing.open(path, { method, queueDepth: 8, bufferBytes: 64 * 4096, registerBuffer });
      assert.equal(ring.method, method);
      if (method !== "mmap") assert(ring.direct, ring.note);
      if (method === "io_uring" && registerBuffer) assert.match(ring.note, /registered buffer|registering/);
      const reads = randomReads(64, 7 + (registerBuffer ? 1 : 0), 4096);
      ring.readMany(reads);
      for (const r of reads) assertBytes(ring.bufferBytes(r.dstOffset, r.length), r);
    }
  }
});

Deno.test("buffered rings read into a JS array, unaligned ranges included", () => {
  for (const method of methodsHere()) {
    using ring = IoRing.open(path, { method, direct: false, queueDepth: 2 });
    assert.equal(ring.alignment, 1);
    const reads: IoRead[] = Array.from({ length: 50 }, (_, i) => ({
      offset: i * 20011,
      length: 777 + i,
      dstOffset: i * 1000,
    }));
    const dst = new Uint8Array(50 * 1000);
    ring.readMany(reads, dst);
    for (const r of reads) assertBytes(dst.subarray(r.dstOffset, r.dstOffset + r.length), r);
  }
});

Deno.test("a read past the end of the file is an io error saying truncated", () => {
  for (const method of methodsHere()) {
    using ring = IoRing.open(path, { method, bufferBytes: 8192 });
    assertIoError(
      () => ring.readMany([{ offset: 1 << 20, length: 4096, dstOffset: 0 }]),
      "io",
      "truncated",
      path,
      `offset ${1 << 20}`,
    );
    // The 1000 bytes that were there arrived.
    assertBytes(ring.bufferBytes(0, 1000), { offset: 1 << 20, length: 1000, dstOffset: 0 });
  }
});

Deno.test("fault: a read failing with EIO surfaces as an io error naming file, offset and errno", () => {
  for (const method of methodsHere()) {
    using ring = IoRing.open(path, { method, queueDepth: 4, bufferBytes: 16 * 4096 });
    const reads = randomReads(16, 3, 4096);
    withFaults({ failRead: 5, failErrno: 5 }, () => {
      assertIoError(() => ring.readMany(reads), "io", "EIO", path, `offset ${reads[4].offset}`, "fault plan");
    });
    // The other reads completed, and the ring still works.
    for (const [i, r] of reads.entries()) if (i !== 4) assertBytes(ring.bufferBytes(r.dstOffset, r.length), r);
    ring.readMany(reads);
    assertBytes(ring.bufferBytes(reads[4].dstOffset, reads[4].length), reads[4]);
  }
});

Deno.test("fault: a short read at a truncated file is an error; a transient one is invisible", () => {
  for (const method of methodsHere()) {
    using ring = IoRing.open(path, { method, queueDepth: 2, bufferBytes: 8 * 16384 });
    const reads = Array.from({ length: 8 }, (_, i) => ({ offset: i * 65536, length: 16384, dstOffset: i * 16384 }));
    withFaults({ shortRead: 3, shortEof: true }, () => {
      assertIoError(() => ring.readMany(reads), "io", "truncated", path, `offset ${reads[2].offset}`);
    });
    withFaults({ shortRead: 3, shortEof: false }, () => ring.readMany(reads));
    for (const r of reads) assertBytes(ring.bufferBytes(r.dstOffset, r.length), r);
  }
});

Deno.test("fault: io_uring switched off falls back to the pread pool, or is refused when asked for", () => {
  withFaults({ uringOffErrno: 1 }, () => {
    using ring = IoRing.open(path, { bufferBytes: 4096 });
    assert.equal(ring.method, "pread_pool");
    assert.match(ring.note, /io_uring unavailable \(io_uring_setup: EPERM.*\); using a pread pool of 2 threads/);
    ring.readMany([{ offset: 8192, length: 4096, dstOffset: 0 }]);
    assertBytes(ring.bufferBytes(0, 4096), { offset: 8192, length: 4096, dstOffset: 0 });
    assertIoError(() => IoRing.open(path, { method: "io_uring" }), "unsupported", "EPERM", path);
  });
});

Deno.test("fault: a file system refusing O_DIRECT is read through the page cache, as the note says", () => {
  withFaults({ directErrno: 22 }, () => {
    using ring = IoRing.open(path, { method: "pread_pool" });
    assert(!ring.direct);
    assert.match(ring.note, /O_DIRECT refused by the file system \(open: EINVAL/);
  });
});

Deno.test("misuse is refused with a message: misaligned O_DIRECT, ranges outside the buffer, bad files", () => {
  using ring = IoRing.open(path, { method: "pread_pool", bufferBytes: 8192 });
  assert(ring.direct);
  assertIoError(() => ring.readMany([{ offset: 100, length: 4096, dstOffset: 0 }]), "invalid_argument", "512", path);
  assertIoError(() => ring.readMany([{ offset: 0, length: 8192, dstOffset: 4096 }]), "invalid_argument", "ring buffer");
  assertIoError(() => IoRing.open(join(dir, "missing.bin")), "io", "ENOENT", "missing.bin");
  assertIoError(() => IoRing.open(dir), "invalid_argument", "directory");
  assertIoError(() => IoRing.open(path, { queueDepth: 0 }), "invalid_argument", "queue depth 0");
  ring.close();
  ring.close();
  assertIoError(() => ring.readMany([]), "closed");
});

Deno.test("the benchmark reads what it says", () => {
  for (const method of methodsHere()) {
    for (const sequential of [false, true]) {
      const r = ioBench(path, { method, queueDepth: 4, blockBytes: 8192, reads: 200, sequential });
      assert.equal(r.reads, 200);
      assert.equal(r.bytes, 200 * 8192);
      assert.equal(r.method, method);
      assert.equal(r.fileBytes, fileBytes);
      assert(r.elapsedNs > 0);
    }
  }
  assertIoError(() => ioBench(path, { queueDepth: 4, blockBytes: 1000, reads: 1 }), "invalid_argument", "1000");
});
