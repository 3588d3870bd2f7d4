/**
 * A growable output buffer for rewriting a module in one pass. Runs of unchanged input are copied
 * with `Buffer.copy` (no view object per run: a module of tens of MiB has millions of calls whose
 * index changes, each ending a run), and a size that is only known after its contents are written
 * is reserved as five bytes and then shrunk to its minimal LEB128 in place.
 */
export class ByteWriter {
  private buf: Buffer;
  length = 0;

  constructor(capacity: number) {
    this.buf = Buffer.allocUnsafeSlow(Math.max(64, capacity));
  }

  private room(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = Buffer.allocUnsafeSlow(Math.max(this.buf.length * 2, this.length + n));
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }

  byte(value: number): void {
    this.room(1);
    this.buf[this.length++] = value;
  }

  /** Unsigned LEB128, written in place (memory-limit's `writeU32` builds an array per number). */
  u32(value: number): void {
    this.room(5);
    do {
      let byte = value & 0x7f;
      value = Math.floor(value / 128);
      if (value !== 0) byte |= 0x80;
      this.buf[this.length++] = byte;
    } while (value !== 0);
  }

  /** Copies `src[from, to)`. */
  copy(src: Buffer, from: number, to: number): void {
    const n = to - from;
    if (n <= 0) return;
    this.room(n);
    if (n < 16) {
      // A call to Buffer.copy costs more than a few byte moves.
      for (let i = 0; i < n; i++) this.buf[this.length + i] = src[from + i]!;
    } else src.copy(this.buf, this.length, from, to);
    this.length += n;
  }

  bytes(src: Uint8Array): void {
    this.room(src.length);
    this.buf.set(src, this.length);
    this.length += src.length;
  }

  /** Reserves room for a size that precedes contents not written yet; pass the result to `endSize`. */
  beginSize(): number {
    this.room(5);
    this.length += 5;
    return this.length - 5;
  }

  /** Starts a section whose entries are written next: its id, a reserved size, its entry count. */
  beginSection(id: number, count: number): number {
    this.byte(id);
    const at = this.beginSize();
    this.u32(count);
    return at;
  }

  /** Writes the size of everything after the reservation and closes the gap the reservation left. */
  endSize(at: number): void {
    const start = at + 5;
    let size = this.length - start;
    let p = at;
    do {
      let byte = size & 0x7f;
      size = Math.floor(size / 128);
      if (size !== 0) byte |= 0x80;
      this.buf[p++] = byte;
    } while (size !== 0);
    if (p < start) {
      this.buf.copyWithin(p, start, this.length);
      this.length -= start - p;
    }
  }

  /** The bytes written so far, as a view (no copy); its buffer is never a pooled or shared one. */
  result(): Uint8Array<ArrayBuffer> {
    return new Uint8Array(this.buf.buffer as ArrayBuffer, this.buf.byteOffset, this.length);
  }
}
