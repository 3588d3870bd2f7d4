/**
 * Rewrites a module so the gateway can run it on its own thread and reuse its instance:
 *
 * - **Fuel** (like wasmtime's): JavaScript cannot interrupt wasm running on its own thread, so the
 *   module is made to call the host now and then. A mutable i32 global (`fennec:fuel`) is counted
 *   down at every function entry and every loop head, the only places where execution can go on
 *   without bound; when it is used up the module calls the import `fennec.tick`, which returns new
 *   fuel or throws to stop the module. Initial fuel is 0, so the first entry ticks at once.
 * - **Exported globals**: every mutable global the module defines (clang's `__stack_pointer` among
 *   them) is also exported as `fennec:global:<index>`, so the host can read its value after
 *   instantiation and set it back later; with linear memory copied back, that resets an instance
 *   to its just-instantiated state (as Faasm's proto-Faaslets are restored).
 *
 * Adding the tick import shifts every defined function's index by one, so every reference to one is
 * renumbered (calls, `ref.func` in code and constant expressions, element segments, exports, the
 * start function) and the `name` section, which would name the wrong functions, is dropped. One
 * linear pass; unchanged runs of bytes are copied, never expanded into arrays.
 */
import { ByteWriter } from "./byte-writer.js";
import { writeU32 } from "./memory-limit.js";
import { UnsupportedModuleError, WasmReader } from "./wasm-reader.js";

export interface InstrumentOptions {
  /** Add fuel counting and the `fennec.tick` import (for the gateway's thread; executors need none). */
  readonly fuel: boolean;
}

export interface InstrumentedModule {
  /** A view on a buffer that may be somewhat larger (copy it to keep it long without the slack). */
  readonly bytes: Uint8Array<ArrayBuffer>;
  /** Export names of the module's own (defined) mutable globals, in global-index order ("fennec:global:<index>"). */
  readonly globals: readonly string[];
  /**
   * True when the code can change instance state beyond memory and globals that a reset must
   * restore: table.set/grow/fill/copy/init, elem.drop, memory.init/data.drop, an exported table,
   * an imported table, memory or mutable global, or a mutable v128 global (JavaScript cannot read
   * one). A caller then never reuses an instance of it.
   */
  readonly statefulBeyondMemory: boolean;
}

/** The import a fuelled module calls when its fuel is used up: `() -> i32`, the new fuel. */
export const TICK_IMPORT = { module: "fennec", name: "tick" } as const;
/** The exported mutable i32 global holding the fuel left. */
export const FUEL_EXPORT = "fennec:fuel";
const GLOBAL_EXPORT_PREFIX = "fennec:global:";

const MAGIC_AND_VERSION = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
const CUSTOM = 0;
const TYPE = 1;
const IMPORT = 2;
const TABLE = 4;
const TAG = 13;
const GLOBAL = 6;
const EXPORT = 7;
const START = 8;
const ELEMENT = 9;
const CODE = 10;
/** Non-custom sections must come in this order (tags, 13, sit between memory and globals). */
const SECTION_ORDER = [1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11];
/** 0xFC instructions that change tables or segments, which a reset does not restore. */
const STATEFUL_MISC = new Set([8, 9, 12, 13, 14, 15, 17]);
const TABLE_SET = 0x26;

function rank(id: number): number {
  const r = SECTION_ORDER.indexOf(id);
  if (r < 0) throw new UnsupportedModuleError(`unknown section id ${id}`);
  return r;
}

/** A section's place in the input: its first byte (the id), its body, and the byte after it. */
interface Span {
  readonly start: number;
  readonly body: number;
  readonly end: number;
}

function sizeMismatch(what: string): UnsupportedModuleError {
  return new UnsupportedModuleError(`the ${what} section's size does not match its contents`);
}

class Rewriter {
  readonly out: ByteWriter;
  /** The one read position every section and the code walk advance. */
  private readonly r: WasmReader;
  private importedFuncs = 0;
  private importedGlobals = 0;
  private definedGlobals = 0;
  private tickType = -1;
  private fuelCheck: Uint8Array = new Uint8Array(0);
  /** Sections this rewrite must add that the module lacks; each is written at its place in the order. */
  private readonly missing: number[];
  readonly mutableGlobals: number[] = [];
  private readonly exportNames = new Set<string>();
  stateful = false;

  constructor(
    private readonly src: Buffer,
    private readonly fuel: boolean,
    present: ReadonlySet<number>,
  ) {
    this.r = new WasmReader(src, 0);
    // Fuel adds ≈ 8% to clang's output and ≈ 20% to code made only of short functions; room for
    // 25% more spares a growth copy of the whole output (a page-faulting copy of tens of MiB).
    this.out = new ByteWriter(src.length + (fuel ? src.length >> 2 : 0) + 1024);
    this.missing = (fuel ? [TYPE, IMPORT, GLOBAL, EXPORT] : [EXPORT]).filter((id) => !present.has(id));
  }

