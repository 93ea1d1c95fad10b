/**
 * Where tests find real models. Tests that need one skip with a message when it is absent, so the
 * suite runs on a fresh clone without ../shared or the downloaded default model.
 *
 * @module
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";

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

/** The default SmolLM2-135M-Instruct Q4_1 GGUF when it has been downloaded, else undefined. */
export function smollm2Path(): string | undefined {
  const fromEnv = Deno.env.get("SPARROW_SMOLLM2");
  if (fromEnv && exists(fromEnv)) return fromEnv;
  const cached = join(repoRoot, ".cache", "models", "SmolLM2-135M-Instruct.Q4_1.gguf");
  return exists(cached) ? cached : undefined;
}

/** Logs why a test is skipped; returns true so callers can write `if (skip(...)) return;`. */
export function skip(why: string): true {
  console.warn(`  skipped: ${why}`);
  return true;
}
