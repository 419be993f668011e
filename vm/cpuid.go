package vm

import (
	"fmt"
	"runtime"

	"hvft/vm/uc"
)

// CPUID feature bits the board hides, because Unicorn cannot trap the
// instructions they advertise and their results come from the host.
const (
	cpuid1EDXTSC           = 1 << 4
	cpuid1ECXRDRAND        = 1 << 30
	cpuid1ECXHypervisor    = 1 << 31
	cpuid7EBXRDSEED        = 1 << 18
	cpuidExt1EDXRDTSCP     = 1 << 27
	cpuidExt1EDXTSC        = 1 << 4
	cpuidMaxProbedSubleafs = 4
)

type cpuidKey struct{ leaf, sub uint32 }

// CPUModel answers CPUID as the emulated processor does, with the board's
// masks applied. It is the live environment's source of CPUID answers.
type CPUModel struct {
	answers map[cpuidKey][4]uint32
}

// ProbeCPUModel asks a scratch Unicorn engine what its CPU answers to every
// standard and extended leaf (and the first subleafs), then applies masks.
func ProbeCPUModel() (*CPUModel, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	e, err := uc.Open()
	if err != nil {
		return nil, fmt.Errorf("probing the CPU model: %w", err)
	}
	defer e.Close()
	const code = 0x1000
	if err := e.Map(code, 0x1000, uc.ProtAll); err != nil {
		return nil, fmt.Errorf("probing the CPU model: %w", err)
	}
	if err := e.MemWrite(code, []byte{0x0f, 0xa2, 0xf4}); err != nil { // cpuid; hlt
		return nil, fmt.Errorf("probing the CPU model: %w", err)
	}
	ask := func(leaf, sub uint32) ([4]uint32, error) {
		var out [4]uint32
		regs := []uc.Reg{uc.RAX, uc.RCX, uc.RBX, uc.RDX}
		if err := e.RegWriteBatch(regs[:2], []uint64{uint64(leaf), uint64(sub)}); err != nil {
			return out, err
		}
		if err := e.Start(code, code+2, 0, 0); err != nil {
			return out, err
		}
		vals := make([]uint64, 4)
		if err := e.RegReadBatch([]uc.Reg{uc.RAX, uc.RBX, uc.RCX, uc.RDX}, vals); err != nil {
			return out, err
		}
		for i, v := range vals {
			out[i] = uint32(v)
		}
		return out, nil
	}
	m := &CPUModel{answers: map[cpuidKey][4]uint32{}}
	for _, base := range []uint32{0, 0x80000000} {
		top, err := ask(base, 0)
		if err != nil {
			return nil, fmt.Errorf("probing CPUID leaf %#x: %w", base, err)
		}
		max := top[0]
		if max < base || max > base+0x40 {
			max = base
		}
		for leaf := base; leaf <= max; leaf++ {
			for sub := uint32(0); sub < cpuidMaxProbedSubleafs; sub++ {
				r, err := ask(leaf, sub)
				if err != nil {
					return nil, fmt.Errorf("probing CPUID leaf %#x.%d: %w", leaf, sub, err)
				}
				m.answers[cpuidKey{leaf, sub}] = mask(leaf, r)
			}
		}
	}
	return m, nil
}

func mask(leaf uint32, r [4]uint32) [4]uint32 {
	const eax, ebx, ecx, edx = 0, 1, 2, 3
	switch leaf {
	case 1:
		r[edx] &^= cpuid1EDXTSC
		r[ecx] &^= cpuid1ECXRDRAND
		r[ecx] |= cpuid1ECXHypervisor
	case 7:
		r[ebx] &^= cpuid7EBXRDSEED
	case 0x80000001:
		r[edx] &^= cpuidExt1EDXRDTSCP | cpuidExt1EDXTSC
	}
	return r
}

// Answer returns the model's answer; unknown leaves read as zeros.
func (m *CPUModel) Answer(leaf, sub uint32) [4]uint32 {
	if r, ok := m.answers[cpuidKey{leaf, sub}]; ok {
		return r
	}
	if r, ok := m.answers[cpuidKey{leaf, 0}]; ok && sub >= cpuidMaxProbedSubleafs {
		return r
	}
	return [4]uint32{}
}
