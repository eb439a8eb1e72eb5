// GPT-2's byte-level alphabet: each of the 256 byte values as one printable Unicode character.

function buildByteToChar(): string[] {
  const table: string[] = new Array(256);
  const printable = (b: number) =>
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let next = 256;
  for (let b = 0; b < 256; b++) table[b] = String.fromCharCode(printable(b) ? b : next++);
  return table;
}

/** `BYTE_TO_CHAR[b]` is the character that stands for byte `b` in byte-level BPE vocabularies. */
export const BYTE_TO_CHAR: readonly string[] = buildByteToChar();

const CHAR_TO_BYTE = new Map(BYTE_TO_CHAR.map((ch, b) => [ch, b]));
const encoder = new TextEncoder();

/** Maps the UTF-8 bytes of `text` to byte-level characters (" hi" → "Ġhi"). */
export function byteLevelEncode(text: string): string {
  let out = "";
  for (const b of encoder.encode(text)) out += BYTE_TO_CHAR[b];
  return out;
}

/**
 * Maps a byte-level token string back to its bytes. A character outside the alphabet (only
 * in malformed vocabularies) contributes its own UTF-8 bytes.
 */
export function byteLevelDecode(token: string): Uint8Array {
  const bytes: number[] = [];
  for (const ch of token) {
    const b = CHAR_TO_BYTE.get(ch);
    if (b !== undefined) bytes.push(b);
    else bytes.push(...encoder.encode(ch));
  }
  return new Uint8Array(bytes);
}
