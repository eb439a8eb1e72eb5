// Pre-tokenizers of byte-level BPE models, ported from llama.cpp (llama-vocab.cpp, unicode.cpp).

// llama.cpp's hand-written splitters (unicode_regex_split_custom_*) replace std::regex for the
// common patterns; these ports keep their exact behaviour, which is what GGUF models get.
// Character classes come from JS Unicode properties; llama.cpp's tables may be a different
// Unicode version, so very recently assigned code points can be classified differently.

const FLAG_LETTER = 1;
const FLAG_NUMBER = 2;
const FLAG_WHITESPACE = 4;
const FLAG_KNOWN = 128;

// llama.cpp's unicode_set_whitespace (White_Space): unlike JS `\s` it has U+0085 and no U+FEFF.
// deno-fmt-ignore
const WHITESPACE = new Set([
  0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003,
  0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f,
  0x3000,
]);
const LETTER_RE = /\p{L}/u;
const NUMBER_RE = /\p{N}/u;
const flagCache = new Map<number, number>();

function cptFlags(cp: number): number {
  let flags = cp < 0x80 ? asciiFlags[cp] : flagCache.get(cp);
  if (flags === undefined) {
    const ch = String.fromCodePoint(cp);
    flags = FLAG_KNOWN | (LETTER_RE.test(ch) ? FLAG_LETTER : 0) |
      (NUMBER_RE.test(ch) ? FLAG_NUMBER : 0) | (WHITESPACE.has(cp) ? FLAG_WHITESPACE : 0);
    flagCache.set(cp, flags);
  }
  return flags;
}
const asciiFlags: number[] = [];
for (let cp = 0; cp < 0x80; cp++) {
  const ch = String.fromCharCode(cp);
  asciiFlags.push(
    FLAG_KNOWN | (/[A-Za-z]/.test(ch) ? FLAG_LETTER : 0) | (/[0-9]/.test(ch) ? FLAG_NUMBER : 0) |
      (WHITESPACE.has(cp) ? FLAG_WHITESPACE : 0),
  );
}

function cptsToString(cpts: number[], start: number, end: number): string {
  let text = "";
  for (let i = start; i < end; i += 4096) {
    text += String.fromCodePoint(...cpts.slice(i, Math.min(end, i + 4096)));
  }
  return text;
}

function toLower(cp: number): number {
  return String.fromCodePoint(cp).toLowerCase().codePointAt(0)!;
}

/** Splits one segment [ini, end) of `cpts` into word lengths; pushes them to `out`. */
type Splitter = (cpts: number[], ini: number, end: number, out: number[]) => void;

type Variant = "gpt2" | "llama3" | "qwen2";

