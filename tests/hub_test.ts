// The hub downloader against a local fake of the Hugging Face hub (file list API, resolve with
// ETags and a 302 to a CDN on another origin, Range requests), serving stories260K.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { downloadSnapshot, HubError, repoFolderName } from "../src/hub/download.ts";
import { openModelSource } from "../src/model/load.ts";

const MODEL_DIR = new URL("../../shared/models/stories260K/hf", import.meta.url).pathname;
const GGUF = new URL("../../shared/models/stories260K/stories260K-f32.gguf", import.meta.url)
  .pathname;
const COMMIT = "0123456789abcdef0123456789abcdef01234567";
const LFS = new Set(["model.safetensors", "stories260K-f32.gguf"]);

interface RepoFile {
  name: string;
  bytes: Uint8Array<ArrayBuffer>;
  sha256: string;
  gitOid: string;
}

function repoFile(name: string, bytes: Uint8Array<ArrayBuffer>): RepoFile {
  return {
    name,
    bytes,
    sha256: createHash("sha256").update(bytes).digest("hex"),
    gitOid: createHash("sha1").update(`blob ${bytes.length}\0`).update(bytes).digest("hex"),
  };
}

/** Knobs a test turns to make the fake hub misbehave. */
interface Faults {
  /** Cut the connection after this many bytes of the next CDN response. */
  cutAfterBytes?: number;
  /** Serve the LFS file with one byte flipped. */
  corrupt?: boolean;
}

/** The hub (API + resolve) and a CDN, on two loopback ports (two origins). */
class FakeHub {
  repos = new Map<string, RepoFile[]>();
  faults: Faults = {};
  hubRequests: Request[] = [];
  cdnRequests: Request[] = [];
  #hub: Deno.HttpServer<Deno.NetAddr>;
  #cdn: Deno.HttpServer<Deno.NetAddr>;

  constructor() {
    const quiet = () => {};
    this.#hub = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: quiet }, (r) => {
      this.hubRequests.push(r);
      return this.#serveHub(r);
    });
    this.#cdn = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: quiet }, (r) => {
      this.cdnRequests.push(r);
      return this.#serveCdn(r);
    });
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.#hub.addr.port}`;
  }

  get numRequests(): number {
    return this.hubRequests.length + this.cdnRequests.length;
  }

  #find(repoId: string, request: Request): RepoFile[] | Response {
    const files = this.repos.get(repoId);
    if (repoId === "org/private" && request.headers.get("authorization") !== "Bearer secret") {
      return new Response("Invalid credentials", {
        status: 401,
        headers: { "x-error-code": "RepoNotFound" },
      });
    }
    if (!files) {
      return new Response("Repository not found", {
        status: 404,
        headers: { "x-error-code": "RepoNotFound", "x-error-message": "Repository not found" },
      });
    }
    return files;
  }

  #serveHub(request: Request): Response {
    const url = new URL(request.url);
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
    if (api) {
      const files = this.#find(api[1], request);
      if (files instanceof Response) return files;
      if (api[2] !== "main" && api[2] !== COMMIT) {
        return new Response("Invalid rev id", {
          status: 404,
          headers: { "x-error-code": "RevisionNotFound" },
        });
      }
      return Response.json({
        id: api[1],
        sha: COMMIT,
        siblings: files.map((f) => ({
          rfilename: f.name,
          size: f.bytes.length,
          blobId: f.gitOid,
          ...(LFS.has(f.name) ? { lfs: { sha256: f.sha256, size: f.bytes.length } } : {}),
        })),
      });
    }
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    if (!resolve) return new Response("no route", { status: 404 });
    const files = this.#find(resolve[1], request);
    if (files instanceof Response) return files;
    const file = files.find((f) => f.name === decodeURIComponent(resolve[3]));
    if (!file) return new Response("Entry not found", { status: 404 });
    const headers = { "x-repo-commit": COMMIT };
    if (LFS.has(file.name)) {
      // Like the hub: LFS files redirect to the CDN, carrying the content's sha256 as X-Linked-Etag.
      return new Response(null, {
        status: 302,
        headers: {
          ...headers,
          location: `http://127.0.0.1:${this.#cdn.addr.port}/blobs/${file.sha256}`,
          "x-linked-etag": `"${file.sha256}"`,
          "x-linked-size": String(file.bytes.length),
          etag: `W/"${file.gitOid}"`,
        },
      });
    }
    return new Response(request.method === "HEAD" ? null : file.bytes, {
      headers: { ...headers, etag: `"${file.gitOid}"` },
    });
  }

  #serveCdn(request: Request): Response {
    const sha = new URL(request.url).pathname.split("/").pop();
    const file = [...this.repos.values()].flat().find((f) => f.sha256 === sha);
    if (!file) return new Response("no such blob", { status: 404 });
    let bytes = file.bytes;
    if (this.faults.corrupt) {
      bytes = bytes.slice();
      bytes[bytes.length >> 1] ^= 0xff;
    }
    const range = /^bytes=(\d+)-$/.exec(request.headers.get("range") ?? "");
    const start = range ? Number(range[1]) : 0;
    if (start >= bytes.length && bytes.length > 0) return new Response(null, { status: 416 });
    const body = bytes.subarray(start);
    const headers = new Headers({ "content-length": String(body.length) });
    if (range) headers.set("content-range", `bytes ${start}-${bytes.length - 1}/${bytes.length}`);
    const status = range ? 206 : 200;
    const cut = this.faults.cutAfterBytes;
    if (cut === undefined) return new Response(body, { status, headers });
    this.faults.cutAfterBytes = undefined;
    // Part of the body, then the stream ends short of Content-Length: the connection drops.
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(body.slice(0, cut));
        controller.close();
      },
    });
    return new Response(stream, { status, headers });
  }

  async close(): Promise<void> {
    await this.#hub.shutdown();
    await this.#cdn.shutdown();
  }
}

