/**
 * The `cpu` backend: SIMD kernels written with Zig `@Vector` (AVX2/AVX-512 on x86-64, NEON on
 * aarch64, scalar tails), run on the core's thread pool. The reference every other backend is tested
 * against. Native code: zig/src/backends/cpu/plugin.zig.
 *
 * @module
 */
import type { BackendDescriptor } from "../backend.ts";

/** Descriptor of the `cpu` backend. */
export const cpuBackend: BackendDescriptor = {
  name: "cpu",
  description: "SIMD CPU kernels (AVX2/AVX-512 on x86-64, NEON on aarch64) on the core's thread pool",
  libraryName: "sparrow_backend_cpu",
  processor: "cpu",
};
