package vm

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDiskCommandValidation(t *testing.T) {
	const ram = 1 << 20
	cases := []struct {
		name                  string
		cmd                   uint32
		sector, buffer, count uint32
		want                  Effect
		status                uint32
	}{
		{"read", DiskRead, 0, 0x1000, 1, EffectDiskRead, DiskBusy},
		{"write", DiskWrite, 7, 0x2000, 9, EffectDiskWrite, DiskBusy},
		{"count zero", DiskRead, 0, 0x1000, 0, EffectNone, DiskError},
		{"count too big", DiskRead, 0, 0x1000, 129, EffectNone, DiskError},
		{"past the end", DiskRead, 15, 0x1000, 2, EffectNone, DiskError},
		{"buffer outside RAM", DiskWrite, 0, ram - 256, 1, EffectNone, DiskError},
		{"unknown command", 9, 0, 0x1000, 1, EffectNone, DiskError},
	}
	for _, c := range cases {
		b := NewBoard(ram, 16)
		b.out(PortDiskSector, c.sector)
		b.out(PortDiskBuffer, c.buffer)
		b.out(PortDiskCount, c.count)
		if got := b.out(PortDiskCommand, c.cmd); got != c.want || b.DiskStatus != c.status {
			t.Errorf("%s: effect %v status %d, want %v %d", c.name, got, b.DiskStatus, c.want, c.status)
		}
		if c.status == DiskError && b.PICPending&(1<<IRQDisk) == 0 {
			t.Errorf("%s: an invalid command must complete at once with IRQ 2", c.name)
		}
	}
	b := NewBoard(ram, 16)
	b.out(PortDiskCount, 1)
	b.out(PortDiskCommand, DiskRead)
	if got := b.out(PortDiskCommand, DiskWrite); got != EffectNone || b.DiskStatus != DiskBusy|DiskRefused || b.DiskOp.Command != DiskRead {
		t.Fatalf("command while busy: effect %v status %#x op %v", got, b.DiskStatus, b.DiskOp)
	}
	if NewBoard(ram, 0).out(PortDiskCommand, DiskRead) != EffectNone {
		t.Error("command without a disk accepted")
	}
}

func TestDiskCompletion(t *testing.T) {
	ram := make([]byte, 1<<20)
	dma := func(addr uint64, data []byte) error { copy(ram[addr:], data); return nil }
	b := NewBoard(uint64(len(ram)), 16)
	b.out(PortDiskBuffer, 0x3000)
	b.out(PortDiskCount, 1)
	b.out(PortDiskCommand, DiskRead)
	op := *b.DiskOp
	if err := b.completeDisk(CompletionEvent(DiskOp{ID: op.ID + 1}, DiskOK, nil), dma); err == nil {
		t.Error("completion of another operation accepted")
	}
	if err := b.completeDisk(CompletionEvent(op, DiskOK, make([]byte, 100)), dma); err == nil {
		t.Error("completion with the wrong amount of data accepted")
	}
	enc := b.encode(nil)
	back, _, err := decodeBoard(enc)
	if err != nil || back.DiskOp == nil || *back.DiskOp != op {
		t.Fatalf("board with an operation in flight does not round-trip: %v %v", err, back.DiskOp)
	}
	data := bytes.Repeat([]byte{0xab}, SectorSize)
	if err := b.completeDisk(CompletionEvent(op, DiskOK, data), dma); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ram[0x3000:0x3000+SectorSize], data) || b.DiskOp != nil || b.DiskStatus != DiskOK || b.PICPending&(1<<IRQDisk) == 0 {
		t.Fatalf("after completion: status %d op %v", b.DiskStatus, b.DiskOp)
	}
}

func TestHostDisk(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "d.img")
	n, err := DiskSectorsOf(path, 8*SectorSize)
	if err != nil || n != 8 {
		t.Fatalf("create: %d %v", n, err)
	}
	if n, err := DiskSectorsOf(path, 64*SectorSize); err != nil || n != 8 {
		t.Fatalf("an existing image keeps its size: %d %v", n, err)
	}
	d, err := OpenDisk(path, SyncAlways)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	payload := bytes.Repeat([]byte("hvft"), 2*SectorSize/4)
	if ev := d.perform(DiskOp{ID: 1, Command: DiskWrite, Sector: 6, Count: 2}, payload); ev.Arg&0xFF != DiskOK {
		t.Fatalf("write: status %d", ev.Arg&0xFF)
	}
	ev := d.perform(DiskOp{ID: 2, Command: DiskRead, Sector: 6, Count: 2}, nil)
	if ev.Arg != 2<<8|DiskOK || !bytes.Equal(ev.Data, payload) {
		t.Fatalf("read back: arg %#x, %d bytes", ev.Arg, len(ev.Data))
	}
	if ev := d.perform(DiskOp{ID: 3, Command: DiskRead, Sector: 7, Count: 2}, nil); ev.Arg&0xFF != DiskError {
		t.Error("read past the end succeeded")
	}
	before, _ := os.ReadFile(path)
	if ev := d.perform(DiskOp{ID: 4, Command: DiskWrite, Sector: 0, Count: 1}, []byte("short")); ev.Arg&0xFF != DiskError {
		t.Error("write with a short payload succeeded")
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("a refused write changed the image")
	}

	bad := map[string]string{
		filepath.Join(dir, "missing.img"): "no such file",
		dir:                               "not a regular file",
	}
	odd := filepath.Join(dir, "odd.img")
	os.WriteFile(odd, make([]byte, 1000), 0o644)
	bad[odd] = "multiple of 512"
	for p, want := range bad {
		if _, err := DiskSectorsOf(p, 0); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", p, err, want)
		}
	}
	if _, err := DiskSectorsOf(filepath.Join(dir, "new.img"), 1000); err == nil {
		t.Error("created an image of 1000 bytes")
	}
	if _, err := DiskSectorsOf(filepath.Join(dir, "nodir", "x.img"), 4096); err == nil {
		t.Error("created an image in a missing directory")
	}
}
