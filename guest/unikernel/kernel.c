/*
 * Fennec unikernel: boot (after boot.S), CPU exceptions, the 8259 PIC, the COM1 UART (the guest
 * channel) with an interrupt-driven receive ring, idle (hlt) and panic.
 */
#include "kernel.h"

/* PVH start info (xen/include/public/arch-x86/hvm/start_info.h). */
struct hvm_start_info {
  uint32_t magic; /* 0x336ec578 */
  uint32_t version;
  uint32_t flags;
  uint32_t nr_modules;
  uint64_t modlist_paddr;
  uint64_t cmdline_paddr;
  uint64_t rsdp_paddr;
  uint64_t memmap_paddr; /* version >= 1 */
  uint32_t memmap_entries;
  uint32_t reserved;
};
struct hvm_memmap_entry {
  uint64_t addr;
  uint64_t size;
  uint32_t type; /* 1: RAM */
  uint32_t reserved;
};

extern char __image_start[], __image_end[], __stack_bottom[], __stack_top[];
extern uint64_t gdt[], pt0[];
extern const uint64_t isr_table[48];

/* ---- UART (COM1) ---- */
#define COM1 0x3f8
#define UART_RBR 0
#define UART_THR 0
#define UART_IER 1
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define LSR_DR 0x01
#define LSR_THRE 0x20

#define RX_SIZE (64 * KiB) /* power of two */
static uint8_t rx_ring[RX_SIZE];
static volatile uint32_t rx_head, rx_tail; /* head: written by the IRQ; tail: by the main loop */
static volatile int rx_throttled;          /* receive interrupt off because the ring is full */

static void uart_init(void) {
  outb(COM1 + UART_IER, 0);
  outb(COM1 + UART_LCR, 0x80); /* DLAB */
  outb(COM1 + 0, 1);           /* 115200 baud: sets the FIFO timeout QEMU emulates */
  outb(COM1 + 1, 0);
  outb(COM1 + UART_LCR, 0x03); /* 8N1 */
  outb(COM1 + UART_FCR, 0xC7); /* FIFO on, cleared, interrupt at 14 bytes (or timeout) */
  outb(COM1 + UART_MCR, 0x0B); /* DTR, RTS, OUT2 (gates the IRQ on real hardware) */
  (void)inb(COM1 + UART_LSR);
  (void)inb(COM1 + UART_RBR);
  (void)inb(COM1 + 2);
  (void)inb(COM1 + 6);
  outb(COM1 + UART_IER, 0x01); /* received data available (and FIFO timeout) */
}

/* Moves bytes from the UART FIFO into the ring. Runs with interrupts off (IRQ or cli). When the
 * ring is full it stops reading and turns the receive interrupt off; the FIFO then stays full
 * and QEMU stops reading the socket (backpressure), so nothing is lost. */
static void uart_drain(void) {
  uint32_t head = rx_head;
  while (inb(COM1 + UART_LSR) & LSR_DR) {
    if (head - rx_tail >= RX_SIZE) {
      rx_throttled = 1;
      outb(COM1 + UART_IER, 0);
      break;
    }
    rx_ring[head & (RX_SIZE - 1)] = inb(COM1 + UART_RBR);
    head++;
  }
  rx_head = head;
}

size_t rx_read(void *buf, size_t max) {
  uint32_t tail = rx_tail, head = rx_head;
  size_t n = head - tail;
  if (n > max) n = max;
  for (size_t i = 0; i < n; i++) ((uint8_t *)buf)[i] = rx_ring[(tail + i) & (RX_SIZE - 1)];
  barrier();
  rx_tail = tail + (uint32_t)n;
  if (rx_throttled && rx_head - rx_tail <= RX_SIZE / 2) {
    __asm__ volatile("cli");
    rx_throttled = 0;
    outb(COM1 + UART_IER, 0x01);
    uart_drain();
    __asm__ volatile("sti");
  }
  return n;
}

/* Sleeps until the ring has data. `sti; hlt` is atomic (sti's one-instruction shadow), so an
 * interrupt between the check and the hlt still wakes us. */
void rx_wait(void) {
  for (;;) {
    __asm__ volatile("cli");
    if (!rx_throttled) uart_drain(); /* catch anything the interrupt has not reported yet */
    if (rx_head != rx_tail) {
      __asm__ volatile("sti");
      return;
    }
    __asm__ volatile("sti; hlt" ::: "memory");
  }
}

void tx_bytes(const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++) {
    while (!(inb(COM1 + UART_LSR) & LSR_THRE)) __asm__ volatile("pause");
    outb(COM1 + UART_THR, b[i]);
  }
}