async function readRepo(dir: string): Promise<RepoFile[]> {
  const files: RepoFile[] = [];
  for await (const entry of Deno.readDir(dir)) {
    files.push(repoFile(entry.name, await Deno.readFile(`${dir}/${entry.name}`)));
  }
  return files.sort((a, b) => a.name.localeCompare(b.name));
}

Deno.test("hub download", async (t) => {
  const hub = new FakeHub();
  const files = await readRepo(MODEL_DIR);
  hub.repos.set("test/stories", files);
  hub.repos.set("org/private", files);
  hub.repos.set("test/gguf", [
    repoFile("README.md", new TextEncoder().encode("# gguf\n")),
    repoFile("stories260K-f32.gguf", await Deno.readFile(GGUF)),
  ]);
  const weights = files.find((f) => f.name === "model.safetensors")!;
  const root = await Deno.makeTempDir({ prefix: "denollm-hub-" });
  const env = { HF_ENDPOINT: hub.endpoint };
  const base = { env, showProgress: false, retryDelayMs: 0 };
  let cacheNumber = 0;
  const freshCache = () => `${root}/cache${cacheNumber++}`;

  try {
    const cacheDir = freshCache();
    const repoDir = `${cacheDir}/${repoFolderName("test/stories")}`;

    await t.step("full download into the hub cache layout", async () => {
      const snapshot = await downloadSnapshot("test/stories", { ...base, cacheDir });
      assert.equal(snapshot.commit, COMMIT);
      assert.equal(snapshot.isCached, false);
      assert.equal(snapshot.dir, `${repoDir}/snapshots/${COMMIT}`);
      assert.equal(snapshot.modelPath, snapshot.dir);
      assert.equal(await Deno.readTextFile(`${repoDir}/refs/main`), COMMIT);
      for (const file of files) {
        const link = `${snapshot.dir}/${file.name}`;
        const etag = LFS.has(file.name) ? file.sha256 : file.gitOid;
        assert.equal(await Deno.readLink(link), `../../blobs/${etag}`);
        assert.deepEqual(await Deno.readFile(link), file.bytes);
      }
      const blobs = [...Deno.readDirSync(`${repoDir}/blobs`)].map((e) => e.name);
      assert.ok(blobs.every((name) => !name.endsWith(".incomplete")));
      // Whatever was downloaded is a loadable model.
      const source = await openModelSource(snapshot.modelPath);
      assert.ok(source.tokenizer.encode("Once upon a time").length > 0);
      // The LFS file came from the CDN after a 302.
      assert.equal(hub.cdnRequests.length, 1);
    });

    await t.step("a cached revision is used without any request", async () => {
      const before = hub.numRequests;
      const snapshot = await downloadSnapshot("test/stories", { ...base, cacheDir });
      assert.equal(snapshot.isCached, true);
      assert.equal(snapshot.dir, `${repoDir}/snapshots/${COMMIT}`);
      assert.equal(hub.numRequests, before);
      const byCommit = await downloadSnapshot("test/stories", {
        ...base,
        cacheDir,
        revision: COMMIT,
      });
      assert.equal(byCommit.isCached, true);
      assert.equal(hub.numRequests, before);
    });

    await t.step("resume after a connection cut, in the same run", async () => {
      const dir = freshCache();
      hub.cdnRequests = [];
      hub.faults.cutAfterBytes = 300_000;
      const snapshot = await downloadSnapshot("test/stories", { ...base, cacheDir: dir });
      assert.deepEqual(await Deno.readFile(`${snapshot.dir}/model.safetensors`), weights.bytes);
      assert.deepEqual(
        hub.cdnRequests.map((r) => r.headers.get("range")),
        [null, "bytes=300000-"],
      );
    });

    await t.step("resume from blobs/<etag>.incomplete in a later run", async () => {
      const dir = freshCache();
      hub.cdnRequests = [];
      hub.faults.cutAfterBytes = 500_000;
      await assert.rejects(
        downloadSnapshot("test/stories", { ...base, cacheDir: dir, maxRetries: 0 }),
        (error: Error) =>
          error instanceof HubError &&
          /model\.safetensors.*failed after 1 attempts/.test(error.message),
      );
      const partial = `${dir}/${repoFolderName("test/stories")}/blobs/${weights.sha256}.incomplete`;
      assert.equal((await Deno.stat(partial)).size, 500_000);
      assert.equal(
        await Deno.stat(`${dir}/${repoFolderName("test/stories")}/refs/main`).catch(
          () => undefined,
        ),
        undefined,
      );
      const snapshot = await downloadSnapshot("test/stories", { ...base, cacheDir: dir });
      assert.deepEqual(await Deno.readFile(`${snapshot.dir}/model.safetensors`), weights.bytes);
      assert.equal(hub.cdnRequests.at(-1)!.headers.get("range"), "bytes=500000-");
    });

    await t.step("corruption is detected and leaves no snapshot", async () => {
      const dir = freshCache();
      hub.faults.corrupt = true;
      try {
        await assert.rejects(
          downloadSnapshot("test/stories", { ...base, cacheDir: dir }),
          (error: Error) =>
            error instanceof HubError &&
            error.message.includes(`model.safetensors of test/stories is corrupt: sha256 is`) &&
            error.message.includes(`expected ${weights.sha256}`),
        );
      } finally {
        hub.faults.corrupt = false;
      }
      const repo = `${dir}/${repoFolderName("test/stories")}`;
      for (const path of [`${repo}/snapshots`, `${repo}/refs`, `${repo}/blobs/${weights.sha256}`]) {
        assert.equal(await Deno.stat(path).catch(() => undefined), undefined, path);
      }
      const blobs = [...Deno.readDirSync(`${repo}/blobs`)].map((e) => e.name);
      assert.ok(!blobs.some((name) => name.startsWith(weights.sha256)), blobs.join());
    });

    await t.step("HF_TOKEN goes to the hub, not to the CDN", async () => {
      hub.hubRequests = [];
      hub.cdnRequests = [];
      const snapshot = await downloadSnapshot("org/private", {
        ...base,
        env: { ...env, HF_TOKEN: "secret" },
        cacheDir: freshCache(),
      });
      assert.equal(snapshot.commit, COMMIT);
      assert.ok(hub.hubRequests.length > 1);
      for (const r of hub.hubRequests) {
        assert.equal(r.headers.get("authorization"), "Bearer secret");
      }
      for (const r of hub.cdnRequests) assert.equal(r.headers.get("authorization"), null);
    });

    await t.step("401, 404 and a missing revision are clear errors", async () => {
      await assert.rejects(
        downloadSnapshot("org/private", { ...base, cacheDir: freshCache() }),
        (error: Error) =>
          error instanceof HubError &&
          /refused access to org\/private \(HTTP 401\)/.test(error.message) &&
          /set HF_TOKEN/.test(error.message),
      );
      await assert.rejects(
        downloadSnapshot("org/private", {
          ...base,
          env: { ...env, HF_TOKEN: "wrong" },
          cacheDir: freshCache(),
        }),
        /HF_TOKEN was sent/,
      );
      await assert.rejects(
        downloadSnapshot("test/missing", { ...base, cacheDir: freshCache() }),
        /test\/missing was not found at http:\/\/127\.0\.0\.1:\d+ \(HTTP 404\)/,
      );
      await assert.rejects(
        downloadSnapshot("test/stories", { ...base, cacheDir: freshCache(), revision: "v9" }),
        /test\/stories has no revision "v9" \(HTTP 404\)/,
      );
      await assert.rejects(
        downloadSnapshot("test/stories", {
          ...base,
          cacheDir: freshCache(),
          env: { HF_ENDPOINT: "http://127.0.0.1:9" },
        }),
        /Cannot reach http:\/\/127\.0\.0\.1:9/,
      );
      await assert.rejects(
        downloadSnapshot("test/stories", {
          ...base,
          cacheDir: freshCache(),
          env: { ...env, HF_HUB_OFFLINE: "1" },
        }),
        /HF_HUB_OFFLINE is set/,
      );
    });

    await t.step("a GGUF repo: the single .gguf, or a named one", async () => {
      const dir = freshCache();
      const snapshot = await downloadSnapshot("test/gguf", { ...base, cacheDir: dir });
      assert.equal(snapshot.modelPath, `${snapshot.dir}/stories260K-f32.gguf`);
      assert.equal((await openModelSource(snapshot.modelPath)).format, "gguf");
      const named = await downloadSnapshot("test/gguf", {
        ...base,
        cacheDir: dir,
        file: "stories260K-f32.gguf",
      });
      assert.equal(named.isCached, true);
      await assert.rejects(
        downloadSnapshot("test/gguf", { ...base, cacheDir: freshCache(), file: "x.gguf" }),
        /test\/gguf has no file x\.gguf; its \.gguf files: stories260K-f32\.gguf/,
      );
    });

    await t.step("serve --model ORG/NAME downloads once, then starts from the cache", async () => {
      const dir = freshCache();
      const first = await serveUntilReady("test/stories", dir, env);
      assert.ok(first.some((l) => l.msg === "downloaded snapshot" && l.commit === COMMIT));
      const before = hub.numRequests;
      const second = await serveUntilReady("test/stories", dir, env);
      assert.ok(second.some((l) => l.msg === "using cached snapshot"));
      assert.equal(hub.numRequests, before);
    });

    await t.step("generate --model ORG/NAME downloads once, as serve does", async () => {
      const dir = freshCache();
      const generate = async () => {
        const output = await new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            "--allow-read",
            "--allow-write",
            "--allow-env",
            "--allow-ffi",
            "--allow-net",
            "main.ts",
            "generate",
            "--model",
            "test/stories",
            "--hf-cache",
            dir,
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "8",
            "--threads",
            "1",
          ],
          cwd: new URL("..", import.meta.url).pathname,
          env: {
            ...Object.fromEntries(
              Object.entries(Deno.env.toObject()).filter(([k]) =>
                !k.startsWith("DENOLLM_") && !k.startsWith("HF_")
              ),
            ),
            ...env,
          },
          clearEnv: true,
          stdout: "piped",
          stderr: "piped",
        }).output();
        const stderr = new TextDecoder().decode(output.stderr);
        assert.equal(output.code, 0, stderr);
        return new TextDecoder().decode(output.stdout);
      };
      const first = await generate();
      assert.ok(first.length > 0);
      const before = hub.numRequests;
      assert.equal(await generate(), first);
      assert.equal(hub.numRequests, before);
    });
  } finally {
    await hub.close();
    await Deno.remove(root, { recursive: true });
  }
});

