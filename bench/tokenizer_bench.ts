/**
 * Tokenizer throughput: encoding 100 KB of varied text (the README, with numbered words mixed in so
 * that the per-word cache does not hide the merge work) with stories260K's SentencePiece vocabulary
 * and SmolLM2's byte-level BPE, both from ../shared/models (skipped with a message when absent).
 *
 *   deno bench -A bench/tokenizer_bench.ts
 *
 * @module
 */
import { join } from "node:path";
import { type Tokenizer, tokenizerFromGguf, tokenizerFromHfJson } from "../core/tokenizer.ts";
import { llama2cTokenizerMetadata, readLlama2cTokenizer } from "../models/llama2c_tokenizer.ts";
import { machine, table } from "./_report.ts";

const shared = join(import.meta.dirname!, "..", "..", "shared", "models");
const readme = Deno.readTextFileSync(join(import.meta.dirname!, "..", "README.md"));
let text = "";
for (let i = 0; text.length < 100_000; i++) {
  text += `${readme.slice((i * 997) % readme.length).slice(0, 400)} w${i}x${i * 7919} `;
}

function tokenizers(): [string, Tokenizer][] {
  try {
    const spm = join(shared, "stories260K", "tok512.bin");
    const bpe = join(shared, "smollm2-135m-tokenizer", "tokenizer.json");
    return [
      [
        "stories260K (SentencePiece, 512 tokens)",
        tokenizerFromGguf(llama2cTokenizerMetadata(readLlama2cTokenizer(spm, 512), spm), spm),
      ],
      [
        "SmolLM2 (byte-level BPE, 49152 tokens)",
        tokenizerFromHfJson(JSON.parse(Deno.readTextFileSync(bpe)), { source: bpe, eosToken: "<|im_end|>" }),
      ],
    ];
  } catch (e) {
    console.warn(`skipped: the tokenizers of ../shared/models cannot be read (${(e as Error).message})`);
    return [];
  }
}

const best = new Map<string, number>();
for (const [name, tok] of tokenizers()) {
  Deno.bench({
    name: `encode ${(text.length / 1000).toFixed(0)} KB, ${name}`,
    fn: () => {
      const t0 = performance.now();
      tok.encode(text, { addBos: false });
      const ms = performance.now() - t0;
      best.set(name, Math.min(best.get(name) ?? Infinity, ms));
    },
  });
}

table(
  `Tokenizer encode throughput (${machine()}), best of the run`,
  ["tokenizer", "ms per 100 KB", "MB/s"],
  () => [...best].map(([name, ms]) => [name, ms.toFixed(1), (text.length / 1e3 / ms).toFixed(2)]),
);
