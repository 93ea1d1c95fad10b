/**
 * Where tests find real models. Tests that need one skip with a message when it is absent, so the
 * suite runs on a fresh clone without ../shared or the downloaded default model.
 *
 * @module
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { defaultModel, defaultModelPath } from "../core/default_model.ts";
import { loadBackend } from "../core/backend_loader.ts";
import { core } from "../core/ffi.ts";
import assert from "node:assert/strict";
import { SparrowError } from "../core/errors.ts";

/** Repository root (this file is tests/_models.ts). */
export const repoRoot: string = fileURLToPath(new URL("..", import.meta.url));

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** `../shared/models` beside the repository, or undefined when absent. */
export function sharedModelsDir(): string | undefined {
  const dir = join(repoRoot, "..", "shared", "models");
  return exists(dir) ? dir : undefined;
}

/**
 * The default SmolLM2-135M-Instruct Q4_1 GGUF when it has been downloaded (to the cache the CLI
 * uses, or the repository's .cache/ as scripts/test.sh sets it), else undefined.
 */
export function smollm2Path(): string | undefined {
  const candidates = [
    Deno.env.get("SPARROW_SMOLLM2"),
    defaultModelPath(),
    join(repoRoot, ".cache", "models", defaultModel.fileName),
  ];
  return candidates.find((p): p is string => p !== undefined && exists(p));
}

/** Logs why a test is skipped; returns true so callers can write `if (skip(...)) return;`. */
export function skip(why: string): true {
  console.warn(`  skipped: ${why}`);
  return true;
}

/**
 * Opens the native core and the cpu plugin now, at module load. sparrow keeps native libraries open
 * for the life of the process on purpose (closing one while a native thread is inside crashes), so
 * a test that loaded them first would be flagged by Deno's resource sanitizer. Call this at the top
 * level of every test file that runs the engine.
 */
export function preloadNativeLibraries(): void {
  core();
  loadBackend("cpu");
}

/**
 * Lines of this process's memory map that map `path`. Read by `cat`: Deno asks for --allow-all to
 * read /proc/self/maps itself, and the test command grants --allow-run, not everything.
 */
export function mappingsOf(path: string): string[] {
  const out = new Deno.Command("cat", { args: [`/proc/${Deno.pid}/maps`], stdout: "piped", stderr: "piped" })
    .outputSync();
  if (!out.success) throw new Error(`cat /proc/${Deno.pid}/maps: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout).split("\n").filter((l) => l.endsWith(path));
}

/** Asserts `fn` throws (or rejects with) a SparrowError of `code` whose message matches every pattern. */
export async function refuses(fn: () => unknown, code: string, ...patterns: RegExp[]): Promise<void> {
  await assert.rejects(async () => await fn(), (e: unknown) => {
    assert.ok(e instanceof SparrowError, `expected a SparrowError, got ${e}`);
    assert.equal(e.code, code, e.message);
    for (const p of patterns) assert.match(e.message, p);
    return true;
  });
}

/** Largest |a[i] - b[i]| over the rms of b: logits compared with a tolerance relative to their scale. */
export function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let rms = 0;
  for (let i = 0; i < b.length; i++) rms += b[i] * b[i];
  rms = Math.sqrt(rms / b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst / rms;
}
