/**
 * Assembles a real WASI command that writes `stdout` (CGI headers, a blank line, a body) and
 * exits: tests use it to make a WAGI function answer exactly what a hostile function would.
 */
export function wagiModule(stdout: string): Uint8Array {
  const payload = Buffer.from(stdout, "latin1");
  const uleb = (n: number): number[] => {
    const out: number[] = [];
    do {
      let byte = n & 0x7f;
      n >>>= 7;
      if (n !== 0) byte |= 0x80;
      out.push(byte);
    } while (n !== 0);
    return out;
  };
  const name = (s: string) => [...uleb(s.length), ...Buffer.from(s)];
  const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];
  const vector = (items: number[][]) => [...uleb(items.length), ...items.flat()];
  const u32 = (n: number) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24];
  const i32 = 0x7f;
  // Memory: an iovec at 0 pointing at the payload at 16; fd_write stores the count at 8.
  const data = [...u32(16), ...u32(payload.length), ...u32(0), ...u32(0), ...payload];
  const pages = Math.ceil(data.length / 65536);
  const start = [
    0x00, // no locals
    0x41,
    1, // i32.const 1 (stdout)
    0x41,
    0, // i32.const 0 (iovs)
    0x41,
    1, // i32.const 1 (one iovec)
    0x41,
    8, // i32.const 8 (where the count goes)
    0x10,
    0, // call fd_write
    0x1a, // drop the errno
    0x0b, // end
  ];
  return Uint8Array.from([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(
      1,
      vector([
        [0x60, 4, i32, i32, i32, i32, 1, i32],
        [0x60, 0, 0],
      ]),
    ),
    ...section(2, vector([[...name("wasi_snapshot_preview1"), ...name("fd_write"), 0x00, 0]])),
    ...section(3, vector([[1]])),
    ...section(5, vector([[0x00, ...uleb(pages)]])),
    ...section(
      7,
      vector([
        [...name("memory"), 0x02, 0],
        [...name("_start"), 0x00, 1],
      ]),
    ),
    ...section(10, vector([[...uleb(start.length), ...start]])),
    ...section(11, vector([[0x00, 0x41, 0, 0x0b, ...uleb(data.length), ...data]])),
  ]);
}
