// The Deno symbol table must equal what ffi/denollm.h declares, and every symbol must resolve in
// each built library, so the header stays the one source of truth for the ABI.
import assert from "node:assert/strict";
import { defaultLibraryPath, LibraryLoadError, NativeBackend } from "../ffi/native.ts";
import { ABI_VERSION, symbols } from "../ffi/symbols.gen.ts";
import { HEADER_PATH, parseAbiVersion, parseHeader, renderSymbols } from "../ffi/gen_symbols.ts";

const header = Deno.readTextFileSync(HEADER_PATH);

Deno.test("symbols.gen.ts matches the header", () => {
  const fromHeader = Object.fromEntries(
    parseHeader(header).map((fn) => [fn.name, { parameters: fn.parameters, result: fn.result }]),
  );
  assert.deepEqual(JSON.parse(JSON.stringify(symbols)), fromHeader);
  assert.equal(ABI_VERSION, parseAbiVersion(header));
});

Deno.test("header parser maps C types and rejects unknown ones", () => {
  const parsed = parseHeader(`
    DL_API const char* dl_a(void);
    DL_API int32_t dl_b(
        dl_context* ctx,   // comment, with a comma
        const float* x,    /* [n] */
        uint64_t n,
        float eps);
  `);
  assert.deepEqual(parsed, [
    { name: "dl_a", result: "pointer", parameters: [] },
    { name: "dl_b", result: "i32", parameters: ["pointer", "pointer", "u64", "f32"] },
  ]);
  assert.throws(() => parseHeader("DL_API size_t dl_c(void);"), /Unsupported C type "size_t"/);
  assert.match(renderSymbols(parsed, 3), /export const ABI_VERSION = 3;/);
});

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

Deno.test("every header symbol resolves in the CPU library", () => {
  const lib = Deno.dlopen(defaultLibraryPath("cpu"), symbols);
  try {
    assert.equal(lib.symbols.dl_abi_version(), ABI_VERSION);
  } finally {
    lib.close();
  }
});

Deno.test({
  name: "the CUDA library exports the same ABI and fails cleanly without a GPU",
  ignore: !exists(defaultLibraryPath("cuda")),
  fn() {
    const lib = Deno.dlopen(defaultLibraryPath("cuda"), symbols);
    try {
      assert.equal(lib.symbols.dl_abi_version(), ABI_VERSION);
      const name = Deno.UnsafePointerView.getCString(lib.symbols.dl_backend_name()!);
      assert.equal(name, "cuda");
    } finally {
      lib.close();
    }
    let gpu = false;
    try {
      NativeBackend.open({ backend: "cuda" }).close();
      gpu = true;
    } catch (error) {
      // No driver or no device: a clear status, never a crash.
      assert.match((error as Error).message, /dl_context_create failed with DL_ERR_DEVICE: .+/);
    }
    if (gpu) console.log("a CUDA device is present: context creation succeeded");
  },
});

Deno.test("a missing library gives a clear error", () => {
  assert.throws(
    () => NativeBackend.open({ libraryPath: "/nonexistent/libdenollm_cpu.so" }),
    (error) => error instanceof LibraryLoadError && /deno task build/.test(error.message),
  );
});

/** Dynamic symbols a library defines, via nm (binutils); undefined when nm is unavailable. */
function exportedSymbols(path: string): string[] | undefined {
  try {
    const out = new Deno.Command("nm", { args: ["-D", "--defined-only", path] }).outputSync();
    if (!out.success) return undefined;
    return new TextDecoder().decode(out.stdout).split("\n")
      .map((line) => line.trim().split(/\s+/))
      .filter((f) => f.length === 3 && /^[TtWw]$/.test(f[1]))
      .map((f) => f[2])
      .sort();
  } catch {
    return undefined;
  }
}

for (const backend of ["cpu", "cuda"] as const) {
  const path = defaultLibraryPath(backend);
  const symbolsOut = exists(path) ? exportedSymbols(path) : undefined;
  Deno.test({
    name: `the ${backend} library exports exactly the header's functions`,
    ignore: symbolsOut === undefined,
    fn() {
      // Anything else exported (a statically linked runtime, a helper) could clash with the host.
      assert.deepEqual(symbolsOut, parseHeader(header).map((fn) => fn.name).sort());
    },
  });
}
