/**
 * Loads backend plugins: dlopens the plugin library and reads its function table pointer, which the
 * core validates (api_version, required entries) when a session is created on it.
 *
 * Plugin libraries stay open for the life of the process: a session's worker threads may be inside
 * one, and closing a library under a running native thread crashes the process.
 *
 * @module
 */
import { backends } from "../backends/registry.ts";
import type { BackendDescriptor } from "../backends/backend.ts";
import { SparrowError } from "./errors.ts";
import { findNativeLibrary } from "./native_lib.ts";

const pluginSymbols = {
  /** const BackendApi* sparrow_backend_get(void) */
  sparrow_backend_get: { parameters: [], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

/** A loaded plugin. */
export interface LoadedBackend {
  /** Its descriptor. */
  readonly descriptor: BackendDescriptor;
  /** Pointer to its `BackendApi` table, handed to the core. */
  readonly table: Deno.PointerObject;
  /** Path of the plugin library. */
  readonly path: string;
}

const loaded = new Map<string, LoadedBackend>();

/**
 * Loads the backend plugin called `name` (once per process).
 *
 * @param name A name registered in backends/registry.ts.
 * @returns The plugin's descriptor and table pointer.
 * @throws {SparrowError} `invalid_argument` for an unknown name (listing the known ones),
 * `native_library_missing` when its library cannot be found or lacks the entry symbol.
 */
export function loadBackend(name: string): LoadedBackend {
  const cached = loaded.get(name);
  if (cached) return cached;
  const descriptor = backends.get(name);
  if (!descriptor) {
    throw new SparrowError("invalid_argument", `unknown backend '${name}' (known: ${[...backends.keys()].join(", ")})`);
  }
  const path = findNativeLibrary(descriptor.libraryName);
  let table: Deno.PointerValue;
  try {
    const lib = Deno.dlopen(path, pluginSymbols);
    table = lib.symbols.sparrow_backend_get();
  } catch (e) {
    throw new SparrowError("native_library_missing", `cannot load backend plugin ${path}: ${(e as Error).message}`, {
      cause: e,
    });
  }
  if (table === null) throw new SparrowError("internal", `backend plugin ${path} returned a null function table`);
  const result = { descriptor, table, path };
  loaded.set(name, result);
  return result;
}
