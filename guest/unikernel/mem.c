/*
 * Fennec unikernel memory. The free RAM (from the end of the image to the end of its PVH memmap
 * region) is used as:
 *
 *   [lo, init_end)          fn_init's allocations, kept for ever (bump)
 *   [init_end, heap_end)    the stream heap: each open stream's input buffer (first fit, freed)
 *   [heap_end, hi)          the request arena: the request, the response and fn_alloc() while a
 *                           request runs; reset before every request (bump)
 *
 * The stream heap and the arena get half each of what fn_init left. A request body may be at
 * most an eighth of it (in 64 KiB steps, at most 8 MiB): its bytes are held once in the stream
 * buffer and copied once into the arena.
 */
#include "kernel.h"

#define ALIGN16(x) (((x) + 15) & ~(uintptr_t)15)

static uintptr_t mem_lo, mem_hi;
static uintptr_t init_ptr;
static int sealed;
static uintptr_t arena_lo, arena_ptr, arena_hi;
static uintptr_t heap_lo, heap_hi;
static size_t body_limit;

struct blk {
  size_t size; /* of the whole block, header included */
  struct blk *next;
};
static struct blk *free_list;

void mem_init(uintptr_t lo, uintptr_t hi) {
  mem_lo = init_ptr = ALIGN16(lo);
  mem_hi = hi;
}

void mem_seal_init(void) {
  uintptr_t base = (init_ptr + 4095) & ~(uintptr_t)4095;
  if (base + 1 * MiB > mem_hi) panic("out of memory: fn_init left less than 1 MiB");
  size_t total = mem_hi - base;
  heap_lo = base;
  heap_hi = arena_lo = base + (total / 2 & ~(uintptr_t)4095);
  arena_ptr = arena_lo;
  arena_hi = mem_hi;
  body_limit = (total / 8) & ~(size_t)(64 * KiB - 1);
  if (body_limit > 8 * MiB) body_limit = 8 * MiB;
  if (body_limit < 64 * KiB) body_limit = 64 * KiB;
  free_list = (struct blk *)heap_lo;
  free_list->size = heap_hi - heap_lo;
  free_list->next = 0;
  sealed = 1;
}

size_t mem_body_limit(void) { return body_limit; }

void mem_describe(char *buf, size_t n) {
  fn_snprintf(buf, n, "init %lu KiB, stream heap %lu KiB, request arena %lu KiB, body limit %lu KiB",
              (unsigned long)(heap_lo - mem_lo) / KiB, (unsigned long)(heap_hi - heap_lo) / KiB,
              (unsigned long)(arena_hi - arena_lo) / KiB, (unsigned long)body_limit / KiB);
}

void arena_reset(void) { arena_ptr = arena_lo; }

void *arena_alloc(size_t n) {
  if (n > arena_hi - arena_ptr) return 0;
  void *p = (void *)arena_ptr;
  arena_ptr = ALIGN16(arena_ptr + n);
  if (arena_ptr > arena_hi) arena_ptr = arena_hi;
  return p;
}

void *arena_extend(void *p, size_t old, size_t want) {
  if (p && ALIGN16((uintptr_t)p + old) == arena_ptr && want <= arena_hi - (uintptr_t)p) {
    arena_ptr = ALIGN16((uintptr_t)p + want);
    if (arena_ptr > arena_hi) arena_ptr = arena_hi;
    return p;
  }
  void *q = arena_alloc(want);
  if (q && p) memcpy(q, p, old);
  return q;
}

void *fn_alloc(size_t size) {
  if (sealed) return arena_alloc(size);
  if (size > mem_hi - init_ptr) return 0;
  void *p = (void *)init_ptr;
  init_ptr = ALIGN16(init_ptr + size);
  return p;
}

void *heap_alloc(size_t n) {
  size_t need = ALIGN16(n) + sizeof(struct blk);
  for (struct blk **pp = &free_list; *pp; pp = &(*pp)->next) {
    struct blk *b = *pp;
    if (b->size < need) continue;
    if (b->size - need >= 256) { /* split: the tail stays free */
      struct blk *rest = (struct blk *)((char *)b + need);
      rest->size = b->size - need;
      rest->next = b->next;
      *pp = rest;
      b->size = need;
    } else
      *pp = b->next;
    return b + 1;
  }
  return 0;
}

void heap_free(void *p) {
  if (!p) return;
  struct blk *b = (struct blk *)p - 1, **pp = &free_list;
  while (*pp && *pp < b) pp = &(*pp)->next; /* the list is sorted by address */
  b->next = *pp;
  *pp = b;
  if (b->next && (char *)b + b->size == (char *)b->next) { /* merge with the next */
    b->size += b->next->size;
    b->next = b->next->next;
  }
  if (pp != &free_list) { /* merge with the previous */
    struct blk *prev = (struct blk *)((char *)pp - offsetof(struct blk, next));
    if ((char *)prev + prev->size == (char *)b) {
      prev->size += b->size;
      prev->next = b->next;
    }
  }
}
