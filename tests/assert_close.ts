// Test helper: elementwise comparison with a per-element tolerance, for kernels against their
// references (CPU) and the CUDA build against the CPU build.

/**
 * Checks |actual[i] - expected[i]| <= tolerance(i) for every i and returns the worst error as a
 * fraction of its tolerance. `names` says what the two sides are in the failure message.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tolerance: (i: number) => number,
  label: string,
  names: { actual: string; expected: string } = { actual: "found", expected: "expected" },
): number {
  if (actual.length !== expected.length) {
    throw new Error(`${label}: expected length ${expected.length}, found ${actual.length}`);
  }
  let worst = 0;
  for (let i = 0; i < expected.length; i++) {
    const error = Math.abs(actual[i] - expected[i]);
    const tol = tolerance(i);
    if (!(error <= tol)) {
      throw new Error(
        `${label}: element ${i} is ${actual[i]} (${names.actual}), ${expected[i]} ` +
          `(${names.expected}) (error ${error.toExponential(2)} > tolerance ${
            tol.toExponential(2)
          })`,
      );
    }
    if (tol > 0) worst = Math.max(worst, error / tol);
  }
  return worst;
}
