/**
 * Command-line parsing shared by the commands: `node:util` parseArgs (JSR's @std/cli is not
 * reachable from the build machines) plus typed readers that turn a bad value into a usage error
 * naming the option.
 *
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";

/** A mistake in how the command was called: printed with the command's usage, exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** Option definitions for parseArgs. */
export type OptionSpec = NonNullable<ParseArgsConfig["options"]>;

/** Parsed values: strings and booleans by option name, plus positionals. */
export interface Parsed {
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
}

/** Parses `args` against `options`; unknown options and missing values become {@link UsageError}s. */
export function parse(args: string[], options: OptionSpec): Parsed {
  try {
    const { values, positionals } = parseArgs({
      args,
      options: { ...options, help: { type: "boolean", short: "h" } },
      allowPositionals: true,
      strict: true,
    });
    return { values: values as Parsed["values"], positionals };
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** Reads an optional number option, checking it is finite and within [min, max]. */
export function num(p: Parsed, name: string, min: number, max: number): number | undefined {
  const raw = p.values[name];
  if (raw === undefined) return undefined;
  const v = Number(raw);
  if (typeof raw !== "string" || raw.trim() === "" || !Number.isFinite(v) || v < min || v > max) {
    throw new UsageError(`--${name} ${String(raw)}: expected a number in [${min}, ${max}]`);
  }
  return v;
}

/** Reads an optional integer option within [min, max]. */
export function int(p: Parsed, name: string, min: number, max: number): number | undefined {
  const v = num(p, name, min, max);
  if (v !== undefined && !Number.isInteger(v)) throw new UsageError(`--${name} ${v}: expected a whole number`);
  return v;
}

/** Reads an optional string option. */
export function str(p: Parsed, name: string): string | undefined {
  const v = p.values[name];
  return typeof v === "string" ? v : undefined;
}

/** Reads a string option that must be one of `choices`. */
export function choice<T extends string>(p: Parsed, name: string, choices: readonly T[]): T | undefined {
  const v = str(p, name);
  if (v === undefined) return undefined;
  if (!choices.includes(v as T)) throw new UsageError(`--${name} ${v}: expected one of ${choices.join(", ")}`);
  return v as T;
}

/** Reads a required string option. */
export function required(p: Parsed, name: string): string {
  const v = str(p, name);
  if (v === undefined) throw new UsageError(`--${name} is required`);
  return v;
}