  private shift(func: number): number {
    return this.fuel && func >= this.importedFuncs ? func + 1 : func;
  }

  /** Writes the added sections that belong before a section of rank `before`. */
  fillBefore(before: number): void {
    while (this.missing.length > 0 && rank(this.missing[0]!) < before) {
      const id = this.missing.shift()!;
      if (id === TYPE) this.typeSection(undefined);
      else if (id === IMPORT) this.importSection(undefined);
      else if (id === GLOBAL) this.globalSection(undefined);
      else this.exportSection(undefined);
    }
  }

  section(id: number, s: Span): void {
    switch (id) {
      case CUSTOM: {
        this.r.pos = s.body;
        const length = this.r.u32();
        // Its function indices would be off by one; nothing needs it to run.
        if (this.fuel && this.src.toString("utf8", this.r.pos, this.r.pos + length) === "name") return;
        break;
      }
      case TYPE:
        if (this.fuel) return this.typeSection(s);
        break;
      case IMPORT:
        return this.importSection(s);
      case TABLE:
        this.checkTables(s);
        break;
      case TAG:
        throw new UnsupportedModuleError("exception handling (a tag section) is not supported");
      case GLOBAL:
        return this.globalSection(s);
      case EXPORT:
        return this.exportSection(s);
      case START:
        if (this.fuel) return this.startSection(s);
        break;
      case ELEMENT:
        if (this.fuel) return this.elementSection(s);
        break;
      case CODE:
        return this.codeSection(s);
    }
    this.out.copy(this.src, s.start, s.end);
  }

  /** Reads the count at the start of a section's body, leaving the reader at its first entry (0 when absent). */
  private count(s: Span | undefined): number {
    if (!s) return 0;
    this.r.pos = s.body;
    return this.r.u32();
  }

  private typeSection(s: Span | undefined): void {
    const { r, src, out } = this;
    const count = this.count(s);
    const entries = r.pos;
    for (let i = 0; i < count; i++) {
      if (r.byte() !== 0x60)
        throw new UnsupportedModuleError(`type ${i} is not a function type (GC types are not supported)`);
      const params = r.u32();
      for (let j = 0; j < params; j++) r.skipValType();
      const results = r.u32();
      for (let j = 0; j < results; j++) r.skipValType();
      if (this.tickType < 0 && params === 0 && results === 1 && src[r.pos - 1] === 0x7f) this.tickType = i;
    }
    if (s && r.pos !== s.end) throw sizeMismatch("type");
    const at = out.beginSection(TYPE, this.tickType < 0 ? count + 1 : count);
    if (s) out.copy(src, entries, s.end);
    if (this.tickType < 0) {
      this.tickType = count;
      out.bytes(Uint8Array.from([0x60, 0x00, 0x01, 0x7f])); // () -> i32
    }
    out.endSize(at);
  }

  private importSection(s: Span | undefined): void {
    const { r, src, out } = this;
    const count = this.count(s);
    const entries = r.pos;
    for (let i = 0; i < count; i++) {
      for (let name = 0; name < 2; name++) {
        // The module name, then the field name. (Not `r.pos += r.u32()`: that adds to the old position.)
        const length = r.u32();
        r.pos += length;
      }
      const kind = r.byte();
      if (kind === 0) {
        this.importedFuncs++;
        r.skipLeb();
      } else if (kind === 1 || kind === 2) {
        // The table or memory lives outside the instance: a reset cannot restore it.
        this.stateful = true;
        if (kind === 1) r.skipValType();
        r.skipLimits();
      } else if (kind === 3) {
        this.importedGlobals++;
        r.skipValType();
        if (r.byte() !== 0) this.stateful = true;
      } else throw new UnsupportedModuleError(`import ${i} has unsupported kind ${kind}`);
    }
    if (s && r.pos !== s.end) throw sizeMismatch("import");
    if (!this.fuel) return out.copy(src, s!.start, s!.end);
    const at = out.beginSection(IMPORT, count + 1);
    if (s) out.copy(src, entries, s.end);
    for (const name of [TICK_IMPORT.module, TICK_IMPORT.name]) {
      const bytes = Buffer.from(name, "utf8");
      out.u32(bytes.length);
      out.bytes(bytes);
    }
    out.byte(0x00); // a function
    out.u32(this.tickType);
    out.endSize(at);
  }

  private checkTables(s: Span): void {
    const r = this.r;
    const count = this.count(s);
    for (let i = 0; i < count; i++) {
      // 0x40: a table with an initialiser expression (typed function references).
      if (this.src[r.pos] === 0x40)
        throw new UnsupportedModuleError("tables with initialiser expressions are not supported");
      r.skipValType();
      r.skipLimits();
    }
    if (r.pos !== s.end) throw sizeMismatch("table");
  }

