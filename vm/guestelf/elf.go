// Package guestelf loads a guest image: a static x86-64 ELF64 executable
// whose loadable segments must fit in the board's RAM. It only parses and
// validates; copying into guest memory is the machine's business.
package guestelf

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"errors"
	"fmt"
	"io"
)

// MaxImageSize bounds the image file accepted, so a hostile length field in
// a header cannot make the loader allocate without bound.
const MaxImageSize = 256 << 20

// Segment is one PT_LOAD segment: Data is copied to Addr and the rest of
// MemSize is zero-filled.
type Segment struct {
	Addr    uint64
	Data    []byte
	MemSize uint64
}

// Image is a validated guest executable.
type Image struct {
	Entry    uint64
	Segments []Segment
	// Digest is the SHA-256 of the file's bytes: what a backup must match.
	Digest [32]byte
}

// Parse validates data as a guest image for a machine with ramSize bytes of
// RAM, whose low reserved bytes (below minAddr) hold boot information.
func Parse(data []byte, ramSize, minAddr uint64) (*Image, error) {
	if len(data) > MaxImageSize {
		return nil, fmt.Errorf("guest image is %d bytes, more than the %d accepted", len(data), MaxImageSize)
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("not an ELF file: %w", err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 {
		return nil, fmt.Errorf("ELF class %v: want ELFCLASS64", f.Class)
	}
	if f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("ELF machine %v: want EM_X86_64", f.Machine)
	}
	if f.Type != elf.ET_EXEC {
		return nil, fmt.Errorf("ELF type %v: want a static executable (ET_EXEC)", f.Type)
	}
	img := &Image{Entry: f.Entry, Digest: sha256.Sum256(data)}
	entryOK := false
	for i, p := range f.Progs {
		switch p.Type {
		case elf.PT_INTERP, elf.PT_DYNAMIC:
			return nil, fmt.Errorf("program header %d is %v: the image must be static", i, p.Type)
		case elf.PT_LOAD:
		default:
			continue
		}
		if p.Filesz > p.Memsz {
			return nil, fmt.Errorf("segment %d: file size %#x exceeds memory size %#x", i, p.Filesz, p.Memsz)
		}
		end := p.Paddr + p.Memsz
		if end < p.Paddr || p.Paddr < minAddr || end > ramSize {
			return nil, fmt.Errorf("segment %d at %#x-%#x lies outside RAM (%#x-%#x)", i, p.Paddr, end, minAddr, ramSize)
		}
		if p.Filesz > uint64(len(data)) || p.Off > uint64(len(data))-p.Filesz {
			return nil, fmt.Errorf("segment %d: file range %#x+%#x beyond the %d-byte file", i, p.Off, p.Filesz, len(data))
		}
		seg := Segment{Addr: p.Paddr, MemSize: p.Memsz, Data: make([]byte, p.Filesz)}
		if _, err := io.ReadFull(p.Open(), seg.Data); err != nil {
			return nil, fmt.Errorf("segment %d: %w", i, err)
		}
		for _, s := range img.Segments {
			if seg.Addr < s.Addr+s.MemSize && s.Addr < end {
				return nil, fmt.Errorf("segment %d at %#x-%#x overlaps another", i, seg.Addr, end)
			}
		}
		if p.Flags&elf.PF_X != 0 && img.Entry >= p.Paddr && img.Entry < end {
			entryOK = true
		}
		img.Segments = append(img.Segments, seg)
	}
	if len(img.Segments) == 0 {
		return nil, errors.New("ELF file has no loadable segment")
	}
	if !entryOK {
		return nil, fmt.Errorf("entry point %#x is not inside an executable segment", img.Entry)
	}
	return img, nil
}
