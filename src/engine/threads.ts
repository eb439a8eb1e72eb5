// Kernel-thread defaults that degrade gracefully when other processes want the same CPUs: how many
// OpenMP threads to run, and libgomp's wait policy. Measured with `deno task bench:threads`
// (docs/README.md, "Threads under contention").

/** The part of `Deno.env` these functions use; tests pass a Map-backed one. */
export interface Env {
  get(key: string): string | undefined;
  set(key: string, value: string): void;
}

/**
 * libgomp's wait-policy variables. Either one set by the user is their choice of how idle threads
 * wait, so the defaults below apply only when both are unset (with OMP_WAIT_POLICY=passive, libgomp
 * would also drop a GOMP_SPINCOUNT the user meant to keep).
 */
const WAIT_POLICY_KEYS = ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT"] as const;

/**
 * Threads that wait for the next parallel region sleep at once instead of spinning for ~300,000
 * iterations (libgomp's default): a token runs ~300 regions, and a spinning thread burns the time
 * slice the thread it waits for (or another process) needs.
 */
export const OMP_ENV_DEFAULTS: Readonly<Record<string, string>> = { OMP_WAIT_POLICY: "passive" };

/**
 * Kernel threads when the user gives none: one fewer than the CPUs, at least one. A team as large
 * as the machine stalls at every barrier as soon as any other thread (the HTTP event loop, a
 * tokenizer worker, another process) takes a CPU.
 */
export function defaultNumThreads(numCpus: number = navigator.hardwareConcurrency): number {
  if (!Number.isSafeInteger(numCpus) || numCpus < 1) {
    throw new RangeError(`Expected a positive CPU count, got ${numCpus}`);
  }
  return Math.max(1, numCpus - 1);
}

/** The OpenMP variables `applyOmpEnvDefaults` would set in `env`: none if the user set any. */
export function ompEnvDefaults(env: Env = Deno.env): Record<string, string> {
  if (WAIT_POLICY_KEYS.some((key) => env.get(key) !== undefined)) return {};
  return { ...OMP_ENV_DEFAULTS };
}

/**
 * Sets the OpenMP defaults the user has not set, and returns what it set. libgomp reads these once,
 * when it loads, so this must run before the process first opens the native library.
 */
export function applyOmpEnvDefaults(env: Env = Deno.env): Record<string, string> {
  const defaults = ompEnvDefaults(env);
  for (const [key, value] of Object.entries(defaults)) env.set(key, value);
  return defaults;
}