  private globalSection(s: Span | undefined): void {
    const { r, src, out, fuel } = this;
    const count = this.count(s);
    const at = fuel ? out.beginSection(GLOBAL, count + 1) : -1;
    for (let i = 0; i < count; i++) {
      const entry = r.pos;
      r.skipValType();
      const mutable = r.byte();
      // JavaScript can neither read nor write a v128 global's value, so it cannot be reset.
      if (mutable === 1 && src[entry] === 0x7b) this.stateful = true;
      if (mutable === 1) this.mutableGlobals.push(this.importedGlobals + i);
      else if (mutable !== 0) throw new UnsupportedModuleError(`global ${i} has a bad mutability flag`);
      if (fuel) out.copy(src, entry, r.pos);
      this.walk(s!.end, false);
    }
    if (s && r.pos !== s.end) throw sizeMismatch("global");
    this.definedGlobals = count;
    if (!fuel) return out.copy(src, s!.start, s!.end);
    out.bytes(Uint8Array.from([0x7f, 0x01, 0x41, 0x00, 0x0b])); // (mut i32) (i32.const 0)
    out.endSize(at);
  }

  private exportSection(s: Span | undefined): void {
    const { r, src, out, fuel } = this;
    const count = this.count(s);
    const added = this.mutableGlobals.map((g): [string, number] => [`${GLOBAL_EXPORT_PREFIX}${g}`, g]);
    if (fuel) added.push([FUEL_EXPORT, this.importedGlobals + this.definedGlobals]);
    const at = added.length > 0 ? out.beginSection(EXPORT, count + added.length) : -1;
    let run = r.pos;
    for (let i = 0; i < count; i++) {
      const length = r.u32();
      this.exportNames.add(src.toString("utf8", r.pos, r.pos + length));
      r.pos += length;
      const kind = r.byte();
      const indexAt = r.pos;
      const index = r.u32();
      if (kind === 1) this.stateful = true; // the host could change an exported table
      if (kind === 0 && fuel && index >= this.importedFuncs) {
        out.copy(src, run, indexAt);
        out.u32(index + 1);
        run = r.pos;
      }
    }
    if (s && r.pos !== s.end) throw sizeMismatch("export");
    if (at < 0) {
      if (s) out.copy(src, s.start, s.end);
      return;
    }
    if (s) out.copy(src, run, s.end);
    for (const [name, index] of added) {
      if (this.exportNames.has(name))
        throw new UnsupportedModuleError(`the module already exports "${name}"`);
      const bytes = Buffer.from(name, "utf8");
      out.u32(bytes.length);
      out.bytes(bytes);
      out.byte(0x03); // a global
      out.u32(index);
    }
    out.endSize(at);
  }

  private startSection(s: Span): void {
    this.r.pos = s.body;
    const func = this.r.u32();
    this.out.byte(START);
    const at = this.out.beginSize();
    this.out.u32(this.shift(func));
    this.out.endSize(at);
  }

  /** Element segments in all eight encodings (bit 0: not active, bit 1: table index or declarative, bit 2: expressions). */
  private elementSection(s: Span): void {
    const { r, out } = this;
    const count = this.count(s);
    const at = out.beginSection(ELEMENT, count);
    for (let i = 0; i < count; i++) {
      const flags = r.u32();
      if (flags > 7) throw new UnsupportedModuleError(`element segment ${i} has unknown flags ${flags}`);
      out.u32(flags);
      if ((flags & 0x01) === 0) {
        if (flags & 0x02) out.u32(r.u32()); // the table
        this.walk(s.end, false); // the offset
      }
      if (flags & 0x03) {
        // An element kind (0x00: functions) or, with expressions, a reference type.
        const kind = r.byte();
        if (flags & 0x04 ? kind !== 0x70 && kind !== 0x6f : kind !== 0x00)
          throw new UnsupportedModuleError(`element segment ${i} has unsupported type ${kind}`);
        out.byte(kind);
      }
      const items = r.u32();
      out.u32(items);
      for (let j = 0; j < items; j++) {
        if (flags & 0x04) this.walk(s.end, false);
        else out.u32(this.shift(r.u32()));
      }
    }
    if (r.pos !== s.end) throw sizeMismatch("element");
    out.endSize(at);
  }

