/**
 * Chat prompt formatting without a Jinja engine: the ChatML layout is recognised from the model's
 * `tokenizer.chat_template` and rendered directly; other templates are refused.
 *
 * @module
 */
import { SparrowError } from "./errors.ts";

/** One chat message. */
export interface ChatMessage {
  /** Who speaks. */
  role: "system" | "user" | "assistant";
  /** What is said. */
  content: string;
}

/** Options of {@link formatChat}. */
export interface FormatChatOptions {
  /** The model's `tokenizer.chat_template`; absent → the plain fallback layout. */
  template?: string;
  /** End with the opening of an assistant turn (default true: the model is about to answer). */
  addGenerationPrompt?: boolean;
  /**
   * System prompt to insert when the first message is not a system message. Defaults to the one
   * the template itself inserts (SmolLM2's templates carry "You are a helpful AI assistant named
   * SmolLM, trained by Hugging Face"); none when the template has none.
   */
  defaultSystem?: string;
}

/** The chat layouts this module can render. */
export type ChatFormat = "chatml" | "plain";

/**
 * Which layout a template uses.
 *
 * @param template The model's chat template, or undefined.
 * @returns "chatml" for templates built on `<|im_start|>`, "plain" when there is no template.
 * @throws SparrowError `unsupported` for any other template, naming its first 60 characters.
 * @example
 * ```ts
 * import { detectChatFormat } from "./chat_template.ts";
 * detectChatFormat("{{'<|im_start|>' + message['role']}}"); // "chatml"
 * detectChatFormat(undefined); // "plain"
 * ```
 */
export function detectChatFormat(template: string | undefined): ChatFormat {
  if (template === undefined || template.trim() === "") return "plain";
  if (template.includes("<|im_start|>")) return "chatml";
  throw new SparrowError(
    "unsupported",
    `chat template ${JSON.stringify(template.slice(0, 60))} is not supported (only ChatML templates)`,
  );
}

/** Undoes the escapes of a Jinja string literal (the ones templates use: \n, \t, quotes, backslash). */
function unescapeJinja(s: string): string {
  return s.replace(/\\(.)/gs, (_, c: string) => c === "n" ? "\n" : c === "t" ? "\t" : c === "r" ? "\r" : c);
}

/**
 * The system prompt a ChatML template inserts on its own, e.g. SmolLM2's
 * `'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n'`.
 * Only a literal system turn counts: one built from `message['content']` is not a default.
 *
 * @param template The chat template.
 * @returns The default system prompt, or undefined.
 * @example
 * ```ts
 * import { templateDefaultSystem } from "./chat_template.ts";
 * templateDefaultSystem("{{ '<|im_start|>system\\nBe brief.<|im_end|>\\n' }}"); // "Be brief."
 * ```
 */
export function templateDefaultSystem(template: string): string | undefined {
  const m = /<\|im_start\|>system(?:\\n|\n)((?:(?!<\|im_end\|>)[^'"{}])+)<\|im_end\|>/s.exec(template);
  return m ? unescapeJinja(m[1]) : undefined;
}

/**
 * Formats a conversation as the model's prompt text. The result contains control-token texts such
 * as `<|im_start|>`: encode it with `parseSpecial: true`.
 *
 * ChatML: each message is `<|im_start|>{role}\n{content}<|im_end|>\n`; when the first message is not
 * a system message and a default system prompt exists, a system turn with it comes first (as the
 * SmolLM2 template does); the generation prompt is `<|im_start|>assistant\n`.
 *
 * Plain fallback (no template): each message is `{Role}: {content}\n` with roles "System", "User",
 * "Assistant", and the generation prompt is `Assistant:`.
 *
 * @param messages The conversation.
 * @param options Template, generation prompt, default system prompt.
 * @returns The prompt text.
 * @throws SparrowError `unsupported` for templates other than ChatML.
 * @example
 * ```ts
 * import { formatChat } from "./chat_template.ts";
 * formatChat([{ role: "user", content: "Hi" }], { template: "<|im_start|>", defaultSystem: "Be nice." });
 * // "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
 * ```
 */
export function formatChat(messages: readonly ChatMessage[], options: FormatChatOptions = {}): string {
  const format = detectChatFormat(options.template);
  const addGenerationPrompt = options.addGenerationPrompt ?? true;
  for (const m of messages) {
    if (m.role !== "system" && m.role !== "user" && m.role !== "assistant") {
      throw new SparrowError(
        "invalid_argument",
        `chat message role ${JSON.stringify(m.role)} is not system/user/assistant`,
      );
    }
  }
  if (format === "plain") {
    const label = { system: "System", user: "User", assistant: "Assistant" } as const;
    let out = messages.map((m) => `${label[m.role]}: ${m.content}\n`).join("");
    if (addGenerationPrompt) out += "Assistant:";
    return out;
  }
  const system = options.defaultSystem ?? templateDefaultSystem(options.template!);
  let out = "";
  // As in SmolLM2's template, the default is inserted inside the message loop, so an empty
  // conversation gets none.
  if (messages.length > 0 && messages[0].role !== "system" && system !== undefined) {
    out += `<|im_start|>system\n${system}<|im_end|>\n`;
  }
  for (const m of messages) out += `<|im_start|>${m.role}\n${m.content}<|im_end|>\n`;
  if (addGenerationPrompt) out += "<|im_start|>assistant\n";
  return out;
}
