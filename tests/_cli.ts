/**
 * Runs the CLI as a user does: a `deno run` of cli.ts in a process of its own, with the permissions
 * the README gives, its output captured.
 */
import { join } from "node:path";
import { repoRoot } from "./_models.ts";

/** What a CLI run printed and returned. */
export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `cli.ts` with `args`. */
export async function runCli(args: string[]): Promise<CliRun> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-ffi",
      "--allow-run",
      join(repoRoot, "cli.ts"),
      ...args,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
