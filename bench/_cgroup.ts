/**
 * Runs a command under an honest memory limit and measures it: a fresh child of this process's
 * cgroup-v1 memory group, with memory.limit_in_bytes (and memory.memsw.limit_in_bytes where swap is
 * accounted, so swap cannot hide anything), which the command joins before it allocates a byte.
 * Page cache the command reads is charged to the group too, so a model streamed from disk through a
 * mapping counts against the limit exactly as its anonymous memory does; drop the page cache first
 * ({@link dropPageCache}) so that pages read before the run are not free hits charged elsewhere.
 *
 * Linux with the v1 memory controller only (memory.limit_in_bytes, memory.max_usage_in_bytes,
 * memory.oom_control); the v2 unified hierarchy is reported as unavailable, not guessed at.
 *
 * Needs --allow-run (the command, and `cat`/`sh`/`mkdir`/`rmdir` for the /proc and /sys files Deno 2
 * opens only under --allow-all; with -A they are opened directly).
 *
 * @module
 */
import { join } from "node:path";
import { SparrowError } from "../core/errors.ts";

/** Whether {@link runInMemoryLimit} can work here, and if not why. */
export type CgroupAvailability = { ok: true; parent: string } | { ok: false; why: string };

/** Options of {@link runInMemoryLimit}. */
export interface MemoryLimitOptions {
  /** The group's memory limit in bytes (anonymous memory plus page cache); absent: no limit, only measure. */
  limitBytes?: number;
  /** Wall-clock limit; the command and everything it started are killed when it passes. */
  timeoutMs?: number;
  /** Extra environment variables for the command (the rest is inherited). */
  env?: Record<string, string>;
  /** Working directory of the command. */
  cwd?: string;
  /** How often memory.stat is sampled for the anonymous / page-cache split (default 200 ms). */
  sampleMs?: number;
}

/** What a command did under the limit. */
export interface MemoryLimitResult {
  /** Exit code (128 + signal number when killed by a signal). */
  code: number;
  /** The signal that ended it, if one did. */
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
  /** Wall time from spawn to exit. */
  ms: number;
  /** memory.max_usage_in_bytes: the group's peak of anonymous memory plus page cache. */
  peakBytes: number;
  /**
   * memory.failcnt (or memory.memsw.failcnt, the larger): how often a charge failed at the limit.
   * A hint only: on the 6.18 kernel this was written on it stayed 0 for a Deno child the OOM killer
   * killed at its limit (and was 316 for a Python one), so whether the limit was reached is read
   * from `peakBytes` and `oomKilled`, not from this.
   */
  failcnt: number;
  /** The kernel's OOM killer killed a process of the group (memory.oom_control oom_kill). */
  oomKilled: boolean;
  /** The wall-clock limit passed and the command was killed. */
  timedOut: boolean;
  /** The limit set, or null when none was asked for. */
  limitBytes: number | null;
  /**
   * How swap stands against the limit: "limited" (memsw set to the same limit), "no_swap" (no swap
   * is active, so there is nothing to hide in), "unlimited" (swap is active and not limited: the
   * command could swap instead of being held to the limit, or no limit was set).
   */
  swap: "limited" | "no_swap" | "unlimited";
  /** Largest anonymous memory (memory.stat rss) seen by sampling: a lower bound of its true peak. */
  sampledPeakAnonBytes: number;
  /** Largest page cache (memory.stat cache) seen by sampling: a lower bound of its true peak. */
  sampledPeakCacheBytes: number;
  /** The group's directory (removed by the time this is returned). */
  group: string;
}

const v1Files = ["memory.limit_in_bytes", "memory.max_usage_in_bytes", "memory.failcnt", "memory.oom_control"];
// Joins the group, then becomes the command: the shell itself is in the group before exec, so
// nothing the command allocates is charged elsewhere. $0 is the group's cgroup.procs.
const joinScript = 'echo $$ > "$0" || { echo "sparrow-cgroup: cannot join $0" >&2; exit 125; }; exec "$@"';
const joinFailure = "sparrow-cgroup: cannot join";

/**
 * Deno 2 asks for --allow-all before it touches /proc or /sys, and the test and bench tasks grant
 * --allow-run instead; so a kernel file Deno refuses (NotCapable) is read or written by `cat`,
 * `sh`, `mkdir` or `rmdir` in a subprocess, which those permissions do allow.
 */