  private codeSection(s: Span): void {
    const { r, src, out, fuel } = this;
    const count = this.count(s);
    if (fuel) this.fuelCheck = fuelCheck(this.importedGlobals + this.definedGlobals, this.importedFuncs);
    const at = fuel ? out.beginSection(CODE, count) : -1;
    for (let i = 0; i < count; i++) {
      const size = r.u32();
      const body = r.pos;
      const end = body + size;
      if (end > s.end) throw new UnsupportedModuleError(`function body ${i} runs past the code section`);
      const groups = r.u32();
      for (let j = 0; j < groups; j++) {
        r.skipLeb();
        r.skipValType();
      }
      let bodyAt = -1;
      if (fuel) {
        bodyAt = out.beginSize();
        out.copy(src, body, r.pos);
        out.bytes(this.fuelCheck); // at entry: recursion without loops runs out of fuel too
      }
      this.walk(end, true);
      if (r.pos !== end) throw new UnsupportedModuleError(`function body ${i} goes on after its final end`);
      if (fuel) out.endSize(bodyAt);
    }
    if (r.pos !== s.end) throw sizeMismatch("code");
    if (fuel) out.endSize(at);
    else out.copy(src, s.start, s.end);
  }

  /**
   * Walks the instructions from the reader's position to the `end` that closes the expression (a
   * function body or a constant expression), leaving the reader after it. With fuel, copies them
   * to the output: function indices renumbered and, in code, the fuel check after every loop's
   * block type. Either way, notes instructions that change state a reset does not restore.
   */
  private walk(limit: number, code: boolean): void {
    const { r, src } = this;
    const out = this.fuel ? this.out : undefined;
    const start = r.pos;
    let run = r.pos;
    let depth = 0;
    while (r.pos < limit) {
      const at = r.pos;
      const op = src[at]!;
      if (op === 0x10 || op === 0x12 || op === 0xd2) {
        // call, return_call, ref.func
        r.pos++;
        const func = r.u32();
        if (out && func >= this.importedFuncs) {
          out.copy(src, run, at + 1);
          out.u32(func + 1);
          run = r.pos;
        }
        continue;
      }
      r.skipInstruction();
      if (op === 0x0b) {
        if (depth === 0) {
          out?.copy(src, run, r.pos);
          return;
        }
        depth--;
      } else if (op === 0x02 || op === 0x04) depth++;
      else if (op === 0x03) {
        depth++;
        if (out && code) {
          out.copy(src, run, r.pos);
          out.bytes(this.fuelCheck);
          run = r.pos;
        }
      } else if (op === TABLE_SET) this.stateful = true;
      else if (op === 0xfc) {
        // Read the sub-opcode as a LEB: a non-minimal encoding (0x88 0x00 for 8) is valid.
        const after = r.pos;
        r.pos = at + 1;
        if (STATEFUL_MISC.has(r.u32())) this.stateful = true;
        r.pos = after;
      }
    }
    throw new UnsupportedModuleError(`the expression at byte ${start} has no end before byte ${limit}`);
  }
}

/**
 * At a function entry or loop head: when the fuel is used up, ask the host for more (it may throw
 * instead); then count one down. `< 1` rather than `== 0`, so a host that returns 0, or sets the
 * global to 0 from outside to be called back soon, never sends the count below zero for good.
 */
function fuelCheck(fuel: number, tick: number): Uint8Array {
  const g = writeU32(fuel);
  return Uint8Array.from([
    ...[0x23, ...g, 0x41, 0x01, 0x48], // global.get fuel; i32.const 1; i32.lt_s
    ...[0x04, 0x40, 0x10, ...writeU32(tick), 0x24, ...g, 0x0b], // if; call tick; global.set fuel; end
    ...[0x23, ...g, 0x41, 0x01, 0x6b, 0x24, ...g], // global.get fuel; i32.const 1; i32.sub; global.set fuel
  ]);
}

/** Rewrites a module's bytes (see the file comment); throws `UnsupportedModuleError` for one it cannot handle. */
export function instrument(bytes: Uint8Array, opts: InstrumentOptions): InstrumentedModule {
  const src = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (src.length < 8 || MAGIC_AND_VERSION.some((byte, i) => src[i] !== byte))
    throw new UnsupportedModuleError("not a WebAssembly module (version 1)");
  const sections: [number, Span][] = [];
  const r = new WasmReader(src, 8);
  while (r.pos < src.length) {
    const start = r.pos;
    const id = r.byte();
    const size = r.u32();
    const end = r.pos + size;
    if (end > src.length) throw new UnsupportedModuleError(`section ${id} at byte ${start} is truncated`);
    sections.push([id, { start, body: r.pos, end }]);
    r.pos = end;
  }
  const rewriter = new Rewriter(src, opts.fuel, new Set(sections.map(([id]) => id)));
  rewriter.out.copy(src, 0, 8);
  for (const [id, span] of sections) {
    if (id !== CUSTOM) rewriter.fillBefore(rank(id));
    rewriter.section(id, span);
  }
  rewriter.fillBefore(SECTION_ORDER.length);
  return {
    bytes: rewriter.out.result(),
    globals: rewriter.mutableGlobals.map((g) => `${GLOBAL_EXPORT_PREFIX}${g}`),
    statefulBeyondMemory: rewriter.stateful,
  };
}
