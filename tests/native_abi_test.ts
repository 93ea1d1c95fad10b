/**
 * The native boundary: the core must refuse a backend table it cannot use (wrong api_version, too
 * small, a required entry missing, init failing, a type it cannot compute) with a typed error that
 * says why; the kernels' type table must agree with the TypeScript one; and a missing native
 * library must be reported with every path and command tried.
 *
 * Fake tables are built in JS buffers from a copy of the real cpu table (zig/src/backend_api.zig):
 * u32 api_version, u32 struct_size, then pointer-sized fields name, init, deinit, supports,
 * activation_format, activation_bytes, prepare_activation, matvec, matmul, sync, sparse_matvec, axpy_rows.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadBackend, type LoadedBackend } from "../core/backend_loader.ts";
import { NativeModel, NativeSession, type NativeSessionOptions } from "../core/engine.ts";
import { SparrowError } from "../core/errors.ts";
import { core, pluginApiVersion } from "../core/ffi.ts";
import { readGguf } from "../core/gguf.ts";
import { ggmlType, ggmlTypes, tensorBytes } from "../core/gguf_types.ts";
import { encodeModelDesc } from "../core/model_desc.ts";
import { findNativeLibrary, libraryFileName } from "../core/native_lib.ts";
import { llamaHparams, llamaTensors } from "../models/llama.ts";
import { synthesizeModel } from "../models/synth.ts";
import { preloadNativeLibraries, repoRoot } from "./_models.ts";

preloadNativeLibraries();

const ptrBytes = 8;
const fields = [
  "name",
  "init",
  "deinit",
  "supports",
  "activation_format",
  "activation_bytes",
  "prepare_activation",
  "matvec",
  "matmul",
  "sync",
  "sparse_matvec",
  "axpy_rows",
] as const;
type Field = typeof fields[number];
const tableBytes = 8 + fields.length * ptrBytes;
const required: Field[] = [
  "init",
  "deinit",
  "supports",
  "activation_format",
  "activation_bytes",
  "prepare_activation",
  "matvec",
];
const sessionOptions: NativeSessionOptions = { contextLength: 8, threads: 1, batchSize: 4 };

/** A mutable copy of a BackendApi table in JS memory; keeps every buffer it points into alive. */
class FakeTable {
  readonly bytes = new Uint8Array(tableBytes);
  readonly view = new DataView(this.bytes.buffer);
  readonly #keepAlive: unknown[] = [];

  constructor(source: Deno.PointerObject, name = "fake") {
    this.bytes.set(new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(source, tableBytes)));
    this.setName(name);
  }
  set apiVersion(v: number) {
    this.view.setUint32(0, v, true);
  }
  set structSize(v: number) {
    this.view.setUint32(4, v, true);
  }
  setName(name: string | null): void {
    if (name === null) return this.set("name", null);
    const cstr = new TextEncoder().encode(name + "\0");
    this.#keepAlive.push(cstr);
    this.set("name", Deno.UnsafePointer.of(cstr));
  }
  set(field: Field, ptr: Deno.PointerValue): void {
    this.view.setBigUint64(8 + fields.indexOf(field) * ptrBytes, BigInt(Deno.UnsafePointer.value(ptr)), true);
  }
  get(field: Field): bigint {
    return this.view.getBigUint64(8 + fields.indexOf(field) * ptrBytes, true);
  }
  backend(real: LoadedBackend): LoadedBackend {
    return { descriptor: real.descriptor, table: Deno.UnsafePointer.of(this.bytes)!, path: "(fake table)" };
  }
}

interface Fixture {
  dir: string;
  model: NativeModel;
  real: LoadedBackend;
}

