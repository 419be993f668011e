package uc

/*
#include <unicorn/unicorn.h>
*/
import "C"

// Reg names an x86 register in Unicorn's numbering.
type Reg int

// The x86-64 registers the hypervisor uses.
const (
	RAX    Reg = C.UC_X86_REG_RAX
	RBX    Reg = C.UC_X86_REG_RBX
	RCX    Reg = C.UC_X86_REG_RCX
	RDX    Reg = C.UC_X86_REG_RDX
	RSI    Reg = C.UC_X86_REG_RSI
	RDI    Reg = C.UC_X86_REG_RDI
	RBP    Reg = C.UC_X86_REG_RBP
	RSP    Reg = C.UC_X86_REG_RSP
	R8     Reg = C.UC_X86_REG_R8
	R9     Reg = C.UC_X86_REG_R9
	R10    Reg = C.UC_X86_REG_R10
	R11    Reg = C.UC_X86_REG_R11
	R12    Reg = C.UC_X86_REG_R12
	R13    Reg = C.UC_X86_REG_R13
	R14    Reg = C.UC_X86_REG_R14
	R15    Reg = C.UC_X86_REG_R15
	RIP    Reg = C.UC_X86_REG_RIP
	RFLAGS Reg = C.UC_X86_REG_RFLAGS
	EAX    Reg = C.UC_X86_REG_EAX
	ECX    Reg = C.UC_X86_REG_ECX

	CS Reg = C.UC_X86_REG_CS
	DS Reg = C.UC_X86_REG_DS
	ES Reg = C.UC_X86_REG_ES
	FS Reg = C.UC_X86_REG_FS
	GS Reg = C.UC_X86_REG_GS
	SS Reg = C.UC_X86_REG_SS

	FSBase Reg = C.UC_X86_REG_FS_BASE
	GSBase Reg = C.UC_X86_REG_GS_BASE

	CR0 Reg = C.UC_X86_REG_CR0
	CR2 Reg = C.UC_X86_REG_CR2
	CR3 Reg = C.UC_X86_REG_CR3
	CR4 Reg = C.UC_X86_REG_CR4
	CR8 Reg = C.UC_X86_REG_CR8

	DR0 Reg = C.UC_X86_REG_DR0
	DR1 Reg = C.UC_X86_REG_DR1
	DR2 Reg = C.UC_X86_REG_DR2
	DR3 Reg = C.UC_X86_REG_DR3
	DR6 Reg = C.UC_X86_REG_DR6
	DR7 Reg = C.UC_X86_REG_DR7

	GDTR Reg = C.UC_X86_REG_GDTR
	IDTR Reg = C.UC_X86_REG_IDTR
	LDTR Reg = C.UC_X86_REG_LDTR
	TR   Reg = C.UC_X86_REG_TR

	FPCW  Reg = C.UC_X86_REG_FPCW
	FPSW  Reg = C.UC_X86_REG_FPSW
	FPTAG Reg = C.UC_X86_REG_FPTAG
	FIP   Reg = C.UC_X86_REG_FIP
	FCS   Reg = C.UC_X86_REG_FCS
	FDP   Reg = C.UC_X86_REG_FDP
	FDS   Reg = C.UC_X86_REG_FDS
	FOP   Reg = C.UC_X86_REG_FOP
	MXCSR Reg = C.UC_X86_REG_MXCSR
	ST0   Reg = C.UC_X86_REG_ST0
	XMM0  Reg = C.UC_X86_REG_XMM0
)

// ST returns the x87 register ST(i), i in 0..7.
func ST(i int) Reg { return ST0 + Reg(i) }

// XMM returns the SSE register XMMi, i in 0..15.
func XMM(i int) Reg {
	if i < 8 {
		return XMM0 + Reg(i)
	}
	return Reg(C.UC_X86_REG_XMM8) + Reg(i-8)
}
