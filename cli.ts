/**
 * The sparrow command line.
 *
 * ```sh
 * deno run --allow-all jsr:@sparrow/sparrow/cli generate --prompt "Once upon a time"
 * ```
 *
 * Commands: generate, chat, calibrate, eval, pack, info, fetch-model, convert-llama2c, synth. `sparrow <command> --help`
 * describes each. Arguments are parsed with `node:util` parseArgs (JSR's @std/cli is not reachable
 * from the build machines).
 *
 * @module
 */
import { UsageError } from "./cli/args.ts";
import { calibrateCommand, calibrateHelp } from "./cli/calibrate.ts";
import { chatCommand, chatHelp } from "./cli/chat.ts";
import { convertLlama2cCommand, convertLlama2cHelp } from "./cli/convert_llama2c.ts";
import { evalCommand, evalHelp } from "./cli/eval.ts";
import { fetchModelCommand, fetchModelHelp } from "./cli/fetch_model.ts";
import { generateCommand, generateHelp } from "./cli/generate.ts";
import { infoCommand, infoHelp } from "./cli/info.ts";
import { packCommand, packHelp } from "./cli/pack.ts";
import { synthCommand, synthHelp } from "./cli/synth.ts";
import { SparrowError } from "./core/errors.ts";

const commands: Record<string, { run: (args: string[]) => unknown; help: string; summary: string }> = {
  generate: {
    run: generateCommand,
    help: generateHelp,
    summary: "complete a prompt (text to stdout, timings to stderr)",
  },
  chat: { run: chatCommand, help: chatHelp, summary: "interactive conversation with the chat template" },
  calibrate: {
    run: calibrateCommand,
    help: calibrateHelp,
    summary: "learn which FFN neurons fire; write the sparsity sidecar",
  },
  eval: { run: evalCommand, help: evalHelp, summary: "sparse vs dense: KL, top-1, perplexity, decode speed" },
  pack: { run: packCommand, help: packHelp, summary: "write the neuron bundles flash offload streams from" },
  info: { run: infoCommand, help: infoHelp, summary: "describe a model file" },
  "fetch-model": { run: fetchModelCommand, help: fetchModelHelp, summary: "download and verify the default model" },
  "convert-llama2c": {
    run: convertLlama2cCommand,
    help: convertLlama2cHelp,
    summary: "llama2.c checkpoint + tokenizer to GGUF",
  },
  synth: { run: synthCommand, help: synthHelp, summary: "write a synthetic model (real shapes, seeded weights)" },
};

const usage = `sparrow: LLM inference for machines with little memory and few cores

Usage: sparrow <command> [options]    (sparrow <command> --help for its options)

Commands:
${Object.entries(commands).map(([name, c]) => `  ${name.padEnd(17)} ${c.summary}`).join("\n")}`;

/**
 * Runs the CLI with `args`; returns the process exit code (0 ok, 1 failure, 2 usage error).
 *
 * @param args Command-line arguments after the program name.
 * @returns Exit code.
 */
export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(usage);
    return name === undefined ? 2 : 0;
  }
  const command = commands[name];
  if (!command) {
    console.error(`sparrow: unknown command '${name}'\n\n${usage}`);
    return 2;
  }
  try {
    await command.run(rest);
    return 0;
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`sparrow ${name}: ${e.message}\n\n${command.help}`);
      return 2;
    }
    if (e instanceof SparrowError) {
      console.error(`sparrow ${name}: error (${e.code}): ${e.message}`);
      return 1;
    }
    throw e;
  }
}

if (import.meta.main) {
  Deno.exitCode = await main(Deno.args);
}
