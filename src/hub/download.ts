// Downloads a Hugging Face model snapshot into the standard hub cache (the layout huggingface_hub
// uses: models--org--name/{blobs,snapshots/<commit>,refs/<revision>}), resumable and verified.
import { createHash, type Hash } from "node:crypto";
import { z } from "zod";
import { DenollmError } from "../errors.ts";

/** A download that cannot succeed as asked: bad repo, refused access, corrupt file, no network. */
export class HubError extends DenollmError {
  constructor(message: string, options?: ErrorOptions) {
    super("hub", message, options);
    this.name = "HubError";
  }
}

export interface DownloadOptions {
  /** Branch, tag or commit (default "main"). */
  revision?: string;
  /** The hub cache directory (…/huggingface/hub). */
  cacheDir: string;
  /** A single weights file to fetch instead of safetensors, e.g. "model-Q8_0.gguf". */
  file?: string;
  /** HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE are read from here (default: the process). */
  env?: Record<string, string | undefined>;
  /** Progress lines on stderr (default: when stderr is a terminal). */
  showProgress?: boolean;
  /** Attempts per file after a dropped connection, each resuming where the last stopped. */
  maxRetries?: number;
  retryDelayMs?: number;
  /**
   * One line per notable event (downloading, each file done, resuming), and a progress line
   * (bytes done/total in `fields`) every `progressIntervalMs` while a file downloads.
   */
  log?: (message: string, fields?: Record<string, unknown>) => void;
  /** Default 5000. */
  progressIntervalMs?: number;
  /**
   * Fetch config and tokenizer files only, not the weights (--load-format dummy). Such a snapshot
   * gets no ref, so a later full download of the same revision still fetches the weights.
   */
  skipWeights?: boolean;
}

/** Bytes done across a snapshot's files, for the progress lines. */
interface DownloadProgress {
  doneBytes: number;
  totalBytes: number;
  lastLogAt: number;
}

/** A complete snapshot on disk. */
export interface Snapshot {
  repoId: string;
  commit: string;
  /** snapshots/<commit> */
  dir: string;
  /** What to load: the snapshot directory, or the .gguf file in it. */
  modelPath: string;
  /** Whether it came from the cache without any request. */
  isCached: boolean;
}

/** Files an HF-format model needs besides its *.safetensors; optional ones may be absent. */
const MODEL_FILES = [
  "config.json",
  "generation_config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "chat_template.jinja",
  "model.safetensors.index.json",
];
const REQUIRED_FILES = ["config.json", "tokenizer.json"];
const COMMIT = /^[0-9a-f]{40}$/;

const repoInfoSchema = z.object({
  sha: z.string().regex(COMMIT),
  siblings: z.array(z.object({
    rfilename: z.string(),
    size: z.number().int().nonnegative().optional(),
    blobId: z.string().optional(),
    lfs: z.object({ sha256: z.string(), size: z.number().int().nonnegative() }).nullish(),
  })),
});
type Sibling = z.infer<typeof repoInfoSchema>["siblings"][number];

/** "org/name" or "org/name:FILE.gguf" → repo id and optional file. */
export function parseRepoRef(ref: string): { repoId: string; file?: string } {
  const [repoId, file] = ref.split(":", 2);
  if (!/^[A-Za-z0-9][\w.-]*\/[\w.-]+$/.test(repoId)) {
    throw new HubError(`Expected a Hugging Face repo id like org/name, got "${ref}"`);
  }
  return file === undefined ? { repoId } : { repoId, file };
}

