/**
 * The memory-limit harness (bench/_cgroup.ts) on real children: a Deno process that touches more
 * than the limit is OOM-killed and reported so, one that stays below runs to the end, the peak is
 * plausible, a timeout kills, and the group is gone afterwards. Skips with the reason when this
 * machine has no writable v1 memory cgroup (not Linux, cgroup v2 only, no permission).
 */
import assert from "node:assert/strict";
import { SparrowError } from "../core/errors.ts";
import { memoryCgroupAvailable, readProcessMemory, runInMemoryLimit } from "../bench/_cgroup.ts";
import { skip } from "./_models.ts";

const mib = 1 << 20;
const limitBytes = 256 * mib;

/** A Deno child that allocates `bytes` and writes every page, so each is really charged. */
function toucher(bytes: number): string[] {
  const code = `const b = new Uint8Array(${bytes}); for (let i = 0; i < b.length; i += 4096) b[i] = 1; ` +
    `console.log("touched", b.length);`;
  return ["eval", "--quiet", code];
}

/** Whether the group directory is still there (via `test`: Deno 2 wants --allow-all for /sys). */
function groupExists(path: string): boolean {
  return new Deno.Command("test", { args: ["-e", path] }).outputSync().success;
}

const available = memoryCgroupAvailable();
const why = available.ok ? "" : `memory cgroup unavailable: ${available.why}`;

Deno.test("a child that touches more than the limit is OOM-killed, and the group is removed", async () => {
  if (!available.ok) return void skip(why);
  const r = await runInMemoryLimit(Deno.execPath(), toucher(2 * limitBytes), { limitBytes, timeoutMs: 60_000 });
  assert.equal(r.oomKilled, true, `expected an OOM kill: code ${r.code}, signal ${r.signal}, ${r.stderr.slice(-300)}`);
  assert.equal(r.signal, "SIGKILL");
  assert.equal(r.timedOut, false);
  assert.ok(!r.stdout.includes("touched"), "the child finished despite the limit");
  // The group can never use more than its limit; it got within a few pages of it before the kill
  // (the kernel reclaims what it can first, so a few MiB of slack is allowed).
  assert.ok(r.peakBytes <= limitBytes, `peak ${r.peakBytes} above the limit ${limitBytes}`);
  assert.ok(r.peakBytes >= limitBytes - 16 * mib, `peak ${r.peakBytes} far below the limit at an OOM kill`);
  assert.equal(r.limitBytes, limitBytes);
  assert.ok(r.swap === "limited" || r.swap === "no_swap", `swap could hide memory: ${r.swap}`);
  assert.equal(groupExists(r.group), false, `${r.group} was left behind`);
});

Deno.test("a child below the limit runs to the end with a plausible peak", async () => {
  if (!available.ok) return void skip(why);
  const touched = 64 * mib;
  const r = await runInMemoryLimit(Deno.execPath(), toucher(touched), { limitBytes, timeoutMs: 60_000 });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.oomKilled, false);
  assert.equal(r.timedOut, false);
  assert.match(r.stdout, new RegExp(`touched ${touched}`));
  // At least what it touched (Deno itself adds tens of MiB), never more than the limit.
  assert.ok(r.peakBytes >= touched, `peak ${r.peakBytes} below the ${touched} bytes touched`);
  assert.ok(r.peakBytes <= limitBytes, `peak ${r.peakBytes} above the limit`);
  assert.ok(r.sampledPeakAnonBytes <= r.peakBytes, "a sampled peak above the true peak");
  assert.equal(groupExists(r.group), false, `${r.group} was left behind`);
});

Deno.test("without a limit the group only measures", async () => {
  if (!available.ok) return void skip(why);
  const touched = 96 * mib;
  const r = await runInMemoryLimit(Deno.execPath(), toucher(touched), { timeoutMs: 60_000 });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.limitBytes, null);
  assert.ok(r.peakBytes >= touched, `peak ${r.peakBytes} below the ${touched} bytes touched`);
  assert.equal(groupExists(r.group), false);
});

Deno.test("the timeout kills the child and is reported as a timeout, not an OOM kill", async () => {
  if (!available.ok) return void skip(why);
  const t0 = performance.now();
  const r = await runInMemoryLimit(Deno.execPath(), ["eval", "setTimeout(() => {}, 600_000)"], {
    limitBytes,
    timeoutMs: 1500,
  });
  assert.equal(r.timedOut, true);
  assert.equal(r.oomKilled, false);
  assert.equal(r.signal, "SIGKILL");
  assert.ok(performance.now() - t0 < 30_000, "the child outlived its timeout by far");
  assert.equal(groupExists(r.group), false);
});

Deno.test("an interrupt kills the child, removes the group and ends the run in a typed error", async () => {
  if (!available.ok) return void skip(why);
  // The harness listens for SIGINT and SIGTERM only while a child runs; 500 ms is long after it
  // started. SIGTERM, because deno test handles SIGINT itself and ends the whole test run.
  const interrupt = setTimeout(() => Deno.kill(Deno.pid, "SIGTERM"), 500);
  const t0 = performance.now();
  let group = "";
  try {
    await assert.rejects(
      runInMemoryLimit(Deno.execPath(), ["eval", "setTimeout(() => {}, 600_000)"], { limitBytes, timeoutMs: 60_000 }),
      (e) => {
        group = (e as Error).message;
        return e instanceof SparrowError && e.code === "closed" && /SIGTERM/.test(e.message);
      },
    );
  } finally {
    clearTimeout(interrupt);
  }
  assert.ok(performance.now() - t0 < 30_000, `the interrupt did not end the run: ${group}`);
});

Deno.test("a missing program is an exit status, and bad options are typed errors", async () => {
  if (!available.ok) return void skip(why);
  const r = await runInMemoryLimit("/nonexistent/sparrow-no-such-program", [], { limitBytes });
  assert.equal(r.code, 127);
  assert.equal(groupExists(r.group), false);
  await assert.rejects(
    runInMemoryLimit("true", [], { limitBytes: -1 }),
    (e) => e instanceof SparrowError && e.code === "invalid_argument",
  );
  await assert.rejects(
    runInMemoryLimit("true", [], { timeoutMs: 0 }),
    (e) => e instanceof SparrowError && e.code === "invalid_argument",
  );
});

Deno.test("readProcessMemory reads this process's VmRSS and VmHWM", () => {
  if (Deno.build.os !== "linux") return void skip("needs /proc (Linux)");
  const m = readProcessMemory("self");
  assert.ok(m, "no VmRSS/VmHWM for this process");
  assert.ok(m.rssBytes > mib, `VmRSS ${m.rssBytes} is implausibly small for a Deno process`);
  assert.ok(m.hwmBytes >= m.rssBytes, "the peak below the current RSS");
  assert.equal(readProcessMemory(2 ** 22 + 12345), undefined);
});