function customSplitter(variant: Variant): Splitter {
  return (cpts, ini, end, out) => {
    const OUT = -1;
    const cptAt = (pos: number) => (pos >= ini && pos < end ? cpts[pos] : OUT);
    const flagsAt = (pos: number) => (pos >= ini && pos < end ? cptFlags(cpts[pos]) : 0);
    let prevEnd = ini;
    const addToken = (tokenEnd: number) => {
      const len = tokenEnd - prevEnd;
      if (len > 0) out.push(len);
      prevEnd = tokenEnd;
      return len;
    };
    const lower = variant === "gpt2" ? (cp: number) => cp : toLower;
    const isWordChar = (f: number) => (f & (FLAG_WHITESPACE | FLAG_LETTER | FLAG_NUMBER)) !== 0;

    for (let pos = ini; pos < end;) {
      const cpt = cptAt(pos);
      const flags = flagsAt(pos);

      // 's|'t|'re|'ve|'m|'ll|'d (case-insensitive except for gpt2)
      if (cpt === 0x27 && pos + 1 < end) {
        const next = lower(cptAt(pos + 1));
        if (next === 0x73 || next === 0x74 || next === 0x6d || next === 0x64) {
          pos += addToken(pos + 2);
          continue;
        }
        if (pos + 2 < end) {
          const nextNext = lower(cptAt(pos + 2));
          if (
            (next === 0x72 && nextNext === 0x65) || (next === 0x76 && nextNext === 0x65) ||
            (next === 0x6c && nextNext === 0x6c)
          ) {
            pos += addToken(pos + 3);
            continue;
          }
        }
      }

      if (variant === "gpt2") {
        let flags2 = cpt === 0x20 ? flagsAt(pos + 1) : flags;
        // <space>?\p{L}+ and <space>?\p{N}+
        const run = flags2 & FLAG_LETTER || flags2 & FLAG_NUMBER;
        if (run) {
          pos += cpt === 0x20 ? 1 : 0;
          while (flags2 & run) flags2 = flagsAt(++pos);
          addToken(pos);
          continue;
        }
        // <space>?[^\s\p{L}\p{N}]+
        if (!isWordChar(flags2) && flags2 !== 0) {
          pos += cpt === 0x20 ? 1 : 0;
          while (!isWordChar(flags2) && flags2 !== 0) flags2 = flagsAt(++pos);
          addToken(pos);
          continue;
        }
        let numWhitespaces = 0;
        while (flagsAt(pos + numWhitespaces) & FLAG_WHITESPACE) numWhitespaces++;
        // \s+(?!\S)
        if (numWhitespaces > 1 && cptAt(pos + numWhitespaces) !== OUT) {
          pos += numWhitespaces - 1;
          addToken(pos);
          continue;
        }
        // \s+
        if (numWhitespaces > 0) {
          pos += numWhitespaces;
          addToken(pos);
          continue;
        }
        addToken(++pos);
        continue;
      }

      // [^\r\n\p{L}\p{N}]?\p{L}+
      if (!(cpt === 0x0d || cpt === 0x0a || (flags & FLAG_NUMBER))) {
        if ((flags & FLAG_LETTER) || (flagsAt(pos + 1) & FLAG_LETTER)) {
          pos++;
          while (flagsAt(pos) & FLAG_LETTER) pos++;
          addToken(pos);
          continue;
        }
      }
      // \p{N}{1,3} (llama3) or \p{N} (qwen2)
      if (flags & FLAG_NUMBER) {
        if (variant === "qwen2") {
          addToken(++pos);
          continue;
        }
        let runStart = pos;
        while (flagsAt(pos) & FLAG_NUMBER) {
          if (++pos - runStart >= 3) {
            addToken(pos);
            runStart = pos;
          }
        }
        addToken(pos);
        continue;
      }
      // <space>?[^\s\p{L}\p{N}]+[\r\n]*
      let flags2 = cpt === 0x20 ? flagsAt(pos + 1) : flags;
      if (!isWordChar(flags2) && flags !== 0) {
        pos += cpt === 0x20 ? 1 : 0;
        while (!isWordChar(flags2) && flags2 !== 0) flags2 = flagsAt(++pos);
        let cpt2 = cptAt(pos);
        while (cpt2 === 0x0d || cpt2 === 0x0a) cpt2 = cptAt(++pos);
        addToken(pos);
        continue;
      }
      let numWhitespaces = 0;
      let lastEndRN = 0;
      while (flagsAt(pos + numWhitespaces) & FLAG_WHITESPACE) {
        const cpt2 = cptAt(pos + numWhitespaces);
        if (cpt2 === 0x0d || cpt2 === 0x0a) lastEndRN = pos + numWhitespaces + 1;
        numWhitespaces++;
      }
      // \s*[\r\n]+
      if (lastEndRN > 0) {
        pos = lastEndRN;
        addToken(pos);
        continue;
      }
      // \s+(?!\S)
      if (numWhitespaces > 1 && cptAt(pos + numWhitespaces) !== OUT) {
        pos += numWhitespaces - 1;
        addToken(pos);
        continue;
      }
      // \s+
      if (numWhitespaces > 0) {
        pos += numWhitespaces;
        addToken(pos);
        continue;
      }
      addToken(++pos);
    }
  };
}

