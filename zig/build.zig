//! Builds the core library (libsparrow_core) and one shared library per backend plugin
//! (libsparrow_backend_<name>). `zig build test` runs every Zig unit test.
//!
//!   zig build -Doptimize=ReleaseFast            native CPU features (AVX2/AVX-512/NEON as present)
//!   zig build -Dtarget=aarch64-linux-gnu        cross-compile
const std = @import("std");

pub fn build(b: *std.Build) void {
    const target = b.standardTargetOptions(.{});
    const optimize = b.standardOptimizeOption(.{});

    const kernels = b.createModule(.{ .root_source_file = b.path("src/kernels/kernels.zig"), .target = target, .optimize = optimize });
    const backend_api = b.createModule(.{ .root_source_file = b.path("src/backend_api.zig"), .target = target, .optimize = optimize });

    const core_mod = b.createModule(.{
        .root_source_file = b.path("src/api.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
    });
    core_mod.addImport("kernels", kernels);
    core_mod.addImport("backend_api", backend_api);
    const core = b.addLibrary(.{ .linkage = .dynamic, .name = "sparrow_core", .root_module = core_mod });
    b.installArtifact(core);

    const cpu_mod = b.createModule(.{
        .root_source_file = b.path("src/backends/cpu/plugin.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
    });
    cpu_mod.addImport("kernels", kernels);
    cpu_mod.addImport("backend_api", backend_api);
    const cpu = b.addLibrary(.{ .linkage = .dynamic, .name = "sparrow_backend_cpu", .root_module = cpu_mod });
    b.installArtifact(cpu);

    const test_step = b.step("test", "Run the Zig unit tests");
    for ([_]*std.Build.Module{ core_mod, kernels, cpu_mod }) |m| {
        const t = b.addTest(.{ .root_module = m });
        test_step.dependOn(&b.addRunArtifact(t).step);
    }
}
