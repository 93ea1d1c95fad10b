/**
 * Shared by the bench files: what machine a figure was measured on, and a table printed when the
 * bench run ends (deno bench reports time per iteration; the tables add the units that matter here:
 * GB/s next to the machine's bandwidth, tok/s next to llama.cpp's, from the same run).
 *
 * @module
 */

/** A short description of the machine, for every figure printed. */
export function machine(): string {
  let cpu: string = Deno.build.arch;
  try {
    const info = Deno.readTextFileSync("/proc/cpuinfo");
    cpu = info.match(/model name\s*:\s*(.*)/)?.[1]?.trim() ?? cpu;
  } catch {
    // not Linux: the architecture alone will do
  }
  return `${cpu}, ${navigator.hardwareConcurrency} logical CPUs, ${Deno.build.os}`;
}

const tables: { title: string; header: string[]; fill: () => string[][] }[] = [];

/**
 * Registers a table printed when the bench run ends.
 *
 * @param title Printed above the table.
 * @param header Column names.
 * @param fill Called at the end of the run: returns the rows (from what the benches recorded).
 */
export function table(title: string, header: string[], fill: () => string[][]): void {
  tables.push({ title, header, fill });
}

globalThis.addEventListener("unload", () => {
  for (const t of tables) {
    const rows = t.fill();
    if (rows.length === 0) continue;
    const widths = t.header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
    const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join("  ");
    console.log(`\n${t.title}\n${line(t.header)}\n${widths.map((w) => "-".repeat(w)).join("  ")}`);
    for (const r of rows) console.log(line(r));
  }
});

/** Multipliers of the size suffixes sysfs writes for caches ("32K", "2048K", "480M"). */
const sizeUnits: Record<string, number> = { "": 1, K: 1024, M: 2 ** 20, G: 2 ** 30 };

/** The largest cache the kernel reports for cpu0 (sysfs), bytes; 0 where it cannot be read. */
export function lastLevelCacheBytes(): number {
  const dir = "/sys/devices/system/cpu/cpu0/cache";
  let most = 0;
  try {
    for (const e of Deno.readDirSync(dir)) {
      if (!e.name.startsWith("index")) continue;
      const m = /^(\d+)([KMG]?)$/.exec(Deno.readTextFileSync(`${dir}/${e.name}/size`).trim());
      if (m) most = Math.max(most, Number(m[1]) * sizeUnits[m[2]]);
    }
  } catch {
    // Not Linux, or not permitted: callers keep their fixed sizes.
  }
  return most;
}

/**
 * Rows of 64 KiB for the plain memory read that measures bandwidth (`sp_bench_create` kind 0):
 * 512 MiB, or twice the last-level cache where that is larger, so that the read comes from memory.
 */
export function memoryReadRows(): number {
  return Math.ceil(Math.max(512 * 2 ** 20, 2 * lastLevelCacheBytes()) / 65536);
}