/** A tiny synthetic model opened by the core, and the real cpu backend. */
async function withModel(fn: (f: Fixture) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "sparrow_abi_" });
  try {
    const path = join(dir, "tiny.gguf");
    synthesizeModel(path, { shape: "tiny", seed: 3 });
    const gguf = readGguf(path);
    const hp = llamaHparams(gguf);
    const model = NativeModel.open(path, encodeModelDesc(hp, llamaTensors(gguf, hp)));
    try {
      await fn({ dir, model, real: loadBackend("cpu") });
    } finally {
      model.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Creating a session on `table` must fail with `code` and a message matching every pattern. */
function expectRefused(f: Fixture, table: FakeTable, code: string, ...patterns: RegExp[]): void {
  assert.throws(
    () => new NativeSession(f.model, table.backend(f.real), sessionOptions).close(),
    (e) => {
      assert.ok(e instanceof SparrowError, `not a SparrowError: ${String(e)}`);
      assert.equal(e.code, code, e.message);
      for (const p of patterns) assert.match(e.message, p);
      return true;
    },
  );
  assert.equal(f.model.closed, false);
}

async function logitsOf(session: NativeSession, tokens: number[]): Promise<Float32Array> {
  await session.eval(tokens, 0);
  return session.logits().slice();
}

Deno.test("native abi: the cpu table has the documented layout, and a verbatim copy of it works", async () => {
  await withModel(async (f) => {
    const view = new Deno.UnsafePointerView(f.real.table);
    assert.equal(view.getUint32(0), pluginApiVersion);
    assert.equal(view.getUint32(4), tableBytes, "struct_size");
    assert.equal(Deno.UnsafePointerView.getCString(Deno.UnsafePointer.create(view.getBigUint64(8))!), "cpu");
    const copy = new FakeTable(f.real.table);
    const s1 = new NativeSession(f.model, copy.backend(f.real), sessionOptions);
    const s2 = new NativeSession(f.model, f.real, sessionOptions);
    try {
      const a = await logitsOf(s1, [1, 7, 9]);
      const b = await logitsOf(s2, [1, 7, 9]);
      assert.ok(a.every(Number.isFinite));
      assert.deepEqual(a, b);
    } finally {
      s1.close();
      s2.close();
    }
  });
});

Deno.test("native abi: a table with another api_version is refused with abi_mismatch naming both versions", async () => {
  await withModel((f) => {
    for (const v of [0, pluginApiVersion + 1, 99, 0xffffffff]) {
      const t = new FakeTable(f.real.table);
      t.apiVersion = v;
      expectRefused(
        f,
        t,
        "abi_mismatch",
        new RegExp(`backend table speaks plugin api_version ${v}, this core speaks ${pluginApiVersion}`),
      );
    }
    return Promise.resolve();
  });
});

Deno.test("native abi: a truncated table (struct_size too small) is refused", async () => {
  await withModel((f) => {
    for (const size of [0, 8, 40, tableBytes - 8]) {
      const t = new FakeTable(f.real.table);
      t.structSize = size;
      expectRefused(f, t, "abi_mismatch", new RegExp(`table is ${size} bytes, expected ${tableBytes}`));
    }
    return Promise.resolve();
  });
});

Deno.test("native abi: a null required entry is refused, naming the entry; optional ones may be null", async () => {
  await withModel(async (f) => {
    for (const field of required) {
      const t = new FakeTable(f.real.table);
      t.set(field, null);
      expectRefused(f, t, "abi_mismatch", new RegExp(`backend 'fake' lacks the required entry '${field}'`));
    }
    // Without matmul the core falls back to one matvec per token: the same products as the tiled
    // matmul, summed in another order, so equal to f32 rounding (1e-5 of the logits' scale).
    const t = new FakeTable(f.real.table);
    t.set("matmul", null);
    t.set("sync", null);
    t.set("sparse_matvec", null);
    t.set("axpy_rows", null);
    const fallback = new NativeSession(f.model, t.backend(f.real), sessionOptions);
    const reference = new NativeSession(f.model, f.real, sessionOptions);
    try {
      const got = await logitsOf(fallback, [1, 5, 6, 7]);
      const want = await logitsOf(reference, [1, 5, 6, 7]);
      const scale = Math.max(...want.map(Math.abs));
      for (let i = 0; i < want.length; i++) assert.ok(Math.abs(got[i] - want[i]) <= 1e-5 * scale, `logit ${i}`);
    } finally {
      fallback.close();
      reference.close();
    }
  });
});

Deno.test("native abi: a backend whose init fails reports its own message and status", async () => {
  await withModel((f) => {
    let message = "";
    let status = 0;
    const init = new Deno.UnsafeCallback(
      { parameters: ["pointer", "pointer"], result: "i32" } as const,
      (_outCtx, errOut) => {
        // ErrorOut { u8* buf; u64 cap; u64 len }
        const out = new DataView(Deno.UnsafePointerView.getArrayBuffer(errOut!, 24));
        const buf = Deno.UnsafePointer.create(out.getBigUint64(0, true))!;
        const cap = Number(out.getBigUint64(8, true));
        const bytes = new TextEncoder().encode(message);
        new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(buf, cap)).set(bytes.subarray(0, cap));
        // The full length, as snprintf reports it: the core must not read past its buffer.
        out.setBigUint64(16, BigInt(bytes.length), true);
        return status;
      },
    );
    try {
      const t = new FakeTable(f.real.table);
      t.set("init", init.pointer);
      message = "no device found";
      status = 4;
      expectRefused(f, t, "unsupported", /^no device found$/);
      message = "weird status";
      status = 12345;
      expectRefused(f, t, "internal", /^weird status$/);
      // Longer than the core's message buffer: cut to the buffer, not read past it.
      message = "x".repeat(5000);
      status = 2;
      expectRefused(f, t, "out_of_memory", /^x{1024}$/);
    } finally {
      init.close();
    }
    return Promise.resolve();
  });
});

Deno.test("native abi: a backend that cannot compute the model's weight type is refused with unsupported", async () => {
  await withModel((f) => {
    const supports = new Deno.UnsafeCallback(
      { parameters: ["pointer", "u32", "u32"], result: "bool" } as const,
      () => false,
    );
    try {
      const t = new FakeTable(f.real.table);
      t.set("supports", supports.pointer);
      expectRefused(f, t, "unsupported", /backend 'fake' cannot compute with f32 weights/);
    } finally {
      supports.close();
    }
    return Promise.resolve();
  });
});

Deno.test({
  name: "native abi: a backend refused after a successful init is deinitialised",
  // Regression (was a bug): Session.create (zig/src/engine/session.zig) returns `.{ .err = ... }` from a function whose
  // result is a tagged union, not an error union, so `errdefer backend.deinit()` never runs: a backend
  // whose init succeeded but which is then refused (supports() false) or whose buffers cannot be
  // allocated is never deinitialised (its context leaks; a GPU backend would leak its device).
  fn: async () => {
    await withModel((f) => {
      let inits = 0;
      let deinits = 0;
      const init = new Deno.UnsafeCallback({ parameters: ["pointer", "pointer"], result: "i32" } as const, () => {
        inits++;
        return 0;
      });
      const deinit = new Deno.UnsafeCallback({ parameters: ["pointer"], result: "void" } as const, () => {
        deinits++;
      });
      const supports = new Deno.UnsafeCallback(
        { parameters: ["pointer", "u32", "u32"], result: "bool" } as const,
        () => false,
      );
      try {
        const t = new FakeTable(f.real.table);
        t.set("init", init.pointer);
        t.set("deinit", deinit.pointer);
        t.set("supports", supports.pointer);
        expectRefused(f, t, "unsupported");
        assert.equal(inits, 1);
        assert.equal(deinits, 1, "deinit was not called for a refused backend");
      } finally {
        init.close();
        deinit.close();
        supports.close();
      }
      return Promise.resolve();
    });
  },
});

Deno.test({
  name: "native abi: a table of another api_version is refused without reading its other fields",
  // Regression (was a bug): backend_api.validate formats the mismatch message with `std.mem.span(api.name)` before it
  // knows the table's layout: a plugin built for another api_version (where offset 8 may not be a
  // name) or with a null name crashes the process (SIGSEGV) instead of getting abi_mismatch.
  // Run in a child process so the crash is reported, not fatal to this test run.
  fn: async () => {
    const script = `
      import { synthesizeModel } from ${JSON.stringify(new URL("../models/synth.ts", import.meta.url).href)};
      import { readGguf } from ${JSON.stringify(new URL("../core/gguf.ts", import.meta.url).href)};
      import { llamaHparams, llamaTensors } from ${JSON.stringify(new URL("../models/llama.ts", import.meta.url).href)};
      import { encodeModelDesc } from ${JSON.stringify(new URL("../core/model_desc.ts", import.meta.url).href)};
      import { NativeModel, NativeSession } from ${JSON.stringify(new URL("../core/engine.ts", import.meta.url).href)};
      import { loadBackend } from ${JSON.stringify(new URL("../core/backend_loader.ts", import.meta.url).href)};
      const dir = Deno.makeTempDirSync();
      const path = dir + "/tiny.gguf";
      synthesizeModel(path, { shape: "tiny" });
      const g = readGguf(path);
      const hp = llamaHparams(g);
      const model = NativeModel.open(path, encodeModelDesc(hp, llamaTensors(g, hp)));
      const real = loadBackend("cpu");
      const table = new Uint8Array(${tableBytes});
      const view = new DataView(table.buffer);
      view.setUint32(0, ${pluginApiVersion + 1}, true);
      view.setUint32(4, ${tableBytes}, true); // every pointer, the name included, is null
      try {
        new NativeSession(model, { ...real, table: Deno.UnsafePointer.of(table) }, { contextLength: 8, threads: 1, batchSize: 4 });
        console.log("accepted");
      } catch (e) {
        console.log("refused", e.code, e.message);
      }
      Deno.removeSync(dir, { recursive: true });
    `;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--quiet", script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    assert.equal(out.signal, null, `the child died of ${out.signal}: ${new TextDecoder().decode(out.stderr)}`);
    assert.match(stdout, new RegExp(`refused abi_mismatch .*api_version ${pluginApiVersion + 1}`));
  },
});

Deno.test("native abi: sp_dtype_row_bytes agrees with the TypeScript type table", () => {
  const c = core();
  const computable = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0"]; // README: the weight types that work
  const known: string[] = [];
  for (const t of ggmlTypes) {
    for (const blocks of [1, 3, 64]) {
      const n = t.blockElems * blocks;
      const zig = Number(c.sp_dtype_row_bytes(t.id, BigInt(n)));
      if (zig === 0) continue; // the kernels do not know this type
      assert.equal(zig, tensorBytes(t, n, n), `${t.name}: row of ${n}`);
      if (blocks === 1) known.push(t.name);
    }
    if (known.includes(t.name) && t.blockElems > 1) {
      assert.equal(c.sp_dtype_row_bytes(t.id, BigInt(t.blockElems + 1)), 0n, `${t.name}: a partial block is 0`);
    }
  }
  for (const name of computable) assert.ok(known.includes(name), `the kernels know ${name}`);
  // Ids that are no GGML type at all.
  for (const id of [4, 5, 31, 40, 77, 1000, 0xffffffff]) {
    assert.equal(ggmlType(id), undefined);
    assert.equal(c.sp_dtype_row_bytes(id, 256n), 0n, `id ${id}`);
  }
  assert.equal(c.sp_dtype_row_bytes(0, 0n), 0n, "an empty row is 0 bytes");
});

Deno.test("native abi: a missing native library is reported with every path and command tried", async () => {
  const saved = {
    path: Deno.env.get("PATH"),
    lib: Deno.env.get("SPARROW_LIB_DIR"),
    zig: Deno.env.get("SPARROW_ZIG_EXE"),
  };
  const restore = (
    key: string,
    v: string | undefined,
  ) => (v === undefined ? Deno.env.delete(key) : Deno.env.set(key, v));
  const emptyDir = await Deno.makeTempDir({ prefix: "sparrow_nolib_" });
  try {
    // No zig anywhere: the build step must report each command it tried, without running a build.
    Deno.env.set("PATH", emptyDir);
    Deno.env.set("SPARROW_ZIG_EXE", join(emptyDir, "no-such-zig"));
    Deno.env.set("SPARROW_LIB_DIR", emptyDir);
    const file = libraryFileName("sparrow_nonexistent");
    assert.throws(
      () => findNativeLibrary("sparrow_nonexistent"),
      (e) => {
        assert.ok(e instanceof SparrowError);
        assert.equal(e.code, "native_library_missing");
        assert.ok(e.message.includes(`cannot find the native library ${file}`), e.message);
        assert.ok(e.message.includes(`${join(emptyDir, file)} (from SPARROW_LIB_DIR): not found`), e.message);
        assert.ok(
          e.message.includes(`${join(repoRoot, "zig", "zig-out", "lib", file)} (local build): not found`),
          e.message,
        );
        assert.match(e.message, /build from source: .*no-such-zig build -Doptimize=ReleaseFast/);
        assert.match(e.message, /zig build -Doptimize=ReleaseFast \(in .*\): not found/);
        assert.match(e.message, /python3 -m ziglang build/);
        assert.match(e.message, /set SPARROW_LIB_DIR/);
        return true;
      },
    );
    Deno.env.delete("SPARROW_LIB_DIR");
    assert.throws(() => findNativeLibrary("sparrow_nonexistent"), /SPARROW_LIB_DIR: not set/);
    // Pointed at the real build, the real library is found there.
    const libDir = join(repoRoot, "zig", "zig-out", "lib");
    Deno.env.set("SPARROW_LIB_DIR", libDir);
    assert.equal(findNativeLibrary("sparrow_core"), join(libDir, libraryFileName("sparrow_core")));
    assert.equal(findNativeLibrary("sparrow_backend_cpu"), join(libDir, libraryFileName("sparrow_backend_cpu")));
  } finally {
    restore("PATH", saved.path);
    restore("SPARROW_LIB_DIR", saved.lib);
    restore("SPARROW_ZIG_EXE", saved.zig);
    await Deno.remove(emptyDir, { recursive: true });
  }
});
