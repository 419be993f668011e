package vm

import (
	"fmt"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"hvft/vm/guestelf"
	"hvft/vm/uc"
)

// BareResult is the outcome of a run on plain Unicorn.
type BareResult struct {
	Elapsed time.Duration
	RIP     uint64
}

// RunBare runs img on plain Unicorn, the baseline the hypervisor's cost is
// measured against: all RAM mapped at once, no hooks, no epochs, no
// devices (OUT is ignored, so a guest's power-off falls through to its
// final HLT, where the run ends). A non-zero count makes Unicorn count
// instructions itself, with its own per-instruction hook.
func RunBare(img *guestelf.Image, ramSize uint64, args []string, count uint64) (BareResult, error) {
	return runBare(img, ramSize, args, count, false)
}

func runBare(img *guestelf.Image, ramSize uint64, args []string, count uint64, clock bool) (BareResult, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ram, err := syscall.Mmap(-1, 0, int(ramSize), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return BareResult{}, fmt.Errorf("allocating guest RAM: %w", err)
	}
	defer syscall.Munmap(ram)
	eng, err := uc.Open()
	if err != nil {
		return BareResult{}, err
	}
	defer eng.Close()
	if err := eng.MapPtr(0, ramSize, uc.ProtAll, unsafe.Pointer(&ram[0])); err != nil {
		return BareResult{}, err
	}
	if clock {
		if err := eng.Hooks(bareHandler{}); err != nil {
			return BareResult{}, err
		}
	}
	for _, s := range img.Segments {
		copy(ram[s.Addr:], s.Data)
	}
	info, err := bootInfo(ramSize, args)
	if err != nil {
		return BareResult{}, err
	}
	copy(ram[BootInfoAddr:], info)
	if err := eng.RegWriteBatch([]uc.Reg{uc.RSP, uc.RDI, uc.RFLAGS}, []uint64{ramSize - 16, BootInfoAddr, 0x2}); err != nil {
		return BareResult{}, err
	}
	start := time.Now()
	err = eng.Start(img.Entry, never, 0, count)
	elapsed := time.Since(start)
	rip, _ := eng.RegRead(uc.RIP)
	if err != nil {
		return BareResult{}, fmt.Errorf("bare run stopped at RIP %#x: %w", rip, err)
	}
	return BareResult{Elapsed: elapsed, RIP: rip}, nil
}

// RunBareWithClock is RunBare with the epoch clock's block hook installed
// and nothing else: the cost of counting blocks alone. Ports read all ones
// and OUT is ignored, as on bare Unicorn.
func RunBareWithClock(img *guestelf.Image, ramSize uint64, args []string) (BareResult, error) {
	return runBare(img, ramSize, args, 0, true)
}

// bareHandler answers nothing: a bare run has no devices.
type bareHandler struct{}

func (bareHandler) In(uint32, int) uint32   { return 0xFFFFFFFF }
func (bareHandler) Out(uint32, int, uint32) {}
func (bareHandler) CPUID() bool             { return false }
func (bareHandler) Interrupt(uint32)        {}
