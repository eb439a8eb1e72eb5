// deno task bench:matmul-min N,K,M [formats]: dl_matmul per format at one shape, the minimum over
// rounds of the mean of 20 calls (rounds alternate the formats), for a machine shared with other
// jobs where medians drift with their load. Weights are random bytes in enough copies (>= 96 MB,
// cycled) to come from DRAM; formats whose row data must be valid (w8a8_mixed's outlier ids) are
// refused. Prints µs per call and each format's time ratio against the first, and the load average.
import { DType, NativeBackend } from "../ffi/native.ts";
import { formatByName, matrixBytes } from "../ffi/formats.ts";

const [n, k, m] = (Deno.args[0] ?? "4864,896,1").split(",").map(Number);
const names = (Deno.args[1] ?? "f16,int8,int8_2_4,w8a8,w8a8_2_4").split(",");
if (![n, k, m].every((v) => Number.isInteger(v) && v > 0)) {
  throw new RangeError(`Expected N,K,M positive integers, found ${Deno.args[0]}`);
}
const backend = NativeBackend.open({ numThreads: 1 });
const x = backend.alloc(m * k * 4);
backend.upload(x, new Float32Array(m * k).map(() => Math.random() * 2 - 1));
const out = backend.alloc(m * n * 4);
const setups = names.map((name) => {
  const f = formatByName(name);
  if (f === undefined || f.name === "w8a8_mixed") {
    throw new RangeError(`Expected a format with no validated row data, found ${name}`);
  }
  const bytes = matrixBytes(f.id, n, k);
  const data = new Uint8Array(bytes).map(() => (Math.random() * 256) | 0);
  // Half floats with a small exponent, so no weight is Inf or NaN.
  if (f.id === DType.F16 || f.id === DType.F16_2_4) {
    for (let i = 1; i < bytes; i += 2) data[i] = 0x20;
  }
  const copies = Math.max(1, Math.ceil(96e6 / bytes));
  const ws = Array.from({ length: copies }, () => {
    const p = backend.alloc(bytes);
    backend.upload(p, data);
    return p;
  });
  return { name, id: f.id, ws, best: Infinity };
});
const rounds = m > 64 ? 5 : 40;
const calls = 20;
for (let r = 0; r < rounds; r++) {
  for (const s of setups) {
    const t0 = performance.now();
    for (let i = 0; i < calls; i++) {
      backend.matmul({ out, x, w: s.ws[(r * calls + i) % s.ws.length], wDtype: s.id, m, n, k });
    }
    backend.synchronize();
    s.best = Math.min(s.best, ((performance.now() - t0) * 1000) / calls);
  }
}
console.log(
  `${n}x${k} m=${m}, min of ${rounds} rounds of ${calls} calls, load average ${
    Deno.loadavg().map((v) => v.toFixed(2)).join(" ")
  }: ` +
    setups.map((s) => `${s.name} ${s.best.toFixed(0)}us (${(setups[0].best / s.best).toFixed(2)}x)`)
      .join("  "),
);
backend.close();
