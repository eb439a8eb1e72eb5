// The built-in demo model: with no --model (or `--model demo`), `denollm serve` serves a
// random-weight model of a real shape (stories15M's Llama config, a synthetic byte-level BPE
// tokenizer and a chat template), so a fresh machine has something to serve. It is made once,
// deterministically (the same seed gives the same bytes), and cached. The generator stays in
// tools/random_model/ with the fixtures it also makes; this is its only use from src/.
// Its output is noise, and the log and /v1/models say so.
import { generateRandomModel } from "../../tools/random_model/random_model.ts";

/** The --model value that names the demo. */
export const DEMO_MODEL = "demo";
/** The real shape it copies (tools/random_model/presets.ts). */
export const DEMO_PRESET = "stories15m";
const DEMO_SEED = 0;
/** Bumped whenever the generator's output for the demo changes, so old caches are not reused. */
const DEMO_REVISION = 1;

/** What /v1/models and the log say about the demo. */
export const DEMO_NOTICE = "built-in demo model with random weights: its output is noise. " +
  "Serve a real model with `denollm serve ORG/NAME` (a Hugging Face repo id) or a local path.";

/** `$XDG_CACHE_HOME/denollm/demo`, or `~/.cache/denollm/demo`. */
export function demoCacheRoot(env: Record<string, string | undefined>): string {
  const cacheHome = env.XDG_CACHE_HOME || `${env.HOME ?? "."}/.cache`;
  return `${cacheHome.replace(/\/+$/, "")}/denollm/demo`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/**
 * The demo's HF directory under `cacheRoot`, generated on first use. It is written beside its
 * final place and renamed into it, so an interrupted first start never leaves a half model that a
 * later start would load.
 */
export async function ensureDemoModel(
  cacheRoot: string,
  log: (msg: string, fields?: Record<string, unknown>) => void = () => {},
): Promise<{ path: string; isCached: boolean }> {
  const dir = `${cacheRoot}/${DEMO_PRESET}-seed${DEMO_SEED}-r${DEMO_REVISION}`;
  if (await exists(`${dir}/model.safetensors`)) return { path: dir, isCached: true };
  await Deno.mkdir(cacheRoot, { recursive: true });
  const partial = `${dir}.partial-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  log("generating the demo model (once; cached)", { preset: DEMO_PRESET, path: dir });
  try {
    await generateRandomModel(DEMO_PRESET, {
      seed: DEMO_SEED,
      dtype: "F32",
      outDir: partial,
      formats: ["hf"],
    });
    try {
      await Deno.rename(partial, dir);
    } catch (error) {
      // Another server made it first: theirs is the same bytes.
      if (!(await exists(`${dir}/model.safetensors`))) throw error;
      await Deno.remove(partial, { recursive: true });
    }
  } catch (error) {
    await Deno.remove(partial, { recursive: true }).catch(() => {});
    throw error;
  }
  return { path: dir, isCached: false };
}