/** huggingface_hub's folder name for a model repo. */
export function repoFolderName(repoId: string): string {
  return `models--${repoId.replaceAll("/", "--")}`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

async function fileSize(path: string): Promise<number | undefined> {
  try {
    return (await Deno.stat(path)).size;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
}

/** ETags arrive quoted and sometimes weak (`W/"…"`); the cache names blobs by the bare value. */
function normalizeEtag(etag: string | null): string | undefined {
  return etag?.replace(/^W\//, "").replace(/^"|"$/g, "") || undefined;
}

function encodePath(path: string): string {
  return path.split("/").map(encodeURIComponent).join("/");
}

function formatMb(bytes: number): string {
  return (bytes / 1e6).toFixed(1);
}

/** The snapshot already on disk for a revision, if complete enough to load. */
async function cachedSnapshot(
  repoDir: string,
  revision: string,
  file: string | undefined,
): Promise<{ commit: string; dir: string; modelPath: string } | undefined> {
  let commit = revision;
  if (!COMMIT.test(revision)) {
    try {
      commit = (await Deno.readTextFile(`${repoDir}/refs/${revision}`)).trim();
    } catch {
      return undefined;
    }
  }
  const dir = `${repoDir}/snapshots/${commit}`;
  if (file !== undefined) {
    return (await exists(`${dir}/${file}`))
      ? { commit, dir, modelPath: `${dir}/${file}` }
      : undefined;
  }
  let gguf: string | undefined;
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (entry.name.endsWith(".gguf")) gguf = entry.name;
    }
  } catch {
    return undefined;
  }
  if (gguf !== undefined && !(await exists(`${dir}/config.json`))) {
    return { commit, dir, modelPath: `${dir}/${gguf}` };
  }
  for (const name of REQUIRED_FILES) if (!(await exists(`${dir}/${name}`))) return undefined;
  return { commit, dir, modelPath: dir };
}

/** Which repo files make up the model, and where the weights are. */
function selectFiles(
  repoId: string,
  siblings: Sibling[],
  file: string | undefined,
  skipWeights = false,
): { files: Sibling[]; weightsFile?: string } {
  const byName = new Map(siblings.map((s) => [s.rfilename, s]));
  if (file !== undefined) {
    const sibling = byName.get(file);
    if (!sibling) {
      const ggufs = siblings.filter((s) => s.rfilename.endsWith(".gguf")).map((s) => s.rfilename);
      throw new HubError(
        `${repoId} has no file ${file}${
          ggufs.length > 0 ? `; its .gguf files: ${ggufs.join(", ")}` : ""
        }`,
      );
    }
    return { files: [sibling], weightsFile: file };
  }
  const topLevel = siblings.filter((s) => !s.rfilename.includes("/"));
  if (skipWeights) {
    const missing = REQUIRED_FILES.filter((name) => !byName.has(name));
    if (missing.length > 0) {
      throw new HubError(`${repoId} lacks ${missing.join(" and ")}, so it cannot be served`);
    }
    return { files: MODEL_FILES.map((name) => byName.get(name)).filter((s) => s !== undefined) };
  }
  const safetensors = topLevel.filter((s) => s.rfilename.endsWith(".safetensors"));
  if (safetensors.length === 0) {
    const ggufs = topLevel.filter((s) => s.rfilename.endsWith(".gguf"));
    if (ggufs.length === 1) return { files: ggufs, weightsFile: ggufs[0].rfilename };
    throw new HubError(
      ggufs.length > 1
        ? `${repoId} has no safetensors weights but several .gguf files; name one as ` +
          `${repoId}:FILE.gguf (${ggufs.map((s) => s.rfilename).join(", ")})`
        : `${repoId} has neither *.safetensors nor .gguf weights`,
    );
  }
  const missing = REQUIRED_FILES.filter((name) => !byName.has(name));
  if (missing.length > 0) {
    throw new HubError(`${repoId} lacks ${missing.join(" and ")}, so it cannot be served`);
  }
  const wanted = MODEL_FILES.map((name) => byName.get(name)).filter((s) => s !== undefined);
  return { files: [...wanted, ...safetensors] };
}

/** Requests to the hub: bearer token on the hub's origin only, redirects followed by hand. */
class HubClient {
  readonly endpoint: string;
  #token?: string;
  /** Requests made, for the log and for tests. */
  numRequests = 0;

  constructor(endpoint: string, token: string | undefined) {
    this.endpoint = endpoint.replace(/\/+$/, "");
    this.#token = token;
  }

  /**
   * Fetches a URL, following redirects; the token is not forwarded to another origin (a CDN).
   * Returns the final response plus the hub's X-* headers from whichever hop carried them.
   */
  async fetch(
    url: string,
    init: { method?: string; headers?: Record<string, string> } = {},
  ): Promise<{ response: Response; hubHeaders: Headers }> {
    const origin = new URL(this.endpoint).origin;
    const hubHeaders = new Headers();
    let current = new URL(url);
    for (let hop = 0; hop < 10; hop++) {
      const headers = new Headers(init.headers);
      if (this.#token && current.origin === origin) {
        headers.set("authorization", `Bearer ${this.#token}`);
      }
      this.numRequests++;
      let response: Response;
      try {
        response = await fetch(current, { method: init.method, headers, redirect: "manual" });
      } catch (error) {
        throw new HubError(`Cannot reach ${current.origin}: ${(error as Error).message}`, {
          cause: error,
        });
      }
      for (const name of ["x-repo-commit", "x-linked-etag", "x-linked-size", "etag"]) {
        const value = response.headers.get(name);
        if (value !== null && !hubHeaders.has(name)) hubHeaders.set(name, value);
      }
      const location = response.headers.get("location");
      if (response.status >= 300 && response.status < 400 && location !== null) {
        await response.body?.cancel();
        current = new URL(location, current);
        continue;
      }
      return { response, hubHeaders };
    }
    throw new HubError(`Too many redirects from ${url}`);
  }

  /** Turns an error status into a HubError that says what to do. */
  async check(response: Response, what: string, repoId: string, revision: string): Promise<void> {
    if (response.ok) return;
    const code = response.headers.get("x-error-code");
    const body = await response.text().catch(() => "");
    // Error pages can be long HTML; one short line is enough for a log.
    const detail = (response.headers.get("x-error-message") ?? body).replace(/\s+/g, " ").trim()
      .slice(0, 200);
    const suffix = detail ? ` (${detail})` : "";
    const status = `HTTP ${response.status}`;
    if (response.status === 401 || code === "GatedRepo" || response.status === 403) {
      throw new HubError(
        `${this.endpoint} refused access to ${repoId} (${status})${suffix}: ` +
          (this.#token
            ? "HF_TOKEN was sent; check that it can read this repo and that its terms are accepted"
            : "the repo may be private, gated or missing; set HF_TOKEN to a token that can read it"),
      );
    }
    if (response.status === 404) {
      if (code === "RevisionNotFound") {
        throw new HubError(`${repoId} has no revision "${revision}" (${status})${suffix}`);
      }
      throw new HubError(
        code === "EntryNotFound"
          ? `${repoId} has no file ${what} at ${revision} (${status})`
          : `${repoId} was not found at ${this.endpoint} (${status})${suffix}`,
      );
    }
    throw new HubError(`${this.endpoint} answered ${status} for ${what} of ${repoId}${suffix}`);
  }
}

interface FileJob {
  name: string;
  /** The blob name: the LFS sha256, or the git blob id of a small file. */
  etag: string;
  size?: number;
  /** LFS files: the content's sha256. */
  sha256?: string;
  /** Small files: git's blob id, sha1("blob <size>\0" + content). */
  gitOid?: string;
}

/** Streams a response body into the .incomplete file, hashing as it goes. */
async function appendBody(
  response: Response,
  path: string,
  hashes: Hash[],
  progress: (written: number) => void,
): Promise<void> {
  const file = await Deno.open(path, { append: true, create: true });
  try {
    for await (const chunk of response.body!) {
      let offset = 0;
      while (offset < chunk.length) offset += await file.write(chunk.subarray(offset));
      for (const hash of hashes) hash.update(chunk);
      progress(chunk.length);
    }
  } finally {
    file.close();
  }
}

/** Feeds the bytes already on disk into the hashes (before resuming after them). */
async function hashExisting(path: string, hashes: Hash[]): Promise<void> {
  // The readable closes the file when it ends or is cancelled.
  const file = await Deno.open(path);
  for await (const chunk of file.readable) for (const hash of hashes) hash.update(chunk);
}

class Downloader {
  #client: HubClient;
  #repoId: string;
  #commit: string;
  #blobsDir: string;
  #options: DownloadOptions;
  #showProgress: boolean;
  progress: DownloadProgress = { doneBytes: 0, totalBytes: 0, lastLogAt: 0 };

  constructor(
    client: HubClient,
    repoId: string,
    commit: string,
    blobsDir: string,
    options: DownloadOptions,
  ) {
    this.#client = client;
    this.#repoId = repoId;
    this.#commit = commit;
    this.#blobsDir = blobsDir;
    this.#options = options;
    this.#showProgress = options.showProgress ?? Deno.stderr.isTerminal();
  }

  #url(name: string): string {
    return `${this.#client.endpoint}/${this.#repoId}/resolve/${this.#commit}/${encodePath(name)}`;
  }

  /** The plan for one file; asks the hub (HEAD) only when the file list lacked its blob id. */
  async plan(sibling: Sibling): Promise<FileJob> {
    const name = sibling.rfilename;
    if (sibling.lfs) {
      return { name, etag: sibling.lfs.sha256, size: sibling.lfs.size, sha256: sibling.lfs.sha256 };
    }
    if (sibling.blobId) {
      return { name, etag: sibling.blobId, size: sibling.size, gitOid: sibling.blobId };
    }
    const { response, hubHeaders } = await this.#client.fetch(this.#url(name), { method: "HEAD" });
    await this.#client.check(response, name, this.#repoId, this.#commit);
    const etag = normalizeEtag(hubHeaders.get("x-linked-etag") ?? hubHeaders.get("etag"));
    if (etag === undefined) throw new HubError(`${this.#url(name)} has no ETag to name its blob`);
    const size = Number(hubHeaders.get("x-linked-size") ?? response.headers.get("content-length"));
    return {
      name,
      etag,
      size: Number.isFinite(size) && size > 0 ? size : undefined,
      sha256: /^[0-9a-f]{64}$/.test(etag) ? etag : undefined,
    };
  }

  /** Makes blobs/<etag> exist and hold the verified file; resumes a partial download. */
  async fetchBlob(job: FileJob): Promise<void> {
    const blob = `${this.#blobsDir}/${job.etag}`;
    const existing = await fileSize(blob);
    if (existing !== undefined && (job.size === undefined || existing === job.size)) return;
    const incomplete = `${blob}.incomplete`;
    const maxRetries = this.#options.maxRetries ?? 5;
    for (let attempt = 0;; attempt++) {
      try {
        await this.#download(job, incomplete);
        break;
      } catch (error) {
        if (error instanceof HubError || attempt >= maxRetries) {
          if (error instanceof HubError) throw error;
          throw new HubError(
            `Downloading ${job.name} of ${this.#repoId} failed after ${attempt + 1} attempts: ${
              (error as Error).message
            }`,
            { cause: error },
          );
        }
        this.#options.log?.(
          `download of ${job.name} interrupted (${(error as Error).message}); resuming`,
        );
        await new Promise((r) =>
          setTimeout(r, (this.#options.retryDelayMs ?? 1000) * 2 ** attempt)
        );
      }
    }
    await Deno.rename(incomplete, blob);
  }

  async #download(job: FileJob, incomplete: string): Promise<void> {
    let offset = (await fileSize(incomplete)) ?? 0;
    if (job.size !== undefined && offset > job.size) {
      await Deno.remove(incomplete);
      offset = 0;
    }
    const headers: Record<string, string> = { "accept-encoding": "identity" };
    if (offset > 0) headers.range = `bytes=${offset}-`;
    const { response } = await this.#client.fetch(this.#url(job.name), { headers });
    if (response.status === 416) {
      // Our partial file is not a prefix the server can continue: start over.
      await response.body?.cancel();
      await Deno.remove(incomplete);
      throw new Error("the server refused the resume range");
    }
    await this.#client.check(response, job.name, this.#repoId, this.#commit);
    if (offset > 0 && response.status !== 206) {
      // The server ignored Range and sends the whole file.
      await Deno.truncate(incomplete, 0);
      offset = 0;
    } else if (offset > 0) {
      const start = Number(/^bytes (\d+)-/.exec(response.headers.get("content-range") ?? "")?.[1]);
      if (start !== offset) {
        await response.body?.cancel();
        await Deno.remove(incomplete);
        throw new Error(`the server resumed at byte ${start}, not ${offset}`);
      }
    }
    const sha256 = job.sha256 ? createHash("sha256") : undefined;
    const sha1 = job.gitOid ? createHash("sha1") : undefined;
    if (sha1) sha1.update(`blob ${job.size ?? 0}\0`);
    const hashes = [sha256, sha1].filter((h) => h !== undefined);
    if (offset > 0) await hashExisting(incomplete, hashes);
    const contentLength = Number(response.headers.get("content-length"));
    const total = job.size ?? (Number.isFinite(contentLength) ? offset + contentLength : undefined);
    let written = offset;
    let lastDraw = 0;
    const encoder = new TextEncoder();
    const draw = (final: boolean) => {
      if (!this.#showProgress) return;
      const now = performance.now();
      if (!final && now - lastDraw < 100) return;
      lastDraw = now;
      const percent = total ? ` ${Math.floor((100 * written) / Math.max(total, 1))}%` : "";
      Deno.stderr.writeSync(encoder.encode(
        `\rdownloading ${job.name}${percent} (${formatMb(written)}${
          total ? `/${formatMb(total)}` : ""
        } MB)${final ? "\n" : ""}`,
      ));
    };
    if (offset > 0) this.#options.log?.(`resuming ${job.name} at byte ${offset}`);
    const interval = this.#options.progressIntervalMs ?? 5000;
    const base = this.progress.doneBytes - offset;
    await appendBody(response, incomplete, hashes, (n) => {
      written += n;
      draw(false);
      const now = performance.now();
      if (now - this.progress.lastLogAt < interval) return;
      this.progress.lastLogAt = now;
      const done = base + written;
      const totalBytes = this.progress.totalBytes;
      this.#options.log?.(
        `downloading ${job.name}: ${formatMb(done)}/${formatMb(totalBytes)} MB` +
          (totalBytes > 0 ? ` (${Math.floor((100 * done) / totalBytes)}%)` : ""),
        { file: job.name, done_bytes: done, total_bytes: totalBytes },
      );
    });
    draw(true);
    await this.#verify(job, incomplete, written, sha256, sha1);
  }

  async #verify(
    job: FileJob,
    path: string,
    written: number,
    sha256: Hash | undefined,
    sha1: Hash | undefined,
  ): Promise<void> {
    const fail = async (detail: string): Promise<never> => {
      await Deno.remove(path).catch(() => {});
      throw new HubError(`${job.name} of ${this.#repoId} is corrupt: ${detail}; deleted it`);
    };
    if (job.size !== undefined && written !== job.size) {
      // A short body is a dropped connection (retried); a long one is a wrong file.
      if (written < job.size) throw new Error(`got ${written} of ${job.size} bytes`);
      await fail(`expected ${job.size} bytes, got ${written}`);
    }
    const sha256Hex = sha256?.digest("hex");
    if (job.sha256 && sha256Hex !== job.sha256) {
      await fail(`sha256 is ${sha256Hex}, expected ${job.sha256}`);
    }
    const oid = sha1?.digest("hex");
    if (job.gitOid && job.size !== undefined && oid !== job.gitOid) {
      await fail(`git blob id is ${oid}, expected ${job.gitOid}`);
    }
  }
}

