/*
 * Fennec unikernel entry. QEMU boots the ELF through PVH (the Xen ELF note below): it enters
 * _start in 32-bit protected mode with paging off and %ebx = physical address of the
 * hvm_start_info struct. We clear .bss, build identity-mapped page tables (the first 2 MiB in
 * 4 KiB pages so that the stack guard page, and page 0 once kmain has read the boot
 * information, can be unmapped; the rest of the first 4 GiB in 2 MiB pages), enable SSE, enter long mode and call kmain(start_info).
 */
#define PAGE_P 0x1
#define PAGE_W 0x2
#define PAGE_PS 0x80

	.section .note.Xen, "a", @note
	.balign 4
	.long 4            /* name size */
	.long 8            /* descriptor size */
	.long 18           /* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.balign 4
	.quad _start

	.section .bss.pagetables, "aw", @nobits
	.balign 4096
pml4:	.skip 4096
pdpt:	.skip 4096
pd:	.skip 4 * 4096     /* four page directories: 4 GiB of 2 MiB pages */
	.globl pt0
pt0:	.skip 4096         /* the first 2 MiB in 4 KiB pages */

	.section .text.boot, "ax"
	.code32
	.globl _start
_start:
	cli
	cld
	/* %ebx (start info) survives: rep stosl uses %eax, %ecx, %edi only. */
	mov $__bss_start, %edi
	mov $__bss_end, %ecx
	sub %edi, %ecx
	shr $2, %ecx
	xor %eax, %eax
	rep stosl

	/* PML4[0] -> PDPT; PDPT[0..3] -> PD0..PD3 */
	movl $(pdpt + PAGE_P + PAGE_W), pml4
	mov $pd + PAGE_P + PAGE_W, %eax
	xor %ecx, %ecx
1:	mov %eax, pdpt(,%ecx,8)
	add $4096, %eax
	inc %ecx
	cmp $4, %ecx
	jne 1b
	/* PD entries: 2 MiB pages covering 0..4 GiB */
	mov $(PAGE_P + PAGE_W + PAGE_PS), %eax
	xor %ecx, %ecx
1:	mov %eax, pd(,%ecx,8)
	add $0x200000, %eax
	inc %ecx
	cmp $2048, %ecx
	jne 1b
	/* ... except the first, which is pt0: 4 KiB pages, the stack guard not present (page 0 is
	   present until kmain has read the boot information QEMU may have put there) */
	movl $(pt0 + PAGE_P + PAGE_W), pd
	mov $(PAGE_P + PAGE_W), %eax
	xor %ecx, %ecx
1:	mov %eax, pt0(,%ecx,8)
	add $0x1000, %eax
	inc %ecx
	cmp $512, %ecx
	jne 1b
	mov $__stack_guard, %eax
	shr $12, %eax
	movl $0, pt0(,%eax,8)

	lgdt gdt_ptr
	/* CR4: PAE, OSFXSR, OSXMMEXCPT */
	mov %cr4, %eax
	or $((1 << 5) | (1 << 9) | (1 << 10)), %eax
	mov %eax, %cr4
	mov $pml4, %eax
	mov %eax, %cr3
	/* EFER.LME */
	mov $0xC0000080, %ecx
	rdmsr
	or $(1 << 8), %eax
	wrmsr
	/* CR0: PG, WP, NE, MP; clear EM and TS */
	mov %cr0, %eax
	and $~((1 << 2) | (1 << 3)), %eax
	or $((1 << 31) | (1 << 16) | (1 << 5) | (1 << 1) | 1), %eax
	mov %eax, %cr0
	ljmp $0x08, $long_mode

	.code64
long_mode:
	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	xor %ax, %ax
	mov %ax, %fs
	mov %ax, %gs
	mov $__stack_top, %rsp
	xor %ebp, %ebp
	fninit
	mov %ebx, %edi
	call kmain
1:	cli
	hlt
	jmp 1b

/* Interrupt and exception entry: push a uniform frame and call isr_dispatch(frame). */
.macro ISR_NOERR n
isr\n:
	push $0
	push $\n
	jmp isr_common
.endm
.macro ISR_ERR n
isr\n:
	push $\n
	jmp isr_common
.endm

	.text
ISR_NOERR 0
ISR_NOERR 1
ISR_NOERR 2
ISR_NOERR 3
ISR_NOERR 4
ISR_NOERR 5
ISR_NOERR 6
ISR_NOERR 7
ISR_ERR 8
ISR_NOERR 9
ISR_ERR 10
ISR_ERR 11
ISR_ERR 12
ISR_ERR 13
ISR_ERR 14
ISR_NOERR 15
ISR_NOERR 16
ISR_ERR 17
ISR_NOERR 18
ISR_NOERR 19
ISR_NOERR 20
ISR_ERR 21
ISR_NOERR 22
ISR_NOERR 23
ISR_NOERR 24
ISR_NOERR 25
ISR_NOERR 26
ISR_NOERR 27
ISR_NOERR 28
ISR_ERR 29
ISR_ERR 30
ISR_NOERR 31
.irp n, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
ISR_NOERR \n
.endr

isr_common:
	push %rax
	push %rbx
	push %rcx
	push %rdx
	push %rsi
	push %rdi
	push %rbp
	push %r8
	push %r9
	push %r10
	push %r11
	push %r12
	push %r13
	push %r14
	push %r15
	cld
	mov %rsp, %rdi
	mov %rsp, %rbx
	and $-16, %rsp
	call isr_dispatch
	mov %rbx, %rsp
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rbp
	pop %rdi
	pop %rsi
	pop %rdx
	pop %rcx
	pop %rbx
	pop %rax
	add $16, %rsp
	iretq

	.section .rodata
	.balign 8
	.globl isr_table
isr_table:
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
	.quad isr\n
.endr

	.data
	.balign 16
	.globl gdt
gdt:
	.quad 0
	.quad 0x00AF9A000000FFFF   /* 0x08: 64-bit code */
	.quad 0x00CF92000000FFFF   /* 0x10: data */
	.quad 0, 0                 /* 0x18: TSS, filled in by the kernel */
gdt_end:
	.balign 4
gdt_ptr:
	.word gdt_end - gdt - 1
	.long gdt