function refused(e: unknown): boolean {
  return e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied;
}

/** Runs a helper program; returns its stdout, or throws an Error with its stderr. */
function helper(cmd: string, args: string[]): string {
  const out = new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" }).outputSync();
  const dec = new TextDecoder();
  if (!out.success) throw new Error(dec.decode(out.stderr).trim() || `${cmd} exited with ${out.code}`);
  return dec.decode(out.stdout);
}

/** A kernel file's text, or undefined when it cannot be read (absent, or not permitted). */
function readText(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch (e) {
    if (!refused(e)) return undefined;
  }
  try {
    return helper("cat", [path]);
  } catch {
    return undefined;
  }
}

/** Writes `value` to a kernel file; throws the reason as an Error. */
function writeText(path: string, value: string): void {
  try {
    Deno.writeTextFileSync(path, value);
    return;
  } catch (e) {
    if (!refused(e)) throw e;
  }
  helper("sh", ["-c", 'printf %s "$1" > "$0"', path, value]);
}

function makeDir(path: string): void {
  try {
    Deno.mkdirSync(path);
    return;
  } catch (e) {
    if (!refused(e)) throw e;
  }
  helper("mkdir", [path]);
}

/** Removes an empty directory (a cgroup); false when it did not exist. */
function removeDir(path: string): boolean {
  try {
    Deno.removeSync(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    if (!refused(e)) throw e;
  }
  if (!exists(path)) return false;
  helper("rmdir", [path]);
  return true;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch (e) {
    if (!refused(e)) return false;
  }
  try {
    helper("test", ["-e", path]);
    return true;
  } catch {
    return false;
  }
}

/**
 * This process's memory group directory: its path from /proc/self/cgroup, under the mount of the
 * v1 memory controller from /proc/self/mountinfo (minus the mount's own root, which is not "/"
 * inside a cgroup namespace or a bind mount).
 */
function ownMemoryGroup(): CgroupAvailability {
  if (Deno.build.os !== "linux") return { ok: false, why: `memory cgroups are Linux only (this is ${Deno.build.os})` };
  // By pid, not /proc/self: a `cat` fallback would read its own files.
  const proc = `/proc/${Deno.pid}`;
  const cgroups = readText(`${proc}/cgroup`);
  if (cgroups === undefined) return { ok: false, why: `cannot read ${proc}/cgroup` };
  const line = cgroups.split("\n").find((l) => l.split(":")[1]?.split(",").includes("memory"));
  if (!line) {
    const v2 = cgroups.split("\n").some((l) => l.startsWith("0::"));
    return {
      ok: false,
      why: v2
        ? "only the cgroup v2 unified hierarchy is mounted; this harness uses the v1 memory controller"
        : `no memory controller in ${proc}/cgroup`,
    };
  }
  const path = line.split(":").slice(2).join(":");
  const mountinfo = readText(`${proc}/mountinfo`) ?? "";
  for (const m of mountinfo.split("\n")) {
    // id parent major:minor root mountpoint options... - fstype source superoptions
    const [pre, post] = m.split(" - ");
    if (!post) continue;
    const [fstype, , superOptions = ""] = post.split(" ");
    if (fstype !== "cgroup" || !superOptions.split(",").includes("memory")) continue;
    const fields = pre.split(" ");
    const root = fields[3];
    const mountpoint = fields[4];
    const rel = root === "/" ? path : path.startsWith(root) ? path.slice(root.length) : undefined;
    if (rel === undefined) continue;
    return { ok: true, parent: join(mountpoint, rel) };
  }
  return { ok: false, why: `the memory cgroup ${path} is not visible under any mounted v1 memory controller` };
}

/**
 * Whether a memory-limited child group can be made here: Linux, the v1 memory controller mounted,
 * and this process's group writable (checked by making and removing a probe group).
 *
 * @returns `{ ok: true, parent }` with this process's memory group, or `{ ok: false, why }`.
 */
export function memoryCgroupAvailable(): CgroupAvailability {
  const own = ownMemoryGroup();
  if (!own.ok) return own;
  for (const f of v1Files) {
    if (!exists(join(own.parent, f))) return { ok: false, why: `${join(own.parent, f)} is missing` };
  }
  const probe = join(own.parent, `sparrow-probe-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`);
  try {
    makeDir(probe);
  } catch (e) {
    return { ok: false, why: `cannot create a child memory group in ${own.parent}: ${(e as Error).message}` };
  }
  try {
    removeDir(probe);
  } catch (e) {
    return { ok: false, why: `made ${probe} but cannot remove it: ${(e as Error).message}` };
  }
  return own;
}

function swapActive(): boolean {
  // /proc/swaps: a header line, then one line per active swap area.
  const lines = (readText("/proc/swaps") ?? "").trim().split("\n");
  return lines.length > 1;
}

function writeControl(group: string, file: string, value: string): void {
  try {
    writeText(join(group, file), value);
  } catch (e) {
    throw new SparrowError("io", `cannot write ${value} to ${join(group, file)}: ${(e as Error).message}`);
  }
}

function readNumber(group: string, file: string): number {
  const text = readText(join(group, file));
  const n = Number(text?.trim());
  return text === undefined || !Number.isFinite(n) ? 0 : n;
}

/** `key value` lines (memory.stat, memory.oom_control) as a map. */
function readKeyed(group: string, file: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const l of (readText(join(group, file)) ?? "").split("\n")) {
    const [k, v] = l.split(" ");
    if (k && v !== undefined) out.set(k, Number(v));
  }
  return out;
}