/** Links snapshots/<commit>/<name> → ../../blobs/<etag>, as huggingface_hub does. */
async function linkIntoSnapshot(snapshotDir: string, name: string, etag: string): Promise<void> {
  const link = `${snapshotDir}/${name}`;
  const depth = name.split("/").length - 1;
  await Deno.mkdir(link.slice(0, link.lastIndexOf("/")), { recursive: true });
  await Deno.remove(link).catch(() => {});
  await Deno.symlink(`${"../".repeat(depth + 2)}blobs/${etag}`, link);
}

/**
 * Returns a complete local snapshot of a model repo, downloading what is missing. A revision whose
 * ref is already cached is used as is, without any request.
 */
export async function downloadSnapshot(
  repoId: string,
  options: DownloadOptions,
): Promise<Snapshot> {
  parseRepoRef(repoId);
  const env = options.env ?? Deno.env.toObject();
  const revision = options.revision ?? "main";
  const repoDir = `${options.cacheDir.replace(/\/+$/, "")}/${repoFolderName(repoId)}`;

  const cached = await cachedSnapshot(repoDir, revision, options.file);
  if (cached) return { repoId, ...cached, isCached: true };
  if (["1", "true", "yes", "on"].includes((env.HF_HUB_OFFLINE ?? "").toLowerCase())) {
    throw new HubError(
      `HF_HUB_OFFLINE is set and ${repoId}@${revision} is not in the cache ${options.cacheDir}`,
    );
  }

  const client = new HubClient(env.HF_ENDPOINT || "https://huggingface.co", env.HF_TOKEN);
  const infoUrl = `${client.endpoint}/api/models/${repoId}/revision/${
    encodeURIComponent(revision)
  }?blobs=true`;
  const { response } = await client.fetch(infoUrl);
  await client.check(response, "the file list", repoId, revision);
  const parsed = repoInfoSchema.safeParse(await response.json().catch(() => undefined));
  if (!parsed.success) {
    throw new HubError(
      `${infoUrl} returned an unexpected file list: ${parsed.error.issues[0].message}`,
    );
  }
  const commit = parsed.data.sha;
  const { files, weightsFile } = selectFiles(
    repoId,
    parsed.data.siblings,
    options.file,
    options.skipWeights,
  );

  const blobsDir = `${repoDir}/blobs`;
  const snapshotDir = `${repoDir}/snapshots/${commit}`;
  await Deno.mkdir(blobsDir, { recursive: true });
  const downloader = new Downloader(client, repoId, commit, blobsDir, options);
  const totalBytes = files.reduce((sum, f) => sum + (f.lfs?.size ?? f.size ?? 0), 0);
  options.log?.(
    `downloading ${repoId}@${revision} (commit ${commit}): ${files.length} files, ` +
      `${formatMb(totalBytes)} MB into ${repoDir}${options.skipWeights ? " (no weights)" : ""}`,
    { repo: repoId, commit, files: files.length, done_bytes: 0, total_bytes: totalBytes },
  );
  const jobs: FileJob[] = [];
  const progress = downloader.progress;
  progress.totalBytes = totalBytes;
  progress.lastLogAt = performance.now();
  for (const sibling of files) {
    const job = await downloader.plan(sibling);
    await downloader.fetchBlob(job);
    jobs.push(job);
    progress.doneBytes += job.size ?? (await fileSize(`${blobsDir}/${job.etag}`)) ?? 0;
    options.log?.(
      `downloaded ${job.name} (${jobs.length}/${files.length} files, ` +
        `${formatMb(progress.doneBytes)}/${formatMb(totalBytes)} MB)`,
      { file: job.name, done_bytes: progress.doneBytes, total_bytes: totalBytes },
    );
  }
  // Links and the ref come last, so a ref always names a complete snapshot.
  await Deno.mkdir(snapshotDir, { recursive: true });
  for (const job of jobs) await linkIntoSnapshot(snapshotDir, job.name, job.etag);
  if (revision !== commit && !options.skipWeights) {
    const ref = `${repoDir}/refs/${revision}`;
    await Deno.mkdir(ref.slice(0, ref.lastIndexOf("/")), { recursive: true });
    await Deno.writeTextFile(ref, commit);
  }
  return {
    repoId,
    commit,
    dir: snapshotDir,
    modelPath: weightsFile?.endsWith(".gguf") ? `${snapshotDir}/${weightsFile}` : snapshotDir,
    isCached: false,
  };
}