/** Starts `denollm serve` on a repo id, waits until it serves, stops it; returns its JSON log. */
async function serveUntilReady(
  model: string,
  cacheDir: string,
  env: Record<string, string>,
): Promise<{ msg: string; [key: string]: unknown }[]> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-ffi",
      "--allow-net",
      "--unstable-no-legacy-abort",
      "main.ts",
      "serve",
      "--model",
      model,
      "--hf-cache",
      cacheDir,
      "--port",
      "0",
      "--kv-cache-memory",
      "4M",
      "--log-format",
      "json",
    ],
    cwd: new URL("..", import.meta.url).pathname,
    // A developer's own hub settings (HF_TOKEN, HF_HUB_OFFLINE, …) must not reach the fake hub.
    env: {
      ...Object.fromEntries(
        Object.entries(Deno.env.toObject()).filter(([k]) =>
          !k.startsWith("DENOLLM_") && !k.startsWith("HF_") && k !== "NOTIFY_SOCKET"
        ),
      ),
      ...env,
    },
    clearEnv: true,
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const logs: { msg: string; [key: string]: unknown }[] = [];
  let text = "";
  for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
    text += chunk;
    const lines = text.split("\n");
    text = lines.pop()!;
    for (const line of lines) {
      const entry = JSON.parse(line);
      logs.push(entry);
      if (entry.msg.startsWith("serving ")) child.kill("SIGTERM");
    }
  }
  const status = await child.status;
  assert.equal(status.code, 0, JSON.stringify(logs));
  return logs;
}
