/**
 * The one error type sparrow throws, and the mapping from the native core's status codes to it.
 *
 * Every failure a caller can act on is a {@link SparrowError} whose `code` says what kind of failure
 * it is and whose message names the file, tensor or value at fault.
 *
 * @module
 */

/** What kind of failure a {@link SparrowError} reports. */
export type SparrowErrorCode =
  | "invalid_argument"
  | "out_of_memory"
  | "io"
  | "unsupported"
  | "abi_mismatch"
  | "bad_model"
  | "busy"
  | "context_full"
  | "internal"
  | "native_library_missing"
  | "closed";

/**
 * The error sparrow throws for bad input, missing files, unsupported models and engine failures.
 *
 * @example Telling a bad model file from other failures
 * ```ts
 * import { SparrowError } from "./errors.ts";
 * try {
 *   throw new SparrowError("bad_model", "model.gguf: not a GGUF file");
 * } catch (e) {
 *   if (e instanceof SparrowError && e.code === "bad_model") console.error(e.message);
 * }
 * ```
 */
export class SparrowError extends Error {
  /** The kind of failure. */
  readonly code: SparrowErrorCode;

  /**
   * Creates an error of kind `code`.
   *
   * @param code The kind of failure.
   * @param message What went wrong, naming the file, tensor or value at fault.
   * @param options Standard error options (`cause`).
   */
  constructor(code: SparrowErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SparrowError";
    this.code = code;
  }
}

/** Status codes of the native core, in the order of `Status` in zig/src/status.zig. */
const statusCodes: readonly SparrowErrorCode[] = [
  "internal", // 0 is ok and never mapped
  "invalid_argument",
  "out_of_memory",
  "io",
  "unsupported",
  "abi_mismatch",
  "bad_model",
  "busy",
  "context_full",
  "internal",
];

/**
 * Turns a native status code into nothing (0) or a thrown {@link SparrowError}.
 *
 * @param status The code a core function returned.
 * @param message Reads the core's message for the failure; called only when status is not 0.
 */
export function unwrap(status: number, message: () => string): void {
  if (status === 0) return;
  const code = statusCodes[status] ?? "internal";
  throw new SparrowError(code, message() || `native call failed with status ${status}`);
}
