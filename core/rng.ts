/**
 * The project's one seeded random generator: xoshiro128** (four 32-bit words of state, fast in JS
 * without BigInt), seeded through splitmix32 so nearby seeds give unrelated streams. The sampler,
 * the synthetic model generator and the fuzz tests all draw from it, so one seed reproduces a run.
 *
 * @module
 */

/**
 * A seeded random generator.
 *
 * @example
 * ```ts
 * import { Rng } from "./rng.ts";
 * const a = new Rng(42), b = new Rng(42);
 * console.log(a.nextU32() === b.nextU32()); // true
 * ```
 */
export class Rng {
  #s = new Uint32Array(4);
  #one = new Uint32Array(1);
  #spare: number | undefined;

  /**
   * Seeds a generator.
   *
   * @param seed Any 32-bit integer.
   * @param stream Selects an independent stream for the same seed (e.g. one per tensor).
   */
  constructor(seed: number, stream = 0) {
    let z = (seed ^ Math.imul(stream, 0x9e3779b9)) >>> 0;
    for (let i = 0; i < 4; i++) {
      z = (z + 0x9e3779b9) >>> 0;
      let t = z;
      t = Math.imul(t ^ (t >>> 16), 0x85ebca6b);
      t = Math.imul(t ^ (t >>> 13), 0xc2b2ae35);
      this.#s[i] = (t ^ (t >>> 16)) >>> 0;
    }
    if (this.#s.every((v) => v === 0)) this.#s[0] = 1; // the all-zero state is a fixed point
  }

  /** Fills `out` with random words (state kept in locals: this is the hot loop of bulk generation). */
  fill(out: Uint32Array): void {
    const s = this.#s;
    let s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
    for (let i = 0; i < out.length; i++) {
      const r = Math.imul(s1, 5);
      out[i] = Math.imul((r << 7) | (r >>> 25), 9);
      const t = s1 << 9;
      s2 ^= s0;
      s3 ^= s1;
      s1 ^= s2;
      s0 ^= s3;
      s2 ^= t;
      s3 = (s3 << 11) | (s3 >>> 21);
    }
    s[0] = s0, s[1] = s1, s[2] = s2, s[3] = s3;
  }

  /** Next 32 random bits, as an unsigned integer. */
  nextU32(): number {
    this.fill(this.#one);
    return this.#one[0];
  }

  /** A float in [0, 1) with 32 random bits. */
  nextFloat(): number {
    return this.nextU32() / 4294967296;
  }

  /** A float in (0, 1): never 0, so its logarithm is finite. */
  uniform(): number {
    return (this.nextU32() + 0.5) / 4294967296;
  }

  /** Standard normal (Box–Muller; the second value of each pair is kept for the next call). */
  normal(): number {
    if (this.#spare !== undefined) {
      const v = this.#spare;
      this.#spare = undefined;
      return v;
    }
    const r = Math.sqrt(-2 * Math.log(this.uniform()));
    const a = 2 * Math.PI * this.uniform();
    this.#spare = r * Math.sin(a);
    return r * Math.cos(a);
  }
}
