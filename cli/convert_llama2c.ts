/**
 * `sparrow convert-llama2c`: llama2.c checkpoint + tokenizer → GGUF.
 *
 * @module
 */
import { parse, required, str } from "./args.ts";
import { note } from "./common.ts";
import { Progress } from "./progress.ts";
import { convertLlama2c } from "../models/convert_llama2c.ts";

/** Usage text. */
export const convertLlama2cHelp = `sparrow convert-llama2c: convert a llama2.c model to GGUF

Usage: sparrow convert-llama2c --checkpoint MODEL.bin --tokenizer TOKENIZER.bin --out MODEL.gguf

      --checkpoint PATH   llama2.c checkpoint (legacy fp32 export, e.g. stories260K.bin)
      --tokenizer PATH    its llama2.c tokenizer (e.g. tok512.bin)
      --out PATH          GGUF to write (F32 tensors, SentencePiece tokenizer, architecture llama)
      --name NAME         general.name (default: the checkpoint's file name)`;

/** Runs the command. */
export function convertLlama2cCommand(args: string[]): void {
  const p = parse(args, {
    checkpoint: { type: "string" },
    tokenizer: { type: "string" },
    out: { type: "string", short: "o" },
    name: { type: "string" },
  });
  if (p.values.help) return void console.log(convertLlama2cHelp);
  const out = required(p, "out");
  const progress = new Progress("converting", 0);
  const cfg = convertLlama2c(required(p, "checkpoint"), required(p, "tokenizer"), out, {
    name: str(p, "name"),
    onProgress: (done, total) => progress.update(done, `${done}/${total} tensors`),
  });
  progress.finish();
  note(
    `sparrow: wrote ${out} (dim ${cfg.dim}, ffn ${cfg.hiddenDim}, ${cfg.nLayers} layers, ${cfg.nHeads}/${cfg.nKvHeads} heads, vocab ${cfg.vocabSize}, ${
      cfg.sharedClassifier ? "tied" : "separate"
    } classifier)`,
  );
}
