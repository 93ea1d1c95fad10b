/**
 * A fingerprint of a model file, recorded in calibration sidecars so a sidecar made for one model is
 * refused for another: SHA-256 over the file size, its first 16 MiB (the whole header and the first
 * weights) and its last 1 MiB. Cheap on a 4 GB file, and any re-quantization, other model or
 * truncation changes it.
 *
 * @module
 */
import { SparrowError } from "./errors.ts";

const head = 16 << 20;
const tail = 1 << 20;

/**
 * Fingerprints a model file.
 *
 * @param path The GGUF file.
 * @returns "sha256:" followed by 64 hex digits.
 * @throws {SparrowError} `io` when the file cannot be read.
 */
export async function modelFingerprint(path: string): Promise<string> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path);
  } catch (e) {
    throw new SparrowError("io", `cannot open '${path}' to fingerprint it: ${(e as Error).message}`, { cause: e });
  }
  try {
    const size = (await file.stat()).size;
    const first = new Uint8Array(Math.min(size, head));
    const last = new Uint8Array(Math.min(Math.max(size - first.length, 0), tail));
    await readAt(file, 0, first);
    await readAt(file, size - last.length, last);
    const sizeBytes = new TextEncoder().encode(`${size}:`);
    const all = new Uint8Array(sizeBytes.length + first.length + last.length);
    all.set(sizeBytes);
    all.set(first, sizeBytes.length);
    all.set(last, sizeBytes.length + first.length);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
    return "sha256:" + Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  } finally {
    file.close();
  }
}

async function readAt(file: Deno.FsFile, offset: number, out: Uint8Array): Promise<void> {
  await file.seek(offset, Deno.SeekMode.Start);
  let got = 0;
  while (got < out.length) {
    const n = await file.read(out.subarray(got));
    if (n === null) throw new SparrowError("io", `unexpected end of file at ${offset + got}`);
    got += n;
  }
}
