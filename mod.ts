/**
 * sparrow: large language models on machines with little memory and few cores, in Deno.
 *
 * A Zig compute core loaded with `Deno.dlopen` runs Llama-family GGUF models (F32, F16, BF16, Q8_0,
 * Q4_0, Q4_1 weights) on backend plugins (today: `cpu`). This module is the public API: load a
 * model, open a session, stream a generation.
 *
 * Permissions: `--allow-ffi` (the native core), `--allow-read` (model files, the library),
 * `--allow-env` (configuration variables), and `--allow-run` + `--allow-write` only to build the
 * native library from source or download the default model.
 *
 * @example Stream a completion
 * ```ts ignore
 * import { ensureDefaultModel, loadModel } from "@sparrow/sparrow";
 *
 * using model = await loadModel(await ensureDefaultModel(), { threads: 2 });
 * using session = model.createSession();
 * for await (const event of session.generate("The sparrow is", { maxTokens: 40, seed: 42 })) {
 *   await Deno.stdout.write(new TextEncoder().encode(event.text));
 *   if (event.type === "done") console.error(`\n${event.stats.decodeTokensPerSecond.toFixed(1)} tok/s`);
 * }
 * ```
 *
 * @example Chat with an instruct model
 * ```ts ignore
 * import { formatChat, loadModel } from "@sparrow/sparrow";
 *
 * using model = await loadModel("SmolLM2-135M-Instruct.Q4_1.gguf");
 * const prompt = formatChat([{ role: "user", content: "Name three birds." }], {
 *   template: model.gguf.metadata.get("tokenizer.chat_template") as string,
 *   addGenerationPrompt: true,
 * });
 * using session = model.createSession();
 * const { text } = await session.complete(prompt, { temperature: 0, maxTokens: 64 });
 * console.log(text);
 * ```
 *
 * @module
 */
export {
  loadModel,
  type LoadModelOptions,
  Model,
  type ModelDefaults,
  type ModelInfo,
  type SessionOptions,
  type WeightPlacement,
} from "./core/model.ts";
export {
  type Completion,
  type GenerateOptions,
  type GenerationEvent,
  type GenerationStats,
  Session,
  type StopReason,
} from "./core/session.ts";
export { Sampler, type SamplerOptions } from "./core/sampler.ts";
export type { DecodeOptions, EncodeOptions, TokenBytesOptions, Tokenizer } from "./core/tokenizer.ts";
export { TextStream, type TextStreamOptions } from "./core/text_stream.ts";
export { type ChatMessage, formatChat, type FormatChatOptions } from "./core/chat_template.ts";
export { SparrowError, type SparrowErrorCode } from "./core/errors.ts";
export { type GgufFile, type GgufTensorInfo, type GgufValue, readGguf } from "./core/gguf.ts";
export type { GgmlTypeInfo } from "./core/gguf_types.ts";
export { defaultModel, defaultModelPath, ensureDefaultModel, type FetchProgress } from "./core/default_model.ts";
export type { Activation, LlamaHparams, RopeLayout } from "./core/model_desc.ts";
export type { DownType, LayerSparseStats, SparseMode, SparseOptions, SparseStats } from "./core/sparse.ts";
export type { KvType } from "./core/engine.ts";
export {
  evaluateSparsity,
  type EvaluateSparsityOptions,
  type SparsityConfig,
  type SparsityEvaluation,
  type SparsityPoint,
} from "./core/evaluate.ts";
export type { OffloadOptions, OffloadReport } from "./core/offload.ts";
export { type MemoryPlan, parseBytes } from "./core/memory_budget.ts";
export type { IoMethod } from "./core/io_ring.ts";
