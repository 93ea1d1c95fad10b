/**
 * `sparrow calibrate`: run a model over calibration text, learn which FFN neurons fire (CATS
 * thresholds, neuron frequencies, low-rank predictors) and write the sparsity sidecar that
 * `generate --sparse` and `eval` use. A per-layer table of held-out recall and predicted/true
 * ratio goes to stdout; progress and timings to stderr.
 *
 * @module
 */
import { choice, int, num, parse, type Parsed, str, UsageError } from "./args.ts";
import { defaultSidecarPath, modelOptions, modelOptionsHelp, note, openModel } from "./common.ts";
import { Progress } from "./progress.ts";
import { calibrate, type CalibrationReport } from "../core/calibrate.ts";

/** Usage text. */
export const calibrateHelp = `sparrow calibrate: learn which FFN neurons fire, for sparse inference

Usage: sparrow calibrate --model PATH [options]

      --text PATH         calibration text (default: text the model samples itself, temperature 0.9)
      --tokens N          tokens to record (default 4096; 2048 for models with dim >= 2048)
      --targets LIST      SwiGLU models: target sparsities, comma-separated (default 0.3,0.5,0.7,0.9);
                          ReLU models have one operating point, their natural sparsity
      --rank R            predictor rank (default dim/8, between 16 and 512)
      --epochs E          predictor training epochs (default 10)
      --recall R          recall the predictor thresholds keep on held-out tokens (default 0.95)
      --objective KIND    regress (learn the gate value; default), classify (fires or not) or
                          subspace (no training: the gate's principal subspace, a linear predictor)
      --predictor-type T  storage of the predictor matrices: F16 (default), F32, Q8_0 (half of F16's
                          bytes per token) or Q4_0 (half of Q8_0's); Q8_0 and Q4_0 need a rank
                          that is a multiple of 32
      --seed N            seed of the sampled text and of training (default 1)
  -o, --out PATH          sidecar to write (default: MODEL.sparsity.gguf beside the model)

${modelOptionsHelp}

The table (stdout) gives, per layer and target, the predictor's recall on held-out tokens and how
many neurons it selects per truly active one (pred/true). Use the sidecar with
  sparrow generate --model MODEL --sparse predictor --sparsity 0.5
  sparrow eval --model MODEL`;

/** Parses a comma-separated list of target sparsities, each in (0, 1). */
export function parseTargets(raw: string | undefined, option = "targets"): number[] | undefined {
  if (raw === undefined) return undefined;
  const values = raw.split(",").map((s) => s.trim()).filter((s) => s !== "").map(Number);
  if (values.length === 0 || values.some((v) => !(v > 0 && v < 1))) {
    throw new UsageError(`--${option} ${raw}: expected comma-separated numbers in (0, 1), e.g. 0.3,0.5,0.7`);
  }
  return values;
}

/**
 * Formats the per-layer calibration table.
 *
 * @param report What calibration measured.
 * @param natural The model has one operating point, its natural sparsity (ReLU, dReLU).
 * @returns The table, one line per layer plus a mean.
 */
