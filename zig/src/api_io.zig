//! The I/O ring's C ABI (sp_io_*), mirrored by core/ffi_io.ts. Compiled into the core through
//! api.zig.
