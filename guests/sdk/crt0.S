/*
 * crt0.S - hvft guest entry, GDT, IDT and interrupt/exception stubs.
 *
 * Entry state (set by the board): RIP = _start, RDI = bootinfo (0x1000),
 * RSP = top of RAM - 16, IF = 0, no usable GDT or IDT.
 *
 * _start: load our GDT, reload CS via lretq and the data segment registers,
 * zero .bss, switch to the .bss stack, fill and load the IDT, then call
 * hvft_crt_start(bootinfo) in C (builds argv, calls main, powers off).
 */

#define SEL_CODE 0x08
#define SEL_DATA 0x10
#define STACK_SIZE (64 * 1024)
#define STUB_SIZE 16

	.section .text.entry, "ax", @progbits
	.code64
	.globl _start
	.type _start, @function
_start:
	cli
	cld
	movq	%rdi, %r12			/* keep bootinfo pointer (callee-saved) */

	lgdt	gdt_ptr(%rip)
	pushq	$SEL_CODE
	leaq	1f(%rip), %rax
	pushq	%rax
	lretq					/* reload CS = 0x08 */
1:
	movl	$SEL_DATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	xorl	%eax, %eax
	movl	%eax, %fs
	movl	%eax, %gs

	/* zero .bss (includes our stack; nothing of ours lives there yet) */
	leaq	__bss_start(%rip), %rdi
	leaq	__bss_end(%rip), %rcx
	subq	%rdi, %rcx
	xorl	%eax, %eax
	rep stosb

	/* switch to our own stack */
	leaq	hvft_stack_top(%rip), %rsp
	xorl	%ebp, %ebp

	/* build the IDT: gate i -> hvft_isr_stubs + i * STUB_SIZE */
	leaq	hvft_idt(%rip), %rdi
	leaq	hvft_isr_stubs(%rip), %rsi
	movl	$256, %ecx
2:
	movq	%rsi, %rax
	movw	%ax, 0(%rdi)			/* offset 15:0 */
	movw	$SEL_CODE, 2(%rdi)		/* selector */
	movb	$0, 4(%rdi)			/* IST = 0 */
	movb	$0x8E, 5(%rdi)			/* P=1, DPL=0, type 0xE */
	shrq	$16, %rax
	movw	%ax, 6(%rdi)			/* offset 31:16 */
	shrq	$16, %rax
	movl	%eax, 8(%rdi)			/* offset 63:32 */
	movl	$0, 12(%rdi)
	addq	$16, %rdi
	addq	$STUB_SIZE, %rsi
	decl	%ecx
	jnz	2b
	lidt	idt_ptr(%rip)

	movq	%r12, %rdi
	call	hvft_crt_start			/* does not return */
3:
	cli
	hlt
	jmp	3b
	.size _start, . - _start

/*
 * Vector stubs, one per vector, each exactly STUB_SIZE bytes apart.
 * Vectors 8, 10-14 and 17 get an error code from the CPU/board; for all
 * others the stub pushes a dummy 0 so the frame layout is uniform.
 */
	.section .text.isr, "ax", @progbits
	.p2align 4
	.globl hvft_isr_stubs
hvft_isr_stubs:
	.set vec, 0
	.rept 256
	.set stub_start, .
	.if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17)
	.else
	.byte	0x6a, 0x00			/* pushq $0 (dummy error code) */
	.endif
	.if vec < 128
	.byte	0x6a, vec			/* pushq $vec (imm8) */
	.else
	.byte	0x68				/* pushq $vec (imm32, no sign-extension surprise) */
	.long	vec
	.endif
	.byte	0xe9				/* jmp rel32 isr_common (fixed size) */
	.long	isr_common - . - 4
	.fill	STUB_SIZE - (. - stub_start), 1, 0xcc
	.set vec, vec + 1
	.endr
hvft_isr_stubs_end:
	.if (hvft_isr_stubs_end - hvft_isr_stubs) != 256 * STUB_SIZE
	.error "ISR stub table has the wrong size"
	.endif

/*
 * Common path: save all general registers (building struct hvft_frame),
 * call hvft_trap(frame) with a 16-byte aligned stack, restore, drop the
 * vector and error code, iretq. The handler runs on the interrupted stack.
 */
isr_common:
	pushq	%rax
	pushq	%rbx
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%rbp
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	cld
	movq	%rsp, %rdi			/* struct hvft_frame * */
	movq	%rsp, %rbx			/* callee-saved copy */
	andq	$-16, %rsp			/* ABI alignment, whatever the entry RSP was */
	call	hvft_trap
	movq	%rbx, %rsp
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%r11
	popq	%r10
	popq	%r9
	popq	%r8
	popq	%rbp
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rbx
	popq	%rax
	addq	$16, %rsp			/* vector + error code */
	iretq

	/* in .data: the CPU may set the accessed bit (preset here anyway) */
	.section .data
	.p2align 4
gdt:
	.quad	0x0000000000000000		/* null */
	.quad	0x00AF9B000000FFFF		/* 0x08: 64-bit code (L=1), DPL 0 */
	.quad	0x00CF93000000FFFF		/* 0x10: data, writable, DPL 0 */
gdt_end:

	.p2align 4
	.word	0, 0, 0				/* pad so the base is 8-aligned */
gdt_ptr:
	.word	gdt_end - gdt - 1
	.quad	gdt

	.word	0, 0, 0
idt_ptr:
	.word	256 * 16 - 1
	.quad	hvft_idt

	.section .bss
	.p2align 4
	.globl hvft_idt
	.type hvft_idt, @object
hvft_idt:
	.zero	256 * 16
	.size hvft_idt, 256 * 16

	.p2align 4
	.globl hvft_stack_bottom, hvft_stack_top
hvft_stack_bottom:
	.zero	STACK_SIZE
hvft_stack_top:

	.section .note.GNU-stack, "", @progbits
