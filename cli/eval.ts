/**
 * `sparrow eval`: one quality/speed curve per model — sparse configurations against the dense
 * model on the same token stream (core/evaluate.ts). The table (or JSON) goes to stdout, progress
 * to stderr.
 *
 * @module
 */
import { int, parse, type Parsed, str, UsageError } from "./args.ts";
import { downTypeArg, existingSidecar, modelOptions, modelOptionsHelp, note, openModel } from "./common.ts";
import { parseTargets } from "./calibrate.ts";
import { Progress } from "./progress.ts";
import { evaluateSparsity, type SparsityEvaluation } from "../core/evaluate.ts";

/** Usage text. */
export const evalHelp = `sparrow eval: what sparse FFNs cost in quality and gain in speed

Usage: sparrow eval --model PATH [options]

      --sidecar PATH      calibration sidecar (default: MODEL.sparsity.gguf beside the model, if any)
      --text PATH         text to score (default: text the model samples itself, temperature 0.8)
      --tokens N          scored tokens (default 512)
      --targets LIST      SwiGLU models: calibrated targets to sweep, e.g. 0.3,0.5,0.7 (default: the
                          sidecar's); a dense row (target 0) always comes first
      --modes LIST        sparse modes to sweep: oracle, predictor (default both; predictor needs a sidecar)
      --decode-tokens N   greedy tokens timed per configuration (default 64; 0 = no timing)
      --decode-runs N     timed runs per configuration, the fastest counts (default 2)
      --seed N            seed of the sampled text (default 7919; calibration samples from 1)
      --verify-every N    measure recall on every N-th scored token (default 1)
      --cluster-size K    neurons per unit of work (default 32)
      --down-type T       storage of the transposed down rows: auto (default), f16, q8_0 or q4_0
      --json              print the results as JSON

${modelOptionsHelp}

Columns: target (calibrated sparsity; "nat" = the model's natural sparsity), mode, measured
sparsity, predictor recall, computed neurons per active one, FFN MB read per token, mean
KL(dense || sparse) in nats per token, top-1 agreement with dense, perplexity on the stream,
greedy decode tok/s and speed-up over dense (same threads, each in its own session).`;

const f = (v: number, digits: number) => (Number.isFinite(v) ? v.toFixed(digits) : "-");

/**
 * Formats an evaluation as a table.
 *
 * @param r What {@link evaluateSparsity} measured.
 * @returns The table, with a title naming model, stream and threads.
 */
export function evaluationTable(r: SparsityEvaluation): string {
  const cols = [
    "target",
    "mode",
    "sparsity",
    "recall",
    "cand/act",
    "FFN MB/tok",
    "KL",
    "top-1",
    "ppl",
    "tok/s",
    "speed-up",
    "FFN ms sel/rows/down",
  ];
  const rows = r.points.map((p) => [
    p.mode === "dense" ? "0" : p.target === undefined ? (r.activation === "swiglu" ? "-" : "nat") : p.target.toFixed(2),
    p.mode,
    f(p.sparsity, 3),
    f(p.recall, 3),
    f(p.candidatesPerActive, 2),
    f(p.bytesPerToken / 1e6, 2),
    p.kl < 1e-4 && p.kl > -1e-4 ? p.kl.toExponential(1) : p.kl.toFixed(4),
    f(p.top1, 3),
    f(p.perplexity, 3),
    f(p.tokensPerSecond, 1),
    f(p.speedup, 2) + (Number.isFinite(p.speedup) ? "x" : ""),
    Number.isFinite(p.ffnMsPerToken.rows)
      ? [p.ffnMsPerToken.select, p.ffnMsPerToken.rows, p.ffnMsPerToken.down].map((v) => v.toFixed(2)).join("/")
      : "-",
  ]);
  const widths = cols.map((c, i) => Math.max(c.length, ...rows.map((row) => row[i].length)));
  const line = (row: string[]) => row.map((v, i) => (i === 1 ? v.padEnd(widths[i]) : v.padStart(widths[i]))).join("  ");
  const title = `${r.model} (${r.activation}) | ${r.tokens} ${
    r.source === "text" ? "text" : "self-sampled"
  } tokens, teacher-forced | dense ppl ${f(r.densePerplexity, 3)}, ${
    f(r.denseTokensPerSecond, 1)
  } tok/s | ${r.decodeTokens}-token greedy decode, ${r.threads} threads | ${r.seconds.toFixed(0)} s`;
  return [title, line(cols), ...rows.map(line)].join("\n");
}

/** Runs the command. */
export async function evalCommand(args: string[]): Promise<void> {
  const p: Parsed = parse(args, {
    ...modelOptions,
    sidecar: { type: "string" },
    text: { type: "string" },
    tokens: { type: "string" },
    targets: { type: "string" },
    modes: { type: "string" },
    "decode-tokens": { type: "string" },
    "decode-runs": { type: "string" },
    seed: { type: "string" },
    "verify-every": { type: "string" },
    "cluster-size": { type: "string" },
    "down-type": { type: "string" },
    json: { type: "boolean" },
  });
  if (p.values.help) return void console.log(evalHelp);
  const targets = parseTargets(str(p, "targets"));
  const modes = (str(p, "modes") ?? "oracle,predictor").split(",").map((s) => s.trim()).filter((s) => s);
  for (const m of modes) {
    if (m !== "oracle" && m !== "predictor") throw new UsageError(`--modes: '${m}' is not oracle or predictor`);
  }
  const textPath = str(p, "text");
  const text = textPath === undefined ? undefined : await Deno.readTextFile(textPath);
  const settings = {
    tokens: int(p, "tokens", 1, 1 << 22),
    decodeTokens: int(p, "decode-tokens", 0, 1 << 16),
    decodeRuns: int(p, "decode-runs", 1, 1000),
    seed: int(p, "seed", 0, 2 ** 32 - 1),
    verifyEvery: int(p, "verify-every", 0, 1 << 30),
    clusterSize: int(p, "cluster-size", 1, 1 << 16),
    downType: downTypeArg(p),
  };
  const { model, loadMs } = await openModel(p);
  try {
    const sidecar = str(p, "sidecar") ?? existingSidecar(model.info.path);
    const modesGiven = str(p, "modes") !== undefined;
    if (!sidecar && (targets !== undefined || (modesGiven && modes.includes("predictor")))) {
      throw new UsageError(
        `--targets and --modes predictor need a sidecar: give --sidecar, or run 'sparrow calibrate --model ${model.info.path}'`,
      );
    }
    note(
      `sparrow: ${model.info.name} loaded in ${loadMs.toFixed(0)} ms; evaluating ${
        sidecar ? `with ${sidecar}` : "oracle mode only (no sidecar)"
      } on ${model.defaults.threads} threads`,
    );
    let bar: { stage: string; progress: Progress } | undefined;
    const labels = { sample: "sampling text", score: "scoring", speed: "timing decode" };
    const result = await evaluateSparsity(model, {
      ...settings,
      sidecar,
      text,
      targets,
      modes: sidecar ? (modes as ("oracle" | "predictor")[]) : ["oracle"],
      onProgress: (stage, done, total) => {
        if (bar?.stage !== stage) {
          bar?.progress.finish();
          bar = { stage, progress: new Progress(labels[stage], total) };
        }
        bar.progress.update(done);
      },
    });
    bar?.progress.finish();
    console.log(p.values.json ? JSON.stringify(result, null, 2) : evaluationTable(result));
  } finally {
    model.close();
  }
}
