/**
 * The I/O ring's entries of the core's symbol table (zig/src/api_io.zig), kept apart so the ring
 * can grow without touching the rest; core/ffi.ts spreads them into its one table.
 *
 * @module
 */

/** Symbols of zig/src/api_io.zig. */
export const ioSymbols = {} as const satisfies Deno.ForeignLibraryInterface;