function pidsOf(group: string): number[] {
  return (readText(join(group, "cgroup.procs")) ?? "").split("\n").filter((s) => s.trim() !== "").map(Number);
}

/** SIGKILLs every process in the group: all of them were started by this run. */
function killGroup(group: string): void {
  for (const pid of pidsOf(group)) {
    try {
      Deno.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

/**
 * Removes the group. Its page-cache charges move to the parent on rmdir; the directory can be
 * busy for a moment after the last process is reaped, so it is retried briefly.
 */
async function removeGroup(group: string): Promise<void> {
  let last: Error | undefined;
  for (let i = 0; i < 50; i++) {
    try {
      removeDir(group);
      return;
    } catch (e) {
      last = e as Error;
      killGroup(group);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  throw new SparrowError("io", `cannot remove memory group ${group}: ${last?.message}`);
}

/**
 * Runs `cmd args` in a fresh memory group under this process's, limited to `limitBytes`, and
 * reports how it ended and its peak memory. The group is removed afterwards, also on error.
 *
 * @param cmd The program (found on PATH).
 * @param args Its arguments.
 * @param options The limit, a timeout, environment and working directory.
 * @returns Exit status, output, wall time, the group's peak usage, failcnt, whether the OOM killer
 *   or the timeout ended it.
 * @throws {SparrowError} `unsupported` when memory cgroups are unavailable (see
 *   {@link memoryCgroupAvailable}); `invalid_argument` for a limit or timeout that is not a
 *   positive number; `io` when the group cannot be set up, joined or removed.
 *
 * @example
 * ```ts ignore
 * const r = await runInMemoryLimit("python3", ["-c", "x = bytearray(1 << 30)"], { limitBytes: 256 << 20 });
 * console.log(r.oomKilled, r.peakBytes);
 * ```
 */
export async function runInMemoryLimit(
  cmd: string,
  args: readonly string[],
  options: MemoryLimitOptions = {},
): Promise<MemoryLimitResult> {
  const { limitBytes, timeoutMs, sampleMs = 200 } = options;
  if (limitBytes !== undefined && !(Number.isSafeInteger(limitBytes) && limitBytes > 0)) {
    throw new SparrowError("invalid_argument", `limitBytes must be a positive integer, not ${limitBytes}`);
  }
  if (timeoutMs !== undefined && !(timeoutMs > 0)) {
    throw new SparrowError("invalid_argument", `timeoutMs must be positive, not ${timeoutMs}`);
  }
  const available = memoryCgroupAvailable();
  if (!available.ok) throw new SparrowError("unsupported", `cannot limit memory: ${available.why}`);
  const group = join(available.parent, `sparrow-run-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`);
  try {
    makeDir(group);
  } catch (e) {
    throw new SparrowError("io", `cannot create memory group ${group}: ${(e as Error).message}`);
  }
  let result: MemoryLimitResult | undefined;
  let failure: unknown;
  try {
    let swap: MemoryLimitResult["swap"] = swapActive() ? "unlimited" : "no_swap";
    if (limitBytes !== undefined) {
      writeControl(group, "memory.limit_in_bytes", String(limitBytes));
      // memsw (memory + swap) must be at least the memory limit, so it is set after it.
      if (exists(join(group, "memory.memsw.limit_in_bytes"))) {
        writeControl(group, "memory.memsw.limit_in_bytes", String(limitBytes));
        swap = "limited";
      }
    }
    result = await spawnInGroup(group, cmd, args, options, limitBytes, swap, sampleMs, timeoutMs);
  } catch (e) {
    failure = e;
  }
  // The group goes whatever happened; a failure of the run itself is the one to report, with a
  // leftover group added to it.
  killGroup(group);
  try {
    await removeGroup(group);
  } catch (e) {
    if (failure === undefined) failure = e;
    else if (failure instanceof Error) failure.message += ` (and: ${(e as Error).message})`;
  }
  if (failure !== undefined || result === undefined) throw failure;
  return result;
}

async function spawnInGroup(
  group: string,
  cmd: string,
  args: readonly string[],
  options: MemoryLimitOptions,
  limitBytes: number | undefined,
  swap: MemoryLimitResult["swap"],
  sampleMs: number,
  timeoutMs: number | undefined,
): Promise<MemoryLimitResult> {
  const t0 = performance.now();
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("sh", {
      args: ["-c", joinScript, join(group, "cgroup.procs"), cmd, ...args],
      env: options.env,
      cwd: options.cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (e) {
    throw new SparrowError("io", `cannot start sh to run ${cmd}: ${(e as Error).message}`);
  }
  let peakAnon = 0;
  let peakCache = 0;
  const sample = () => {
    const stat = readKeyed(group, "memory.stat");
    peakAnon = Math.max(peakAnon, stat.get("rss") ?? 0);
    peakCache = Math.max(peakCache, stat.get("cache") ?? 0);
  };
  const sampler = setInterval(sample, sampleMs);
  let timedOut = false;
  const timer = timeoutMs === undefined ? undefined : setTimeout(() => {
    timedOut = true;
    killGroup(group);
    // The shell may not have joined the group yet; it is ours, so kill it by its id as well.
    try {
      child.kill("SIGKILL");
    } catch {
      // already exited
    }
  }, timeoutMs);
  // Interrupting the benchmark must not orphan a multi-GiB child in a group nobody removes: the
  // signal kills the group, cleanup runs, and the run ends in an error naming the signal.
  let interrupted: Deno.Signal | undefined;
  const onSignal = (sig: Deno.Signal) => () => {
    interrupted = sig;
    killGroup(group);
    try {
      child.kill("SIGKILL");
    } catch {
      // already exited
    }
  };
  const listeners = (["SIGINT", "SIGTERM"] as const).map((sig) => [sig, onSignal(sig)] as const);
  for (const [sig, fn] of listeners) Deno.addSignalListener(sig, fn);
  let out: Deno.CommandOutput;
  try {
    out = await child.output();
  } finally {
    clearInterval(sampler);
    clearTimeout(timer);
    for (const [sig, fn] of listeners) Deno.removeSignalListener(sig, fn);
  }
  if (interrupted) {
    throw new SparrowError("closed", `interrupted by ${interrupted}: ${cmd} was killed and its memory group removed`);
  }
  const ms = performance.now() - t0;
  sample();
  const dec = new TextDecoder();
  const stderr = dec.decode(out.stderr);
  if (out.code === 125 && stderr.includes(joinFailure)) {
    throw new SparrowError("io", `the command could not join ${group}: ${stderr.trim().slice(-300)}`);
  }
  const oomKills = readKeyed(group, "memory.oom_control").get("oom_kill");
  const peakBytes = readNumber(group, "memory.max_usage_in_bytes");
  // With memsw limited too, the kernel tries the memory+swap counter first, so it is the one whose
  // failcnt counts the hits; without, memory.failcnt does.
  const failcnt = Math.max(readNumber(group, "memory.failcnt"), readNumber(group, "memory.memsw.failcnt"));
  return {
    code: out.code,
    signal: out.signal,
    stdout: dec.decode(out.stdout),
    stderr,
    ms,
    peakBytes,
    failcnt,
    // Kernels before 4.13 have no oom_kill counter: then a SIGKILL we did not send, in a group
    // whose peak reached its limit, is the OOM killer's.
    oomKilled: oomKills !== undefined
      ? oomKills > 0
      : out.signal === "SIGKILL" && !timedOut && limitBytes !== undefined && peakBytes >= limitBytes - (1 << 20),
    timedOut,
    limitBytes: limitBytes ?? null,
    swap,
    sampledPeakAnonBytes: peakAnon,
    sampledPeakCacheBytes: peakCache,
    group,
  };
}

/**
 * Writes dirty pages back (`sync`) and drops the clean page cache, dentries and inodes
 * (`echo 3 > /proc/sys/vm/drop_caches`), so a following run reads from disk. Pages mapped by
 * running processes stay.
 *
 * @returns `{ ok: true }`, or `{ ok: false, why }` when it is not permitted or not Linux.
 */
export function dropPageCache(): { ok: true } | { ok: false; why: string } {
  if (Deno.build.os !== "linux") return { ok: false, why: `drop_caches is Linux only (this is ${Deno.build.os})` };
  try {
    const s = new Deno.Command("sync", { stdout: "null", stderr: "piped" }).outputSync();
    if (!s.success) return { ok: false, why: `sync failed: ${new TextDecoder().decode(s.stderr).trim()}` };
  } catch (e) {
    return { ok: false, why: `cannot run sync: ${(e as Error).message}` };
  }
  try {
    writeText("/proc/sys/vm/drop_caches", "3");
  } catch (e) {
    return { ok: false, why: `cannot write /proc/sys/vm/drop_caches: ${(e as Error).message}` };
  }
  return { ok: true };
}

/**
 * How much of a file is in the page cache, by util-linux `fincore` (mincore(2) over a mapping).
 * After {@link dropPageCache} this should be about 0; pages another process keeps mapped survive a
 * drop, and a run would then read them for free and uncharged, so a benchmark checks this.
 *
 * @param path The file.
 * @returns Resident bytes, or `{ why }` when fincore is missing or fails.
 */
export function pageCacheResidentBytes(path: string): number | { why: string } {
  try {
    const out = new Deno.Command("fincore", {
      args: ["--bytes", "--noheadings", "--output", "RES", path],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).outputSync();
    const dec = new TextDecoder();
    if (!out.success) return { why: `fincore failed: ${dec.decode(out.stderr).trim()}` };
    const n = Number(dec.decode(out.stdout).trim());
    return Number.isFinite(n) ? n : { why: `fincore printed '${dec.decode(out.stdout).trim()}'` };
  } catch (e) {
    return { why: `cannot run fincore (util-linux): ${(e as Error).message}` };
  }
}

/** A process's resident memory from /proc/<pid>/status. */
export interface ProcessMemory {
  /** VmRSS: resident now (anonymous, file-backed and shared). */
  rssBytes: number;
  /** VmHWM: the peak of VmRSS over the process's life. */
  hwmBytes: number;
}

/**
 * Reads VmRSS and VmHWM of a process.
 *
 * @param pid A process id, or "self".
 * @returns Its resident and peak resident bytes, or undefined when the process is gone or the
 *   fields are absent (not Linux, a kernel thread).
 */
export function readProcessMemory(pid: number | "self"): ProcessMemory | undefined {
  // "self" by number: a `cat` fallback would otherwise report its own memory.
  const status = readText(`/proc/${pid === "self" ? Deno.pid : pid}/status`);
  if (status === undefined) return undefined;
  const kb = (field: string) => {
    const m = status.match(new RegExp(`^${field}:\\s*(\\d+)\\s*kB`, "m"));
    return m ? Number(m[1]) * 1024 : undefined;
  };
  const rss = kb("VmRSS");
  const hwm = kb("VmHWM");
  return rss === undefined || hwm === undefined ? undefined : { rssBytes: rss, hwmBytes: hwm };
}
