/**
 * Every backend plugin sparrow knows. A new backend is one folder plus one line here.
 *
 * @module
 */
import type { BackendDescriptor } from "./backend.ts";
import { cpuBackend } from "./cpu/mod.ts";

/** Registered backends, by name. */
export const backends: ReadonlyMap<string, BackendDescriptor> = new Map([
  [cpuBackend.name, cpuBackend],
]);

/** Name of the backend used when none is asked for. */
export const defaultBackend = "cpu";
