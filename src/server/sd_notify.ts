// systemd's sd_notify protocol (READY=1, STOPPING=1, STATUS=…): one datagram to the AF_UNIX socket
// named by NOTIFY_SOCKET, sent through libc by FFI. A no-op when NOTIFY_SOCKET is unset.

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const MSG_NOSIGNAL = 0x4000;
/** sizeof(sockaddr_un): a 2-byte family then 108 bytes of path. */
const SOCKADDR_UN_SIZE = 110;
const SUN_PATH_OFFSET = 2;

const LIBC_SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  sendto: {
    parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"],
    result: "isize",
  },
  close: { parameters: ["i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

type Libc = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>;

/** The last libc error as "strerror (errno N)". */
function lastErrno(libc: Libc): string {
  const errno = new Deno.UnsafePointerView(libc.symbols.__errno_location()!).getInt32();
  const text = Deno.UnsafePointerView.getCString(libc.symbols.strerror(errno)!);
  return `${text} (errno ${errno})`;
}

/**
 * A `sockaddr_un` for a NOTIFY_SOCKET value: a filesystem path, or `@name` for the abstract
 * namespace (a leading NUL byte and no terminator). Returns the bytes and the address length.
 */
export function sockaddrUn(address: string): { bytes: Uint8Array; length: number } {
  const isAbstract = address.startsWith("@");
  const path = new TextEncoder().encode(isAbstract ? address.slice(1) : address);
  // Abstract names start with a NUL; filesystem paths end with one.
  const pathBytes = path.length + 1;
  if (pathBytes > SOCKADDR_UN_SIZE - SUN_PATH_OFFSET) {
    throw new RangeError(
      `Socket address ${JSON.stringify(address)} is ${path.length} bytes, longer than sun_path`,
    );
  }
  const bytes = new Uint8Array(SOCKADDR_UN_SIZE);
  new DataView(bytes.buffer).setUint16(0, AF_UNIX, true);
  bytes.set(path, SUN_PATH_OFFSET + (isAbstract ? 1 : 0));
  return { bytes, length: SUN_PATH_OFFSET + pathBytes };
}

/** Sends one datagram to a Unix socket address; throws Error naming the address on failure. */
export function sendDatagram(address: string, message: string): void {
  // Opened per message: notifications are rare, and nothing stays mapped between them.
  const libc: Libc = Deno.dlopen("libc.so.6", LIBC_SYMBOLS);
  const fd = libc.symbols.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  try {
    if (fd < 0) throw new Error(`socket(AF_UNIX) failed: ${lastErrno(libc)}`);
    const { bytes, length } = sockaddrUn(address);
    const payload = new TextEncoder().encode(message);
    const sent = libc.symbols.sendto(
      fd,
      payload,
      BigInt(payload.length),
      MSG_NOSIGNAL,
      bytes,
      length,
    );
    if (Number(sent) < 0) throw new Error(`sendto(${address}) failed: ${lastErrno(libc)}`);
  } finally {
    if (fd >= 0) libc.symbols.close(fd);
    libc.close();
  }
}

/**
 * Tells the service manager about a state change, e.g. `notify("READY=1", "STATUS=Serving")`.
 * Returns false when not run under systemd (NOTIFY_SOCKET unset) or not on Linux.
 */
export function notify(...assignments: string[]): boolean {
  const address = Deno.env.get("NOTIFY_SOCKET");
  if (!address || Deno.build.os !== "linux") return false;
  const bad = assignments.find((a) => !/^[A-Z_]+=[^\n]*$/.test(a));
  if (bad !== undefined) {
    throw new TypeError(`Expected a KEY=VALUE line without newlines, got ${JSON.stringify(bad)}`);
  }
  sendDatagram(address, assignments.join("\n"));
  return true;
}
