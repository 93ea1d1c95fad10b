/**
 * What a backend plugin tells sparrow about itself. A backend is a native shared library exporting
 * `sparrow_backend_get` (see zig/src/backend_api.zig) plus one of these descriptors; adding one is a
 * folder under backends/ and a line in backends/registry.ts.
 *
 * @module
 */

/** Describes one backend plugin. */
export interface BackendDescriptor {
  /** Name users pass as `backend` (e.g. "cpu"). */
  readonly name: string;
  /** One line for `--help` and error messages. */
  readonly description: string;
  /** Native library name without platform prefix/suffix, e.g. `sparrow_backend_cpu`. */
  readonly libraryName: string;
  /** The kind of processor it computes on. */
  readonly processor: "cpu" | "gpu" | "npu";
}