/* ---- interrupts ---- */
struct idt_entry {
  uint16_t off0, sel;
  uint8_t ist, type;
  uint16_t off1;
  uint32_t off2, zero;
};
static struct idt_entry idt[48];
static struct __attribute__((packed)) {
  uint32_t reserved0;
  uint64_t rsp[3];
  uint64_t reserved1;
  uint64_t ist[7];
  uint64_t reserved2;
  uint16_t reserved3, iomap;
} tss;
static uint8_t ist_stack[16 * KiB] __attribute__((aligned(16)));

struct frame {
  uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
  uint64_t vector, error, rip, cs, rflags, rsp, ss;
};

static void pic_init(void) {
  outb(0x20, 0x11); /* ICW1: edge, cascade, ICW4 */
  outb(0xA0, 0x11);
  outb(0x21, 0x20); /* ICW2: master at vector 32 */
  outb(0xA1, 0x28); /* slave at 40 */
  outb(0x21, 0x04); /* ICW3 */
  outb(0xA1, 0x02);
  outb(0x21, 0x01); /* ICW4: 8086 mode */
  outb(0xA1, 0x01);
  outb(0x21, 0xEF); /* only IRQ4 (COM1) */
  outb(0xA1, 0xFF);
  /* Stop the PIT: channel 0 in mode 0 (one shot) fires once and then never again, so QEMU has
   * no periodic timer to run for an idle guest (the IRQ is masked anyway). */
  outb(0x43, 0x30);
  outb(0x40, 0x01);
  outb(0x40, 0x00);
}

static void cpu_init(void) {
  /* TSS: IST1 is a separate stack for faults that may come from a broken stack. */
  uint64_t base = (uint64_t)&tss;
  tss.ist[0] = (uint64_t)(ist_stack + sizeof ist_stack);
  tss.iomap = sizeof tss;
  gdt[3] = (sizeof tss - 1) | ((base & 0xFFFFFF) << 16) | (0x89UL << 40) | (((base >> 24) & 0xFF) << 56);
  gdt[4] = base >> 32;
  __asm__ volatile("ltr %w0" ::"r"(0x18));

  for (int i = 0; i < 48; i++) {
    uint64_t a = isr_table[i];
    int ist = (i == 2 || i == 8 || i == 14 || i == 18) ? 1 : 0; /* NMI, #DF, #PF, #MC */
    idt[i] = (struct idt_entry){(uint16_t)a, 0x08, (uint8_t)ist, 0x8E, (uint16_t)(a >> 16), (uint32_t)(a >> 32), 0};
  }
  struct __attribute__((packed)) {
    uint16_t limit;
    uint64_t base;
  } idtr = {sizeof idt - 1, (uint64_t)idt};
  __asm__ volatile("lidt %0" ::"m"(idtr));

  /* No firmware set up the local APIC for us, and QEMU (TCG) hands the 8259's interrupt to the
   * CPU only through LINT0: program LINT0 as ExtINT (virtual wire) and LINT1 as NMI, then
   * disable the local APIC globally (IA32_APIC_BASE bit 11). Works on microvm and pc. */
  uint32_t lo, hi;
  __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0x1B));
  if (lo & (1u << 11)) {
    volatile uint32_t *apic = (volatile uint32_t *)(uintptr_t)(lo & 0xFFFFF000u);
    apic[0x350 / 4] = 0x700; /* LVT LINT0: ExtINT, unmasked */
    apic[0x360 / 4] = 0x400; /* LVT LINT1: NMI */
  }
  lo &= ~(1u << 11);
  __asm__ volatile("wrmsr" ::"a"(lo), "d"(hi), "c"(0x1B));
  pic_init();
}

static const char *const exception_names[32] = {
    "divide error", "debug", "NMI", "breakpoint", "overflow", "bound range exceeded",
    "invalid opcode", "device not available", "double fault", "coprocessor segment overrun",
    "invalid TSS", "segment not present", "stack-segment fault", "general protection fault",
    "page fault", "reserved", "x87 floating-point error", "alignment check", "machine check",
    "SIMD floating-point error", "virtualization exception", "control protection", "reserved",
    "reserved", "reserved", "reserved", "reserved", "reserved", "hypervisor injection",
    "VMM communication", "security exception", "reserved"};

void isr_dispatch(struct frame *f);
void isr_dispatch(struct frame *f) {
  if (f->vector < 32) {
    if (f->vector == 14) {
      uint64_t cr2;
      __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
      const char *what = cr2 < 4096 ? " (null pointer)"
                         : (cr2 >= (uint64_t)__stack_bottom - 4096 && cr2 < (uint64_t)__stack_bottom)
                             ? " (stack overflow)"
                             : "";
      panic("page fault at address %p%s, rip %p, error %lu", (void *)cr2, what, (void *)f->rip, f->error);
    }
    panic("%s (vector %lu) at rip %p, error %lu", exception_names[f->vector], f->vector, (void *)f->rip,
          f->error);
  }
  unsigned irq = (unsigned)f->vector - 32;
  if (irq == 7 || irq == 15) { /* spurious unless the in-service register says otherwise */
    outb(irq == 7 ? 0x20 : 0xA0, 0x0B);
    if (!(inb(irq == 7 ? 0x20 : 0xA0) & 0x80)) {
      if (irq == 15) outb(0x20, 0x20);
      return;
    }
  }
  if (irq == 4) uart_drain();
  if (irq >= 8) outb(0xA0, 0x20);
  outb(0x20, 0x20);
}

