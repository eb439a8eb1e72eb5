// sd_notify against real AF_UNIX datagram sockets (bound here through libc), filesystem and
// abstract addresses.
import assert from "node:assert/strict";
import { notify, sendDatagram, sockaddrUn } from "../src/server/sd_notify.ts";

const AF_UNIX = 1;
const SOCK_DGRAM = 2;

/** A bound datagram socket that collects what systemd would receive. */
class Receiver {
  #lib = Deno.dlopen(
    "libc.so.6",
    {
      socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
      bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
      recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize", nonblocking: true },
      close: { parameters: ["i32"], result: "i32" },
    } as const,
  );
  #fd: number;

  constructor(address: string) {
    this.#fd = this.#lib.symbols.socket(AF_UNIX, SOCK_DGRAM, 0);
    assert.ok(this.#fd >= 0, "socket() failed");
    const { bytes, length } = sockaddrUn(address);
    assert.equal(this.#lib.symbols.bind(this.#fd, bytes, length), 0, `bind(${address}) failed`);
  }

  /** The next datagram's bytes (waits for one). */
  async receive(): Promise<Uint8Array> {
    const buffer = new Uint8Array(4096);
    const n = Number(await this.#lib.symbols.recv(this.#fd, buffer, 4096n, 0));
    assert.ok(n >= 0, "recv() failed");
    return buffer.slice(0, n);
  }

  close(): void {
    this.#lib.symbols.close(this.#fd);
    this.#lib.close();
  }
}

function withNotifySocket<T>(value: string | undefined, fn: () => T): T {
  const saved = Deno.env.get("NOTIFY_SOCKET");
  if (value === undefined) Deno.env.delete("NOTIFY_SOCKET");
  else Deno.env.set("NOTIFY_SOCKET", value);
  try {
    return fn();
  } finally {
    if (saved === undefined) Deno.env.delete("NOTIFY_SOCKET");
    else Deno.env.set("NOTIFY_SOCKET", saved);
  }
}

Deno.test("sd_notify", async (t) => {
  await t.step("sockaddr_un layout for paths and abstract names", () => {
    const path = sockaddrUn("/run/x");
    assert.deepEqual([...path.bytes.slice(0, 2)], [AF_UNIX, 0]);
    assert.equal(new TextDecoder().decode(path.bytes.slice(2, 8)), "/run/x");
    assert.equal(path.bytes[8], 0);
    assert.equal(path.length, 2 + 6 + 1);
    const abstract = sockaddrUn("@name");
    assert.equal(abstract.bytes[2], 0);
    assert.equal(new TextDecoder().decode(abstract.bytes.slice(3, 7)), "name");
    assert.equal(abstract.length, 2 + 1 + 4);
    assert.throws(() => sockaddrUn(`/${"x".repeat(200)}`), RangeError);
  });

  await t.step("no-op without NOTIFY_SOCKET", () => {
    assert.equal(withNotifySocket(undefined, () => notify("READY=1")), false);
  });

  await t.step("READY, STATUS and STOPPING reach a filesystem socket", async () => {
    const dir = await Deno.makeTempDir({ prefix: "denollm-notify-" });
    const address = `${dir}/notify.sock`;
    const receiver = new Receiver(address);
    try {
      assert.equal(withNotifySocket(address, () => notify("READY=1", "STATUS=Serving m")), true);
      assert.equal(new TextDecoder().decode(await receiver.receive()), "READY=1\nSTATUS=Serving m");
      withNotifySocket(address, () => notify("STOPPING=1"));
      assert.deepEqual(await receiver.receive(), new TextEncoder().encode("STOPPING=1"));
    } finally {
      receiver.close();
      await Deno.remove(dir, { recursive: true });
    }
  });

  await t.step("abstract namespace address", async () => {
    const address = `@denollm-test-${Deno.pid}-${crypto.randomUUID()}`;
    const receiver = new Receiver(address);
    try {
      withNotifySocket(address, () => notify("READY=1"));
      assert.equal(new TextDecoder().decode(await receiver.receive()), "READY=1");
    } finally {
      receiver.close();
    }
  });

  await t.step("bad lines and missing sockets are errors", () => {
    assert.throws(
      () => withNotifySocket("@x", () => notify("STATUS=a\nb")),
      TypeError,
    );
    assert.throws(
      () => sendDatagram("/nonexistent/denollm.sock", "READY=1"),
      /sendto\(\/nonexistent\/denollm.sock\) failed: No such file or directory/,
    );
  });
});
