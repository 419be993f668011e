package uc

// The Go side of the C trampolines in uc.go. A file with //export may hold
// only C declarations in its preamble, so these live apart.

/*
#include <stdint.h>
*/
import "C"

import "runtime/cgo"

//export hvftGoIn
func hvftGoIn(h C.uintptr_t, port C.uint32_t, size C.int) C.uint32_t {
	return C.uint32_t(cgo.Handle(h).Value().(Handler).In(uint32(port), int(size)))
}

//export hvftGoOut
func hvftGoOut(h C.uintptr_t, port C.uint32_t, size C.int, value C.uint32_t) {
	cgo.Handle(h).Value().(Handler).Out(uint32(port), int(size), uint32(value))
}

//export hvftGoCPUID
func hvftGoCPUID(h C.uintptr_t) C.int {
	if cgo.Handle(h).Value().(Handler).CPUID() {
		return 1
	}
	return 0
}

//export hvftGoIntr
func hvftGoIntr(h C.uintptr_t, intno C.uint32_t) {
	cgo.Handle(h).Value().(Handler).Interrupt(uint32(intno))
}

//export hvftGoSyscall
func hvftGoSyscall(h C.uintptr_t) {
	cgo.Handle(h).Value().(SyscallHandler).Syscall()
}