/* ---- log and panic ---- */
struct bufctx {
  char *p;
  size_t n, cap;
};
static void buf_emit(void *c, const char *s, size_t n) {
  struct bufctx *b = c;
  for (size_t i = 0; i < n; i++) {
    if (b->n + 1 < b->cap) b->p[b->n] = s[i];
    b->n++;
  }
}

int fn_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap) {
  struct bufctx b = {buf, 0, size};
  fmt_core(buf_emit, &b, fmt, ap);
  if (size) buf[b.n < size ? b.n : size - 1] = 0;
  return (int)b.n;
}

int fn_snprintf(char *buf, size_t size, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = fn_vsnprintf(buf, size, fmt, ap);
  va_end(ap);
  return n;
}

static char log_buf[1024];
static void vlog(const char *prefix, const char *fmt, va_list ap) {
  size_t p = strlen(prefix);
  memcpy(log_buf, prefix, p);
  int n = fn_vsnprintf(log_buf + p, sizeof log_buf - p, fmt, ap);
  size_t len = p + ((size_t)n < sizeof log_buf - p ? (size_t)n : sizeof log_buf - p - 1);
  chan_log(log_buf, len);
}

void klog(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog("", fmt, ap);
  va_end(ap);
}

void fn_log(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog("", fmt, ap);
  va_end(ap);
}

static volatile int panicking;

static _Noreturn void halt_vm(void) {
  /* isa-debug-exit: QEMU exits with status (1 << 1) | 1 = 3. Without the device, a triple
   * fault (empty IDT) makes QEMU stop too, given -no-reboot. */
  outl(0xf4, 1);
  struct __attribute__((packed)) {
    uint16_t limit;
    uint64_t base;
  } none = {0, 0};
  __asm__ volatile("lidt %0; int3" ::"m"(none));
  for (;;) __asm__ volatile("cli; hlt");
}

_Noreturn void panic(const char *fmt, ...) {
  __asm__ volatile("cli");
  if (panicking++) halt_vm();
  chan_pad_partial_frame();
  va_list ap;
  va_start(ap, fmt);
  vlog("panic: ", fmt, ap);
  va_end(ap);
  halt_vm();
}

_Noreturn void fn_panic(const char *msg) { panic("%s", msg ? msg : "(null)"); }

/* ---- boot ---- */
static char cmdline[4096];

__attribute__((weak)) void fn_init(const char *cmd) { (void)cmd; }

void kmain(uint32_t start_info_paddr);
void kmain(uint32_t start_info_paddr) {
  const struct hvm_start_info *si = (const void *)(uintptr_t)start_info_paddr;
  uart_init();
  cpu_init();
  if (si->magic != 0x336ec578) panic("no PVH start info (magic %x)", si->magic);
  if (si->cmdline_paddr) {
    const char *c = (const char *)(uintptr_t)si->cmdline_paddr;
    size_t i = 0;
    while (c[i] && i < sizeof cmdline - 1) {
      cmdline[i] = c[i];
      i++;
    }
  }
  /* The free RAM: the memmap region holding the image, from the end of the image on. */
  uintptr_t lo = ((uintptr_t)__image_end + 4095) & ~4095UL, hi = 0;
  if (si->version >= 1 && si->memmap_paddr) {
    const struct hvm_memmap_entry *m = (const void *)(uintptr_t)si->memmap_paddr;
    for (uint32_t i = 0; i < si->memmap_entries; i++)
      if (m[i].type == 1 && m[i].addr <= (uintptr_t)__image_start && m[i].addr + m[i].size > lo)
        hi = m[i].addr + m[i].size;
  }
  /* Everything needed from the boot information is copied: unmap page 0 (null pointers). */
  pt0[0] = 0;
  __asm__ volatile("invlpg (%0)" ::"r"(0UL) : "memory");
  if (!hi) panic("no RAM region after the image in the PVH memory map");
  if (hi > 0xFEC00000UL) hi = 0xFEC00000UL; /* below the APIC MMIO; we map only 4 GiB anyway */
  __asm__ volatile("sti");
  mem_init(lo, hi);
  fn_init(cmdline);
  mem_seal_init();
  char desc[160];
  mem_describe(desc, sizeof desc);
  klog("fennec unikernel: %lu KiB RAM free; %s", (unsigned long)(hi - lo) / KiB, desc);
  chan_serve();
}
