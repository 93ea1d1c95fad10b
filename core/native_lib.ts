/**
 * Finds the native libraries (the core and the backend plugins), building them from source when
 * they are missing and Zig is available. The lookup order, for each library:
 *
 * 1. `SPARROW_LIB_DIR` (a directory holding the built libraries);
 * 2. the local build, `zig/zig-out/lib` next to this package's sources;
 * 3. a build from source with Zig (`SPARROW_ZIG_EXE`, or `zig` on PATH, or `python3 -m ziglang`),
 *    into `zig/zig-out/lib`.
 *
 * When every step fails, the error lists each path and command tried.
 *
 * @module
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { SparrowError } from "./errors.ts";

/** Platform file name of a shared library called `name` (without prefix or suffix). */
export function libraryFileName(name: string): string {
  switch (Deno.build.os) {
    case "darwin":
      return `lib${name}.dylib`;
    case "windows":
      return `${name}.dll`;
    default:
      return `lib${name}.so`;
  }
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** The `zig/` source folder when this module is loaded from a local checkout, else undefined. */
function zigSourceDir(): string | undefined {
  const here = new URL(import.meta.url);
  if (here.protocol !== "file:") return undefined;
  return join(dirname(fileURLToPath(here)), "..", "zig");
}

/** Zig commands to try, in order. */
function zigCandidates(): string[][] {
  const fromEnv = Deno.env.get("SPARROW_ZIG_EXE");
  const list: string[][] = [];
  if (fromEnv) list.push([fromEnv]);
  list.push(["zig"], ["python3", "-m", "ziglang"]);
  return list;
}

let buildAttempted: string | undefined;

/** Runs `zig build -Doptimize=ReleaseFast` in `srcDir`; returns a description of what happened. */
function buildFromSource(srcDir: string): { ok: boolean; tried: string[] } {
  const tried: string[] = [];
  for (const cmd of zigCandidates()) {
    const shown = `${cmd.join(" ")} build -Doptimize=ReleaseFast (in ${srcDir})`;
    try {
      const out = new Deno.Command(cmd[0], {
        args: [...cmd.slice(1), "build", "-Doptimize=ReleaseFast"],
        cwd: srcDir,
        stdout: "piped",
        stderr: "piped",
      }).outputSync();
      if (out.success) {
        tried.push(`${shown}: built`);
        return { ok: true, tried };
      }
      const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(0, 5).join(" | ");
      tried.push(`${shown}: failed: ${err}`);
    } catch (e) {
      tried.push(`${shown}: ${e instanceof Deno.errors.NotFound ? "not found" : (e as Error).message}`);
    }
  }
  return { ok: false, tried };
}

/**
 * Returns the path of the native library `name` (e.g. `sparrow_core`, `sparrow_backend_cpu`).
 *
 * @param name Library name without platform prefix/suffix.
 * @returns An existing file path.
 * @throws {SparrowError} `native_library_missing`, listing every path and build command tried.
 *
 * @example
 * ```ts ignore
 * import { findNativeLibrary } from "./native_lib.ts";
 * const path = findNativeLibrary("sparrow_core");
 * ```
 */
export function findNativeLibrary(name: string): string {
  const file = libraryFileName(name);
  const tried: string[] = [];
  const envDir = Deno.env.get("SPARROW_LIB_DIR");
  if (envDir) {
    const p = join(envDir, file);
    if (isFile(p)) return p;
    tried.push(`${p} (from SPARROW_LIB_DIR): not found`);
  } else {
    tried.push("SPARROW_LIB_DIR: not set");
  }
  const src = zigSourceDir();
  if (src) {
    const local = join(src, "zig-out", "lib", file);
    if (isFile(local)) return local;
    tried.push(`${local} (local build): not found`);
    if (buildAttempted === undefined) {
      const result = buildFromSource(src);
      buildAttempted = result.tried.join("; ");
      if (result.ok && isFile(local)) return local;
    }
    tried.push(`build from source: ${buildAttempted}`);
  } else {
    tried.push(`local build: not available (module loaded from ${import.meta.url})`);
  }
  throw new SparrowError(
    "native_library_missing",
    `cannot find the native library ${file}. Tried:\n  - ${tried.join("\n  - ")}\n` +
      `Build it with \`zig build -Doptimize=ReleaseFast\` in the zig/ folder, or set SPARROW_LIB_DIR.`,
  );
}
