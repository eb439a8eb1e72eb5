// Builds the native libraries (CPU always, CUDA when nvcc is present) and, with --compile, the
// single `deno compile` executable that embeds them.
//
//   deno task build              # build/libdenollm_cpu.so (+ build/libdenollm_cuda.so)
//   deno task compile            # build/denollm, needs the denort runtime (network or DENORT_BIN)
//
// Environment: CXX (default g++), NVCC (default nvcc), CUDA_ARCHS (default "80,90": SASS for each,
// plus PTX for the newest),
// DENOLLM_SKIP_CUDA=1 to skip the CUDA build, DENORT_BIN for an offline deno compile.

const ROOT = new URL(".", import.meta.url).pathname;
const BUILD_DIR = `${ROOT}build`;

/** Runs a command, streaming its output, and throws with the command line if it fails. */
async function run(cmd: string, args: string[]): Promise<void> {
  const child = new Deno.Command(cmd, { args, cwd: ROOT, stdout: "inherit", stderr: "inherit" });
  const { code } = await child.output();
  if (code !== 0) throw new Error(`Command failed (exit ${code}): ${cmd} ${args.join(" ")}`);
}

/** Whether an executable can be started at all. */
async function hasTool(cmd: string): Promise<boolean> {
  try {
    const { code } = await new Deno.Command(cmd, {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    })
      .output();
    return code === 0;
  } catch {
    return false;
  }
}

/** Files under `dir` (its subfolders too, so a kernel family can have its own folder). */
function listSources(dir: string, extensions: string[]): string[] {
  const found: string[] = [];
  for (const e of Deno.readDirSync(`${ROOT}${dir}`)) {
    if (e.isDirectory) found.push(...listSources(`${dir}/${e.name}`, extensions));
    else if (e.isFile && extensions.some((ext) => e.name.endsWith(ext))) {
      found.push(`${dir}/${e.name}`);
    }
  }
  return found.sort();
}

/** True when the output exists and is newer than every input (skips needless rebuilds). */
function isUpToDate(output: string, inputs: string[]): boolean {
  try {
    const built = Deno.statSync(`${ROOT}${output}`).mtime!.getTime();
    return inputs.every((input) => Deno.statSync(`${ROOT}${input}`).mtime!.getTime() < built);
  } catch {
    return false;
  }
}

/** Compiles one backend's library from `<dir>/*<sourceExt>` unless it is up to date. */
async function buildLibrary(
  backend: "cpu" | "cuda",
  compile: { compiler: string; sourceExt: string; headerExt: string; flags: string[] },
): Promise<void> {
  const sources = listSources(backend, [compile.sourceExt]);
  const headers = [
    ...listSources(backend, [compile.headerExt]),
    ...listSources("native", [".h"]),
    "ffi/denollm.h",
  ];
  const output = `build/libdenollm_${backend}.so`;
  if (isUpToDate(output, [...sources, ...headers, "build.ts"])) {
    console.error(`${output} is up to date`);
    return;
  }
  await run(compile.compiler, [
    ...compile.flags,
    "-Iffi",
    "-Inative",
    `-I${backend}`,
    ...sources,
    "-o",
    output,
  ]);
  console.error(`built ${output}`);
}

/** A linker version script that exports the dl_* functions and hides everything else. */
function exportMap(): string {
  const path = `${BUILD_DIR}/export.map`;
  Deno.writeTextFileSync(path, "{ global: dl_*; local: *; };\n");
  return path;
}

function buildCpu(): Promise<void> {
  // Hot loops carry target_clones (AVX-512, AVX2+FMA, baseline), so one portable library picks
  // the best code path at load time instead of being tied to the build machine's CPU.
  return buildLibrary("cpu", {
    compiler: Deno.env.get("CXX") ?? "g++",
    sourceExt: ".cpp",
    headerExt: ".h",
    flags: [
      "-O3",
      "-std=c++17",
      "-fPIC",
      "-shared",
      "-fopenmp",
      "-fvisibility=hidden",
      "-Wall",
      "-Wextra",
      "-static-libstdc++",
      "-static-libgcc",
      // dlclose must not unmap code that idle OpenMP worker threads may still return into.
      "-Wl,-z,nodelete",
      // Keep the statically linked libstdc++ private: export the ABI and nothing else.
      "-Wl,--exclude-libs,ALL",
      // Also the std template instantiations our own objects emit with default visibility (the
      // comm code's std::thread, std::map): only dl_* leaves the library.
      `-Wl,--version-script=${exportMap()}`,
    ],
  });
}

/**
 * The CPU build's collectives plugin (comm/gloo_comm.cpp against Debian's libgloo-dev), a library
 * of its own that libdenollm_cpu.so opens on first use: without Gloo only parallel serving is lost.
 */
