// Test helper: runs dl_sample on one backend for rows of logits with per-row parameters.
import type { DeviceBuffers } from "./device_buffers.ts";

export interface SampleRow {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  seed: bigint;
  counter: bigint;
}

/** Token ids of dl_sample for logits [rows.length, vocabSize]. */
export function sampleOn(
  s: DeviceBuffers,
  logits: Float32Array,
  rows: readonly SampleRow[],
  vocabSize: number,
): Int32Array {
  return launchSample(s, logits, rows, vocabSize)();
}

/** Enqueues dl_sample; returns a reader of the token ids. */
export function launchSample(
  s: DeviceBuffers,
  logits: Float32Array,
  rows: readonly SampleRow[],
  vocabSize: number,
): () => Int32Array {
  const u64 = (values: bigint[]) => new Uint32Array(BigUint64Array.from(values).buffer);
  const outIds = s.zeros(Math.max(1, rows.length) * 4);
  s.backend.sample({
    outIds,
    logits: s.from(logits),
    temperature: s.from(Float32Array.from(rows, (r) => r.temperature)),
    topK: s.from(Int32Array.from(rows, (r) => r.topK)),
    topP: s.from(Float32Array.from(rows, (r) => r.topP)),
    minP: s.from(Float32Array.from(rows, (r) => r.minP)),
    seeds: s.from(u64(rows.map((r) => r.seed))),
    counters: s.from(u64(rows.map((r) => r.counter))),
    numRows: rows.length,
    vocabSize,
  });
  return () => {
    const bytes = s.bytes(outIds, rows.length * 4);
    return new Int32Array(bytes.buffer, bytes.byteOffset, rows.length);
  };
}
