/**
 * Runs every bench suite (bench/*_bench.ts), each in a `deno bench` process of its own, and stops at
 * the first that fails. One process for all of them is wrong: `deno bench` evaluates every module's
 * top level before it runs any bench, so the sparse bench's 7B model (its mapping and a 4.4 GB
 * sparse store) was resident through the offload bench, whose page-cache drop then could not evict
 * that model, and whose "cache dropped" runs were not.
 *
 *   deno task bench [extra deno bench arguments, e.g. --filter decode]
 *
 * @module
 */
import { join } from "node:path";

const benchDir = join(import.meta.dirname!, "..", "bench");
const suites = [...Deno.readDirSync(benchDir)]
  .filter((e) => e.isFile && e.name.endsWith("_bench.ts"))
  .map((e) => join(benchDir, e.name))
  .sort();
const permissions = ["--allow-read", "--allow-write", "--allow-env", "--allow-ffi", "--allow-run", "--allow-sys"];
for (const suite of suites) {
  console.error(`\n== ${suite}`);
  const { code } = await new Deno.Command(Deno.execPath(), {
    args: ["bench", ...permissions, ...Deno.args, suite],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (code !== 0) {
    console.error(`bench_all: ${suite} failed (exit status ${code})`);
    Deno.exit(code);
  }
}
