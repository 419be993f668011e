package uc

/*
#include "probe.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// ProbeStopInHook runs a libunicorn-only loop that prints "abcdefghij"
// with OUT, a load following the OUT in its block, and stops the engine
// from the OUT hook at the 'e' before resuming. With precise false the
// stop is uc_emu_stop alone; with precise true it is the hypervisor's
// way (StopPrecise: Unicorn's TLB flushed, the next fill refused). It
// returns what was printed: on Unicorn 2.1.1 a plain stop prints a byte
// twice, because the block is left in the middle and rerun from its start.
func ProbeStopInHook(precise bool) (string, error) {
	var buf [64]byte
	p := 0
	if precise {
		p = 1
	}
	n := C.hv_probe_stop_in_hook(C.int(p), (*C.char)(unsafe.Pointer(&buf[0])), C.int(len(buf)))
	if n < 0 {
		return "", fmt.Errorf("libunicorn probe failed at step %d", -n)
	}
	return string(buf[:n]), nil
}

// ProbeStaleCode runs a libunicorn-only loop, with no hooks, that keeps a
// counter on the page of a stub whose immediate it patches before every
// call, and returns how many of its 100 calls ran the stub's previous
// code. x86 allows none; Unicorn 2.1.1 checks only the first store after
// each TLB fill of a page for code it translated.
func ProbeStaleCode() (int, error) {
	n := C.hv_probe_stale_code()
	if n < 0 {
		return 0, fmt.Errorf("libunicorn probe failed at step %d", -n)
	}
	return int(n), nil
}

// StaleCodeProgram returns ProbeStaleCode's loop (to load at 0x1000) and
// stub (at 0x1800), for running it on an Engine: the loop leaves the count
// of stale calls in R8 and halts.
func StaleCodeProgram() (loop, stub []byte) {
	var l [64]byte
	var s [16]byte
	n := C.hv_probe_stale_program((*C.uint8_t)(unsafe.Pointer(&l[0])), C.int(len(l)), (*C.uint8_t)(unsafe.Pointer(&s[0])), C.int(len(s)))
	return l[:n], s[:6]
}