async function buildCommPlugin(): Promise<void> {
  const output = "build/libdenollm_comm_gloo.so";
  try {
    Deno.statSync("/usr/include/gloo/allreduce.h");
  } catch {
    console.error(
      `skipping ${output}: Gloo's headers are missing (apt-get install libgloo-dev); ` +
        "--tensor-parallel-size and --pipeline-parallel-size will fail with that hint",
    );
    return;
  }
  const inputs = ["comm/gloo_comm.cpp", "native/dl_store.h", "build.ts"];
  if (isUpToDate(output, inputs)) {
    console.error(`${output} is up to date`);
    return;
  }
  await run(Deno.env.get("CXX") ?? "g++", [
    "-O2",
    "-std=c++17",
    "-fPIC",
    "-shared",
    "-fvisibility=hidden",
    "-Wall",
    "-Inative",
    "comm/gloo_comm.cpp",
    "-o",
    output,
    "-lgloo",
    "-pthread",
  ]);
  console.error(`built ${output}`);
}

async function buildCuda(): Promise<void> {
  const nvcc = Deno.env.get("NVCC") ?? "nvcc";
  if (Deno.env.get("DENOLLM_SKIP_CUDA") === "1") {
    console.error("skipping the CUDA library: DENOLLM_SKIP_CUDA=1");
    return;
  }
  if (!(await hasTool(nvcc))) {
    console.error(`skipping the CUDA library: ${nvcc} not found`);
    return;
  }
  const archs = (Deno.env.get("CUDA_ARCHS") ?? "80,90").split(",").map((a) => a.trim());
  const ptxArch = archs.reduce((a, b) => (Number(b) > Number(a) ? b : a));
  // The CUDA runtime is linked statically: a library embedded by `deno compile` is extracted on
  // its own and cannot find a libcudart next to it. Only the driver (libcuda) comes from the host.
  await buildLibrary("cuda", {
    compiler: nvcc,
    sourceExt: ".cu",
    headerExt: ".cuh",
    flags: [
      "-O3",
      "-std=c++17",
      "-shared",
      "-Xcompiler",
      "-fPIC,-fvisibility=hidden",
      "-cudart",
      "static",
      // Only dl_* leaves the library (the comm code's std::thread instantiations would too).
      "-Xlinker",
      `--version-script=${exportMap()}`,
      ...archs.flatMap((arch) => ["-gencode", `arch=compute_${arch},code=sm_${arch}`]),
      // PTX of the newest listed arch too, so a GPU newer than every SASS target (Blackwell and
      // on) JIT-compiles the library at load time instead of failing with "no kernel image".
      "-gencode",
      `arch=compute_${ptxArch},code=compute_${ptxArch}`,
    ],
  });
}

/** The real `deno compile`; explains in one line when the denort runtime cannot be had. */
async function compileExecutable(): Promise<void> {
  const includes = [
    "build/libdenollm_cpu.so",
    "build/libdenollm_cuda.so",
    "build/libdenollm_comm_gloo.so",
  ]
    .filter((path) => {
      try {
        return Deno.statSync(`${ROOT}${path}`).isFile;
      } catch {
        return false;
      }
    })
    .flatMap((path) => ["--include", path]);
  const args = [
    "compile",
    "--allow-read",
    "--allow-write",
    "--allow-env",
    "--allow-ffi",
    "--allow-net",
    "--allow-sys",
    // The daemon starts its local ranks as child processes (--tensor-parallel-size and friends).
    "--allow-run",
    // request.signal then fires only when a client goes away, not after every response (Deno 2.9);
    // without it every served request logs a deprecation warning.
    "--unstable-no-legacy-abort",
    ...includes,
    // Worker code is not found by the module graph; AsyncEngine and AsyncTokenizer start these
    // files as Workers.
    "--include",
    "src/engine/engine_worker.ts",
    "--include",
    "src/api/tokenizer_worker.ts",
    "--output",
    "build/denollm",
    "main.ts",
  ];
  const result = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    stdout: "inherit",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(result.stderr);
  if (result.code === 0) {
    console.error("built build/denollm");
    return;
  }
  if (/denort|download|dl\.deno\.land|network|dns|connect/i.test(stderr)) {
    const hint = Deno.env.get("DENORT_BIN")
      ? `DENORT_BIN=${Deno.env.get("DENORT_BIN")} did not work`
      : "set DENORT_BIN to a denort binary of the same Deno version";
    console.error(
      `deno compile could not obtain the denort runtime (no network to download it here); ${hint}.`,
    );
  } else {
    console.error(stderr);
  }
  Deno.exit(1);
}

if (import.meta.main) {
  Deno.mkdirSync(BUILD_DIR, { recursive: true });
  try {
    await buildCpu();
    await buildCommPlugin();
    await buildCuda();
    if (Deno.args.includes("--compile")) await compileExecutable();
  } catch (error) {
    console.error((error as Error).message);
    Deno.exit(1);
  }
}
