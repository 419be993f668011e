// Package linux is hvft's system-call personality: what a static x86-64
// Linux program sees when it runs on the board in place of a board guest.
// It owns the program's loading (ELF, initial stack, auxiliary vector), its
// process state (address-space layout, brk, file descriptors, working
// directory) and the Linux ABI that the SYSCALL instruction reaches. A call
// whose answer comes from outside the machine (a file's bytes, the clock,
// randomness) is asked of the environment as a Call and answered with a
// Result, so that a replica replays it; the Host performs Calls on the live
// side. It knows nothing of Unicorn: the machine it runs on is an
// interface (docs/linux.md).
package linux

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"errors"
	"fmt"
	"io"
)

// MaxProgramSize bounds the executable accepted.
const MaxProgramSize = 256 << 20

// PIEBase is where a static-PIE program is loaded.
const PIEBase = 0x5555_5555_4000

// Segment is one PT_LOAD segment at its final virtual address.
type Segment struct {
	Addr    uint64
	MemSize uint64
	Data    []byte
	Prot    Prot
}

// Program is a validated static Linux executable.
type Program struct {
	Entry    uint64
	Segments []Segment
	// PHdr is the address of the program headers in memory (AT_PHDR).
	PHdr, PHEnt, PHNum uint64
	// Digest is the SHA-256 of the file: what a backup must match.
	Digest [32]byte
	PIE    bool
}

// ErrDynamic is returned for a dynamically linked executable.
var ErrDynamic = errors.New("dynamic executables are not supported: link with -static")

// ParseProgram validates data as a static x86-64 Linux executable (ET_EXEC,
// or ET_DYN without an interpreter: static-PIE).
func ParseProgram(data []byte) (*Program, error) {
	if len(data) > MaxProgramSize {
		return nil, fmt.Errorf("program is %d bytes, more than the %d accepted", len(data), MaxProgramSize)
	}
	if len(data) > 4 && string(data[:4]) == elf.ELFMAG && elf.Class(data[4]) == elf.ELFCLASS32 {
		return nil, errors.New("a 32-bit ELF: 32-bit programs are not supported (want an x86-64 executable)")
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("not an ELF file: %w", err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 {
		return nil, fmt.Errorf("ELF class %v: 32-bit programs are not supported (want an x86-64 ELFCLASS64 executable)", f.Class)
	}
	if f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("ELF machine %v: want EM_X86_64", f.Machine)
	}
	p := &Program{Digest: sha256.Sum256(data), PHEnt: 56, PHNum: uint64(len(f.Progs))}
	var base uint64
	switch f.Type {
	case elf.ET_EXEC:
	case elf.ET_DYN:
		p.PIE, base = true, PIEBase
	default:
		return nil, fmt.Errorf("ELF type %v: want an executable (ET_EXEC or static-PIE ET_DYN)", f.Type)
	}
	for _, ph := range f.Progs {
		if ph.Type == elf.PT_INTERP {
			return nil, ErrDynamic
		}
	}
	phoff := uint64(0)
	if len(data) >= 64 {
		phoff = le64(data[32:40])
	}
	for i, ph := range f.Progs {
		if ph.Type == elf.PT_PHDR {
			p.PHdr = base + ph.Vaddr
		}
		if ph.Type != elf.PT_LOAD || ph.Memsz == 0 {
			continue
		}
		if ph.Filesz > ph.Memsz {
			return nil, fmt.Errorf("segment %d: file size %#x exceeds memory size %#x", i, ph.Filesz, ph.Memsz)
		}
		addr := base + ph.Vaddr
		if addr < minMapAddr || addr+ph.Memsz < addr || addr+ph.Memsz > stackTop-stackMax {
			return nil, fmt.Errorf("segment %d at %#x-%#x lies outside the user address space", i, addr, addr+ph.Memsz)
		}
		if ph.Filesz > uint64(len(data)) || ph.Off > uint64(len(data))-ph.Filesz {
			return nil, fmt.Errorf("segment %d: file range %#x+%#x beyond the %d-byte file", i, ph.Off, ph.Filesz, len(data))
		}
		seg := Segment{Addr: addr, MemSize: ph.Memsz, Data: make([]byte, ph.Filesz)}
		if _, err := io.ReadFull(ph.Open(), seg.Data); err != nil {
			return nil, fmt.Errorf("segment %d: %w", i, err)
		}
		if ph.Flags&elf.PF_R != 0 {
			seg.Prot |= ProtRead
		}
		if ph.Flags&elf.PF_W != 0 {
			seg.Prot |= ProtWrite
		}
		if ph.Flags&elf.PF_X != 0 {
			seg.Prot |= ProtExec
		}
		for _, s := range p.Segments {
			if seg.Addr < s.Addr+s.MemSize && s.Addr < seg.Addr+seg.MemSize {
				return nil, fmt.Errorf("segment %d at %#x overlaps another", i, addr)
			}
		}
		if p.PHdr == 0 && ph.Off <= phoff && phoff < ph.Off+ph.Filesz {
			p.PHdr = addr + (phoff - ph.Off)
		}
		p.Segments = append(p.Segments, seg)
	}
	if len(p.Segments) == 0 {
		return nil, errors.New("the program has no loadable segment")
	}
	p.Entry = base + f.Entry
	entryOK := false
	for _, s := range p.Segments {
		if s.Prot&ProtExec != 0 && s.Addr <= p.Entry && p.Entry < s.Addr+s.MemSize {
			entryOK = true
		}
	}
	if !entryOK {
		return nil, fmt.Errorf("entry point %#x lies in no executable segment", p.Entry)
	}
	return p, nil
}

func le64(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func pageDown(a uint64) uint64 { return a &^ (PageSize - 1) }
func pageUp(a uint64) uint64   { return (a + PageSize - 1) &^ (PageSize - 1) }
