/**
 * llama.cpp as the benchmarks' peer: node-llama-cpp 3.22.1 (prebuilt llama.cpp) run by Node in a
 * subprocess on the same GGUF with the same thread count, measuring prefill and greedy decode the
 * way bench/generate_bench.ts measures sparrow. Installed on first use by scripts/install_llamacpp.sh.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { join } from "node:path";

const root = fileURLToPath(new URL("..", import.meta.url));

/** What llama.cpp measured, or why it could not run. */
export type LlamaCppResult =
  | { ok: true; prefillTokensPerSecond: number; decodeTokensPerSecond: number; loadMs: number }
  | { ok: false; why: string };

let installed: string | undefined;

async function install(): Promise<string | undefined> {
  if (installed !== undefined) return installed || undefined;
  const out = await new Deno.Command("bash", { args: [join(root, "scripts", "install_llamacpp.sh")], stderr: "piped" })
    .output().catch((e) => ({ success: false, stderr: new TextEncoder().encode(String(e)) }));
  installed = out.success ? "" : new TextDecoder().decode(out.stderr).trim().split("\n").slice(-2).join(" ");
  return installed || undefined;
}

/**
 * Runs llama.cpp on `path`: a prompt of `promptTokens` in one batch, then `decodeTokens` greedy
 * tokens; best of `repeats`.
 */
export async function runLlamaCpp(
  path: string,
  threads: number,
  promptTokens: number,
  decodeTokens: number,
  repeats: number,
): Promise<LlamaCppResult> {
  const failed = await install();
  if (failed) return { ok: false, why: `node-llama-cpp could not be installed: ${failed}` };
  const args = [
    join(root, "bench", "llamacpp", "runner.mjs"),
    join(root, ".tools", "llamacpp"),
    path,
    String(threads),
    String(promptTokens),
    String(decodeTokens),
    String(repeats),
  ];
  try {
    const out = await new Deno.Command("node", { args, stdout: "piped", stderr: "piped" }).output();
    const text = new TextDecoder().decode(out.stdout).trim().split("\n").pop() ?? "";
    if (!out.success) {
      return { ok: false, why: `llama.cpp runner failed: ${new TextDecoder().decode(out.stderr).slice(-300)}` };
    }
    const r = JSON.parse(text);
    return {
      ok: true,
      prefillTokensPerSecond: r.prefillTokensPerSecond,
      decodeTokensPerSecond: r.decodeTokensPerSecond,
      loadMs: r.loadMs,
    };
  } catch (e) {
    return { ok: false, why: `cannot run node: ${(e as Error).message}` };
  }
}
