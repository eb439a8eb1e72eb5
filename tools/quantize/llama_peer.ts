// Builds tools/quantize/llama_peer.c against the libllama node-llama-cpp installs into the
// gitignored .bench/llamacpp (tools/llamacpp/install.sh), headers taken from the llama.cpp git
// bundle it ships, and runs it: llama.cpp's quantizer and its teacher-forced logits.
const ROOT = new URL("../../", import.meta.url).pathname;
const PKG = `${ROOT}.bench/llamacpp/node_modules`;
const BINS = `${PKG}/@node-llama-cpp/linux-x64/bins/linux-x64`;
const BUNDLE = `${PKG}/node-llama-cpp/llama/gitRelease.bundle`;
const BUILD = `${ROOT}.bench/llamacpp/llama_peer`;
const SOURCE = `${ROOT}tools/quantize/llama_peer.c`;
const HEADERS = [
  "include/llama.h",
  "ggml/include/ggml.h",
  "ggml/include/ggml-backend.h",
  "ggml/include/ggml-alloc.h",
  "ggml/include/ggml-cpu.h",
  "ggml/include/ggml-opt.h",
  "ggml/include/gguf.h",
];

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

async function run(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed: ${stderr.slice(-2000)}`);
  return new TextDecoder().decode(out.stdout);
}

/** Why the peer cannot run here (node-llama-cpp missing), or null when it can. */
export async function llamaPeerMissing(): Promise<string | null> {
  if (!(await exists(BINS)) || !(await exists(BUNDLE))) {
    return `node-llama-cpp is not installed in ${ROOT}.bench/llamacpp ` +
      "(run bash tools/llamacpp/install.sh)";
  }
  return null;
}

async function libraryIn(prefix: string): Promise<string> {
  for await (const entry of Deno.readDir(BINS)) {
    if (entry.name.startsWith(prefix) && entry.name.endsWith(".so")) return `${BINS}/${entry.name}`;
  }
  throw new Error(`Expected ${prefix}*.so in ${BINS}, found none`);
}

/** The built peer's path; builds it once per change of its source. */
export function buildLlamaPeer(): Promise<string> {
  // One build per process: concurrent callers (a test asking for three files' logits at once)
  // share it instead of compiling over a binary another one is starting.
  building ??= buildOnce().catch((error) => {
    building = undefined;
    throw error;
  });
  return building;
}

let building: Promise<string> | undefined;

async function buildOnce(): Promise<string> {
  const missing = await llamaPeerMissing();
  if (missing !== null) throw new Error(missing);
  const binary = `${BUILD}/llama_peer`;
  const source = await Deno.readTextFile(SOURCE);
  const built = await Deno.readTextFile(`${BUILD}/llama_peer.c`).catch(() => null);
  if (built === source && await exists(binary)) return binary;
  await Deno.mkdir(`${BUILD}/include`, { recursive: true });
  const repo = await Deno.makeTempDir({ prefix: "denollm-llama-src-" });
  try {
    await run("git", ["init", "-q", "--bare", repo]);
    await run("git", ["-C", repo, "fetch", "-q", BUNDLE, "HEAD:refs/heads/main"]);
    for (const header of HEADERS) {
      const text = await run("git", ["-C", repo, "show", `main:${header}`]);
      await Deno.writeTextFile(`${BUILD}/include/${header.split("/").pop()}`, text);
    }
  } finally {
    await Deno.remove(repo, { recursive: true });
  }
  // Built beside and renamed into place, so another process never runs a half-written binary.
  const partial = `${binary}.${Deno.pid}.tmp`;
  await run("gcc", [
    "-O1",
    "-o",
    partial,
    SOURCE,
    `-I${BUILD}/include`,
    await libraryIn("libllama.v"),
    await libraryIn("libggml.v"),
    `${BINS}/libggml-base.so`,
    `-Wl,-rpath,${BINS}`,
  ]);
  await Deno.rename(partial, binary);
  await Deno.writeTextFile(`${BUILD}/llama_peer.c`, source);
  return binary;
}

/** llama.cpp's llama_model_quantize of `inPath` into `outPath` as llama_ftype `fileType`. */
export async function llamaQuantize(
  paths: { inPath: string; outPath: string },
  fileType: number,
): Promise<void> {
  const peer = await buildLlamaPeer();
  await run(peer, ["quantize", BINS, paths.inPath, paths.outPath, String(fileType)]);
}

/**
 * llama.cpp's logits for each window of `tokens` (windows of `window` ids back to back), each
 * decoded from an empty cache: [numWindows * window, vocab] f32.
 */
export async function llamaLogits(
  modelPath: string,
  tokens: Int32Array,
  options: { window: number; threads?: number },
): Promise<Float32Array> {
  const peer = await buildLlamaPeer();
  const dir = await Deno.makeTempDir({ prefix: "denollm-llama-logits-" });
  try {
    await Deno.writeFile(
      `${dir}/tokens.i32`,
      new Uint8Array(tokens.buffer, tokens.byteOffset, tokens.byteLength),
    );
    await run(peer, [
      "logits",
      BINS,
      modelPath,
      `${dir}/tokens.i32`,
      String(options.window),
      `${dir}/logits.f32`,
      String(options.threads ?? 1),
    ]);
    const bytes = await Deno.readFile(`${dir}/logits.f32`);
    return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
