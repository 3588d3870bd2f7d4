import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { limitMemory } from "../../src/sandbox/drivers/wasm/memory-limit.js";
import { checkInterface, moduleInterface } from "../../src/sandbox/drivers/wasm/module-interface.js";
import { parseWagiHead, wagiEnvironment, wagiHeadEnd } from "../../src/sandbox/drivers/wasm/wagi.js";
import { wagiModule } from "../helpers/wasm-writer.js";

// (module (memory 2) ) and (module (memory 1 100)) in binary form.
const MEM_NO_MAX = Uint8Array.from([0, 97, 115, 109, 1, 0, 0, 0, 5, 3, 1, 0, 2]);
const MEM_MAX_100 = Uint8Array.from([0, 97, 115, 109, 1, 0, 0, 0, 5, 4, 1, 1, 1, 100]);

describe("memory limit rewriting", () => {
  it("adds a maximum to a memory that has none", async () => {
    const { bytes, initialPages } = limitMemory(MEM_NO_MAX, 16, "t");
    assert.equal(initialPages, 2);
    const mod = await WebAssembly.compile(bytes as Uint8Array<ArrayBuffer>);
    assert.ok(WebAssembly.validate(bytes as Uint8Array<ArrayBuffer>));
    const inst = await WebAssembly.instantiate(mod);
    void inst;
    const mem = new WebAssembly.Memory({ initial: 2, maximum: 16 });
    assert.throws(() => mem.grow(15));
  });

  it("lowers a larger declared maximum and keeps a smaller one", () => {
    assert.deepEqual([...limitMemory(MEM_MAX_100, 16, "t").bytes.subarray(8)], [5, 4, 1, 1, 1, 16]);
    assert.deepEqual([...limitMemory(MEM_MAX_100, 1000, "t").bytes.subarray(8)], [5, 4, 1, 1, 1, 100]);
  });

  it("caps a module with a section of several MiB, copying every other byte unchanged", async () => {
    const module = wagiModule({ output: "tail", fillerBytes: 4 * 2 ** 20 });
    const { bytes, initialPages } = limitMemory(module, 1024, "t");
    assert.ok(initialPages > 64);
    assert.ok(WebAssembly.validate(bytes as Uint8Array<ArrayBuffer>));
    // Only the memory section grew (a maximum was added): the rest is byte for byte the same.
    assert.equal(bytes.byteLength, module.byteLength + 2);
    assert.ok(Buffer.from(bytes.subarray(-1000)).equals(Buffer.from(module.subarray(-1000))));
    const mod = await WebAssembly.compile(bytes as Uint8Array<ArrayBuffer>);
    assert.deepEqual(WebAssembly.Module.exports(mod), [
      { name: "memory", kind: "memory" },
      { name: "_start", kind: "function" },
    ]);
  });

  it("refuses a module whose initial memory exceeds the limit", () => {
    assert.throws(() => limitMemory(MEM_NO_MAX, 1, "t"), { code: "FN_BAD_MODULE" });
  });
});

describe("module interface, read without compiling", () => {
  it("lists the imports and exports WebAssembly.Module would", async () => {
    const module = wagiModule({ output: "x", fillerBytes: 1000 });
    const compiled = await WebAssembly.compile(module as Uint8Array<ArrayBuffer>);
    const parsed = moduleInterface(module, "t");
    assert.deepEqual(parsed.imports, WebAssembly.Module.imports(compiled));
    assert.deepEqual(parsed.exports, WebAssembly.Module.exports(compiled));
    checkInterface(parsed, "t");
  });

  it("refuses imports the sandbox does not grant and a missing _start", () => {
    assert.throws(
      () =>
        checkInterface(
          {
            imports: [{ module: "env", name: "open_socket", kind: "function" }],
            exports: [],
          },
          "t",
        ),
      /env\.open_socket/,
    );
    assert.throws(
      () => checkInterface({ imports: [], exports: [{ name: "memory", kind: "memory" }] }, "t"),
      /_start/,
    );
  });
});

describe("WAGI", () => {
  it("maps the request to CGI variables", () => {
    const env = wagiEnvironment(
      {
        method: "PUT",
        path: "/a/b",
        query: "x=1",
        headers: { "content-type": "text/plain", "x-trace-id": "t1" },
      },
      3,
      "/invoke/f",
      { EXTRA: "1" },
    );
    for (const v of [
      "REQUEST_METHOD=PUT",
      "PATH_INFO=/a/b",
      "QUERY_STRING=x=1",
      "CONTENT_TYPE=text/plain",
      "CONTENT_LENGTH=3",
      "HTTP_X_TRACE_ID=t1",
      "EXTRA=1",
    ]) {
      assert.ok(env.includes(v), v);
    }
  });

  /** The response for complete output, the way the driver splits it. */
  const parse = (out: string) => {
    const bytes = Buffer.from(out);
    const end = wagiHeadEnd(bytes, true)!;
    return { ...parseWagiHead(bytes.subarray(0, end)), body: bytes.subarray(end) };
  };

  it("parses CGI headers, Status and the body", () => {
    const r = parse("Status: 404 Not Found\r\nContent-Type: text/plain\r\nX-A: 1\r\n\r\nbody");
    assert.equal(r.status, 404);
    assert.deepEqual(r.headers, [
      ["content-type", "text/plain"],
      ["x-a", "1"],
    ]);
    assert.equal(Buffer.from(r.body).toString(), "body");
  });

  it("treats output without a header block as a 200 body", () => {
    const r = parse("just text\n\nmore");
    assert.equal(r.status, 200);
    assert.equal(Buffer.from(r.body).toString(), "just text\n\nmore");
    assert.equal(parse("unterminated").body.toString(), "unterminated");
    assert.equal(parse("\n\nbody").body.toString(), "\n\nbody");
  });

  it("redirects on Location without Status, and refuses a bad Status", () => {
    assert.equal(parse("Location: /x\n\n").status, 302);
    assert.throws(() => parse("Status: abc\n\n"), { code: "FN_BAD_RESPONSE" });
  });

  it("finds the end of the header block as soon as it is written, and no later", () => {
    const out = Buffer.from("Content-Type: text/event-stream\n\ndata: 1\n");
    // Part of a header line, then a whole header line: too early to tell.
    assert.equal(wagiHeadEnd(out.subarray(0, 10), false), undefined);
    assert.equal(wagiHeadEnd(out.subarray(0, 32), false), undefined);
    assert.equal(wagiHeadEnd(out.subarray(0, 33), false), 33);
    assert.equal(wagiHeadEnd(out, false), 33);
    // A first line that is no header decides at once: the output is all body.
    assert.equal(wagiHeadEnd(Buffer.from("hello world\nmore"), false), 0);
    // 64 KiB without a blank line: no header block.
    assert.equal(wagiHeadEnd(Buffer.alloc(64 * 1024, 0x41), false), 0);
  });
});
