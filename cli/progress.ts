/**
 * A progress bar on stderr for steps that may take a while. It stays silent for the first second
 * (fast steps print nothing), draws in place on a terminal, and falls back to an occasional plain
 * line when stderr is not a terminal (logs, CI).
 *
 * @module
 */

const encoder = new TextEncoder();
const showAfterMs = 1000;
const plainLineEveryMs = 5000;

/** A progress bar for one step. */
export class Progress {
  readonly #label: string;
  readonly #total: number;
  readonly #unit: "bytes" | "items";
  readonly #start = performance.now();
  readonly #tty = Deno.stderr.isTerminal();
  #lastDraw = 0;
  #drawn = false;
  #done = 0;

  /**
   * @param label What is happening, e.g. "converting".
   * @param total Amount of work (bytes or items); 0 for unknown.
   * @param unit How `done`/`total` are counted.
   */
  constructor(label: string, total: number, unit: "bytes" | "items" = "items") {
    this.#label = label;
    this.#total = total;
    this.#unit = unit;
  }

  /** Records progress; `note` is shown after the bar (e.g. the current tensor). */
  update(done: number, note = ""): void {
    this.#done = done;
    const now = performance.now();
    if (now - this.#start < showAfterMs) return;
    if (this.#tty ? now - this.#lastDraw < 100 : now - this.#lastDraw < plainLineEveryMs) return;
    this.#lastDraw = now;
    this.#draw(note);
  }

  /** Ends the bar; prints a final line only if the bar was ever shown. */
  finish(note = "done"): void {
    if (!this.#drawn) return;
    this.#done = this.#total || this.#done;
    this.#draw(note);
    if (this.#tty) Deno.stderr.writeSync(encoder.encode("\n"));
  }

  #draw(note: string): void {
    this.#drawn = true;
    const elapsed = (performance.now() - this.#start) / 1000;
    const frac = this.#total > 0 ? Math.min(1, this.#done / this.#total) : 0;
    const width = 28;
    const filled = Math.round(frac * width);
    const bar = this.#total > 0
      ? `[${"=".repeat(filled)}${" ".repeat(width - filled)}] ${(frac * 100).toFixed(0).padStart(3)}%`
      : "";
    const rate = this.#unit === "bytes" && elapsed > 0 ? ` ${(this.#done / elapsed / 1e6).toFixed(1)} MB/s` : "";
    const count = this.#unit === "items" && this.#total > 0 ? ` ${this.#done}/${this.#total}` : "";
    const line = `${this.#label} ${bar}${count}${rate} ${elapsed.toFixed(1)}s ${note}`.trimEnd();
    Deno.stderr.writeSync(encoder.encode(this.#tty ? `\r\x1b[2K${line}` : `${line}\n`));
  }
}