export function calibrationTable(report: CalibrationReport, natural = false): string {
  const heads = report.targets.map((t) => (natural || !Number.isFinite(t) ? "natural" : t.toFixed(2)));
  const cols = ["layer", "rank", "val loss", ...heads.flatMap((h) => [`recall@${h}`, `pred/true@${h}`])];
  const rows = report.layers.map((l, i) => [
    String(i),
    String(l.rank),
    l.valLoss.toPrecision(3),
    ...l.recall.flatMap((r, t) => [r.toFixed(3), l.predictedRatio[t].toFixed(2)]),
  ]);
  const mean = (f: (l: CalibrationReport["layers"][number]) => number) =>
    report.layers.reduce((a, l) => a + f(l), 0) / report.layers.length;
  rows.push([
    "mean",
    "",
    "",
    ...report.targets.flatMap((_, t) => [
      mean((l) => l.recall[t]).toFixed(3),
      mean((l) => l.predictedRatio[t]).toFixed(2),
    ]),
  ]);
  const widths = cols.map((c, i) => Math.max(c.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((v, i) => v.padStart(widths[i])).join("  ");
  return [line(cols), ...rows.map(line)].join("\n");
}

/** Runs the command. */
export async function calibrateCommand(args: string[]): Promise<void> {
  const p: Parsed = parse(args, {
    ...modelOptions,
    text: { type: "string" },
    tokens: { type: "string" },
    targets: { type: "string" },
    rank: { type: "string" },
    epochs: { type: "string" },
    recall: { type: "string" },
    objective: { type: "string" },
    "predictor-type": { type: "string" },
    seed: { type: "string" },
    out: { type: "string", short: "o" },
  });
  if (p.values.help) return void console.log(calibrateHelp);
  const textPath = str(p, "text");
  const options = {
    tokens: int(p, "tokens", 64, 1 << 22),
    targets: parseTargets(str(p, "targets")),
    rank: int(p, "rank", 1, 4096),
    epochs: int(p, "epochs", 1, 1000),
    recall: num(p, "recall", 0.01, 1),
    objective: choice(p, "objective", ["regress", "classify", "subspace"] as const),
    predictorType: choice(p, "predictor-type", ["F16", "F32", "Q8_0", "Q4_0"] as const),
    seed: int(p, "seed", 0, 2 ** 32 - 1),
  };
  const text = textPath === undefined ? undefined : await Deno.readTextFile(textPath);
  // Self-sampled calibration evaluates up to 513 positions (a 512-token sample after its start
  // token) in one context; give small-context models (stories260K: 512) room for it.
  // TODO(calibrate.ts): remove once the sample length there leaves room for its prompt.
  const load = text === undefined && str(p, "ctx") === undefined ? { ...p, values: { ...p.values, ctx: "1024" } } : p;
  const { model, loadMs } = await openModel(load);
  try {
    const out = str(p, "out") ?? defaultSidecarPath(model.info.path);
    const hp = model.info.hparams;
    note(
      `sparrow: ${model.info.name} loaded in ${
        loadMs.toFixed(0)
      } ms (${hp.nLayers} layers, ffn ${hp.ffnDim}, ${hp.activation}); calibrating on ${
        text === undefined ? "self-sampled text" : textPath
      } with ${model.defaults.threads} threads`,
    );
    // calibrate()'s default, spelled out so the progress bar knows its total.
    const tokens = options.tokens ?? (hp.dim >= 2048 ? 2048 : 4096);
    let recording: Progress | undefined = new Progress("recording", tokens);
    let training: Progress | undefined;
    const t0 = performance.now();
    const report = await calibrate(model, out, {
      ...options,
      tokens,
      text,
      onProgress: (stage, done, total, what) => {
        if (stage === "record") return recording?.update(done, `${done}/${total} tokens, ${what}`);
        recording?.finish("recorded");
        recording = undefined;
        training ??= new Progress("training", total);
        training.update(done, what);
      },
    });
    recording?.finish("recorded");
    training?.finish();
    const seconds = (performance.now() - t0) / 1000;
    console.log(calibrationTable(report, hp.activation !== "swiglu"));
    const size = Deno.statSync(out).size;
    note(
      `sparrow: recorded ${report.tokens} tokens in ${
        report.recordSeconds.toFixed(1)
      } s, trained ${report.layers.length} predictors in ${report.trainSeconds.toFixed(1)} s (${
        seconds.toFixed(1)
      } s in all, ${model.defaults.threads} threads)`,
    );
    const points = report.targets.map((t) => (Number.isFinite(t) ? t.toFixed(2) : "?")).join(", ");
    note(
      `sparrow: wrote ${out} (${(size / 1e6).toFixed(2)} MB; ${
        hp.activation === "swiglu" ? "targets" : "natural sparsity"
      } ${points}); try: sparrow eval --model ${model.info.path}`,
    );
  } finally {
    model.close();
  }
}