/**
 * A std::regex split step (unicode_regex_split_stl): every match and every gap between matches
 * becomes its own word. `re` must use the `u` and `g` flags and match over code points.
 */
function regexSplitter(re: RegExp): Splitter {
  return (cpts, ini, end, out) => {
    const segment = cptsToString(cpts, ini, end);
    // Match positions are UTF-16 offsets; map them back to code point counts.
    const cpIndex = new Int32Array(segment.length + 1);
    for (let i = 0, cp = 0; i <= segment.length; i++) {
      cpIndex[i] = cp;
      const unit = segment.charCodeAt(i);
      if (!(unit >= 0xd800 && unit <= 0xdbff && i + 1 < segment.length)) cp++;
    }
    let last = 0;
    for (const match of segment.matchAll(re)) {
      if (match[0].length === 0) continue;
      const start = cpIndex[match.index];
      const stop = cpIndex[match.index + match[0].length];
      if (start > last) out.push(start - last);
      out.push(stop - start);
      last = stop;
    }
    if (last < end - ini) out.push(end - ini - last);
  };
}

const GPT2 = customSplitter("gpt2");
const LLAMA3 = customSplitter("llama3");
const QWEN2 = customSplitter("qwen2");

/** Pre-tokenizer names (GGUF `tokenizer.ggml.pre`) mapped to llama.cpp's split steps. */
const PRE_TOKENIZERS: Record<string, readonly Splitter[]> = {
  default: [
    regexSplitter(/[\p{P}$+<=>^~|]+/gu),
    GPT2,
    regexSplitter(/\p{N}+/gu),
    regexSplitter(/[0-9][0-9][0-9]/gu),
  ],
  "llama-bpe": [LLAMA3],
  llama3: [LLAMA3],
  "llama-v3": [LLAMA3],
  dbrx: [LLAMA3],
  "smaug-bpe": [LLAMA3],
  qwen2: [QWEN2],
  "deepseek-r1-qwen": [QWEN2],
  stablelm2: [QWEN2],
  megrez: [QWEN2],
  smollm: [regexSplitter(/\p{N}/gu), GPT2],
  starcoder: [regexSplitter(/\p{N}/gu), GPT2],
  refact: [regexSplitter(/\p{N}/gu), GPT2],
  "command-r": [regexSplitter(/\p{N}/gu), GPT2],
  "gpt-2": [GPT2],
  "phi-2": [GPT2],
  mpt: [GPT2],
  olmo: [GPT2],
  "roberta-bpe": [GPT2],
};

/** Pre-tokenizer names this module supports. */
export const SUPPORTED_PRE_TOKENIZERS: readonly string[] = Object.keys(PRE_TOKENIZERS);

/** True when {@link preTokenizer} supports `name`. */
export function hasPreTokenizer(name: string): boolean {
  return Object.hasOwn(PRE_TOKENIZERS, name);
}

/** Returns a function that splits text into words the way llama.cpp's pre-tokenizer `name` does. */
export function preTokenizer(name: string): (text: string) => string[] {
  if (!hasPreTokenizer(name)) {
    throw new RangeError(
      `Unsupported pre-tokenizer "${name}"; expected one of: ${
        SUPPORTED_PRE_TOKENIZERS.join(", ")
      }`,
    );
  }
  const steps = PRE_TOKENIZERS[name];
  return (text) => {
    const cpts = Array.from(text, (ch) => ch.codePointAt(0)!);
    let lengths = [cpts.length];
    for (const step of steps) {
      const next: number[] = [];
      let start = 0;
      for (const len of lengths) {
        step(cpts, start, start + len, next);
        start += len;
      }
      lengths = next;
    }
    const words: string[] = [];
    let start = 0;
    for (const len of lengths) {
      words.push(cptsToString(cpts, start, start + len));
      start += len;
    }
    return words;
  };
}
