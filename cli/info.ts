/**
 * `sparrow info`: what a model file is (architecture, shape, tensor types, tokenizer).
 *
 * @module
 */
import { parse } from "./args.ts";
import { modelOptions, openModel } from "./common.ts";

/** Usage text. */
export const infoHelp = `sparrow info: describe a model

Usage: sparrow info [--model PATH] [--json]

Prints the architecture, hyperparameters, tensor types and tokenizer of a GGUF model.`;

/** Runs the command. */
export async function infoCommand(args: string[]): Promise<void> {
  const p = parse(args, { ...modelOptions, json: { type: "boolean" } });
  if (p.values.help) return void console.log(infoHelp);
  const { model } = await openModel(p);
  try {
    const info = {
      ...model.info,
      tokenizer: {
        kind: model.tokenizer.kind,
        vocabSize: model.tokenizer.vocabSize,
        bos: model.tokenizer.bosId,
        eos: model.tokenizer.eosId,
        stop: [...model.tokenizer.stopIds],
        addBos: model.tokenizer.addBos,
        chatTemplate: model.gguf.metadata.has("tokenizer.chat_template"),
      },
    };
    console.log(p.values.json ? JSON.stringify(info, null, 2) : info);
  } finally {
    model.close();
  }
}
