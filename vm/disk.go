package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
)

// The block device's ports and codes (docs/board.md, "Block device").
const (
	PortDiskSector  = 0x600
	PortDiskBuffer  = 0x601
	PortDiskCount   = 0x602
	PortDiskCommand = 0x603
	PortDiskStatus  = 0x604
	PortDiskSectors = 0x605

	DiskRead  = 1
	DiskWrite = 2

	DiskIdle      = 0
	DiskBusy      = 1
	DiskOK        = 2
	DiskError     = 3
	DiskUncertain = 4
	// DiskRefused is set in the status when a command arrived while an
	// operation was in flight.
	DiskRefused = 0x100

	SectorSize     = 512
	MaxDiskSectors = 128 // per operation
)

// DiskOp is a disk operation the guest issued: part of the board's state
// from its command until its completion.
type DiskOp struct {
	ID      uint64
	Command uint32
	Sector  uint32
	Buffer  uint32
	Count   uint32
}

func (op DiskOp) String() string {
	kind := "read"
	if op.Command == DiskWrite {
		kind = "write"
	}
	return fmt.Sprintf("disk %s #%d (sectors %d+%d, buffer %#x)", kind, op.ID, op.Sector, op.Count, op.Buffer)
}

// completionArg packs an operation's ID and status into an Event's Arg.
func completionArg(id uint64, status uint32) uint64 { return id<<8 | uint64(status&0xFF) }

// CompletionEvent is the event that completes op with status (and, for a
// successful read, its data).
func CompletionEvent(op DiskOp, status uint32, data []byte) Event {
	return Event{IRQ: IRQDisk, Arg: completionArg(op.ID, status), Data: data}
}

// diskCommand validates and starts a command; it returns the effect for the
// environment (none when refused or invalid: those complete at once).
func (b *Board) diskCommand(command uint32) Effect {
	if b.DiskOp != nil {
		b.DiskStatus |= DiskRefused
		return EffectNone
	}
	b.DiskStatus &^= DiskRefused
	op := DiskOp{Command: command, Sector: b.DiskSector, Buffer: b.DiskBuffer, Count: b.DiskCount}
	end := uint64(op.Sector) + uint64(op.Count)
	bufEnd := uint64(op.Buffer) + uint64(op.Count)*SectorSize
	if (command != DiskRead && command != DiskWrite) || op.Count == 0 || op.Count > MaxDiskSectors ||
		b.DiskSectors == 0 || end > b.DiskSectors || bufEnd > b.RAMSize {
		b.DiskStatus = DiskError
		b.PICPending |= 1 << IRQDisk
		return EffectNone
	}
	b.DiskOps++
	op.ID = b.DiskOps
	b.DiskOp = &op
	b.DiskStatus = DiskBusy
	if command == DiskWrite {
		return EffectDiskWrite
	}
	return EffectDiskRead
}

// completeDisk applies a completion event: a read's data lands in RAM
// through dma (which must keep the machine's translations and RAM digest
// in step), the status is set, IRQ 2 is raised.
func (b *Board) completeDisk(ev Event, dma func(addr uint64, data []byte) error) error {
	id, status := ev.Arg>>8, uint32(ev.Arg&0xFF)
	op := b.DiskOp
	if op == nil || op.ID != id {
		return fmt.Errorf("completion of disk operation %d, but %v is in flight", id, b.DiskOp)
	}
	switch status {
	case DiskOK:
		if op.Command == DiskRead {
			n := int(op.Count) * SectorSize
			if len(ev.Data) != n {
				return fmt.Errorf("completion of %v carries %d bytes, want %d", op, len(ev.Data), n)
			}
			if err := dma(uint64(op.Buffer), ev.Data); err != nil {
				return fmt.Errorf("completion of %v: %w", op, err)
			}
		}
	case DiskError, DiskUncertain:
	default:
		return fmt.Errorf("completion of %v with unknown status %d", op, status)
	}
	b.DiskOp = nil
	b.DiskStatus = status | b.DiskStatus&DiskRefused // only a new command clears the refusal
	b.PICPending |= 1 << IRQDisk
	return nil
}

// DiskSync says when writes reach stable storage.
type DiskSync int

// Sync policies.
const (
	SyncAlways DiskSync = iota // fsync before a write completes (durable)
	SyncNever                  // leave it to the OS
)

// HostDisk is a disk image file: the shared disk both replicas name. Only
// a primary (or an unreplicated run) opens it for I/O.
type HostDisk struct {
	f       *os.File
	path    string
	sectors uint64
	sync    DiskSync
	reads   atomic.Uint64
	writes  atomic.Uint64

	// The fence (diskfence.go): nil until Claim, then the fence file and
	// this handle's token; onStale hears of a write the fence refused.
	mu      sync.Mutex
	fence   *os.File
	token   FenceToken
	onStale func(error)
	notice  func(string) // hears what a claim did to get the disk
	// beforeWrite, in tests, runs inside a fenced write's lock.
	beforeWrite func()
}

// ErrDiskSize means an image's size is not a positive multiple of the
// sector size.
var ErrDiskSize = errors.New("disk image size must be a positive multiple of 512 bytes")

// DiskSectorsOf returns the size of an existing image, or creates one of
// createSize bytes (zero-filled) when it is absent. It never reads the
// image's contents: a backup calls it too.
func DiskSectorsOf(path string, createSize uint64) (uint64, error) {
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) && createSize > 0 {
		if createSize%SectorSize != 0 {
			return 0, fmt.Errorf("disk image %s: size %d: %w", path, createSize, ErrDiskSize)
		}
		// Made whole under a temporary name, then linked into place: a
		// replica starting at the same moment sees no image or a whole
		// one, and the loser of the race uses the winner's.
		switch err := createImage(path, createSize); {
		case err == nil:
			return createSize / SectorSize, nil
		case !errors.Is(err, os.ErrExist):
			return 0, fmt.Errorf("creating disk image %s: %w", path, err)
		}
		st, err = os.Stat(path)
	}
	if err != nil {
		return 0, fmt.Errorf("disk image: %w", err)
	}
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("disk image %s is not a regular file", path)
	}
	if st.Size() == 0 || st.Size()%SectorSize != 0 {
		return 0, fmt.Errorf("disk image %s is %d bytes: %w", path, st.Size(), ErrDiskSize)
	}
	if uint64(st.Size())/SectorSize > 1<<32 {
		return 0, fmt.Errorf("disk image %s has more than 2^32 sectors", path)
	}
	return uint64(st.Size()) / SectorSize, nil
}

func createImage(path string, size uint64) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".hvft-image-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Truncate(int64(size)); err != nil {
		return err
	}
	return os.Link(f.Name(), path)
}

// OpenDisk opens an existing image for reading and writing.
func OpenDisk(path string, sync DiskSync) (*HostDisk, error) {
	sectors, err := DiskSectorsOf(path, 0)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening disk image for writing: %w", err)
	}
	return &HostDisk{f: f, path: path, sectors: sectors, sync: sync}, nil
}

// OnNotice sets what hears of what a claim had to do to get the disk (a
// stopped writer of an older generation killed).
func (d *HostDisk) OnNotice(fn func(string)) {
	d.mu.Lock()
	d.notice = fn
	d.mu.Unlock()
}

// OnStale sets what hears of a write the disk's fence refused: a newer
// generation owns the disk, so this replica must stop.
func (d *HostDisk) OnStale(fn func(error)) {
	d.mu.Lock()
	d.onStale = fn
	d.mu.Unlock()
}

// Sectors is the image's size in sectors.
func (d *HostDisk) Sectors() uint64 { return d.sectors }

// Counts reports the reads and writes performed.
func (d *HostDisk) Counts() (reads, writes uint64) { return d.reads.Load(), d.writes.Load() }

// Close closes the image.
func (d *HostDisk) Close() error {
	d.mu.Lock()
	if d.fence != nil {
		d.fence.Close()
	}
	d.mu.Unlock()
	return d.f.Close()
}

// perform carries out op (data is a write's payload) and returns the
// completion event.
func (d *HostDisk) perform(op DiskOp, data []byte) Event {
	off := int64(op.Sector) * SectorSize
	n := int(op.Count) * SectorSize
	if uint64(op.Sector)+uint64(op.Count) > d.sectors {
		return CompletionEvent(op, DiskError, nil)
	}
	if op.Command == DiskRead {
		buf := make([]byte, n)
		if _, err := d.f.ReadAt(buf, off); err != nil {
			return CompletionEvent(op, DiskError, nil)
		}
		d.reads.Add(1)
		return CompletionEvent(op, DiskOK, buf)
	}
	if len(data) != n {
		return CompletionEvent(op, DiskError, nil)
	}
	if err := d.fencedWrite(data, off); err != nil {
		if errors.Is(err, ErrStaleGeneration) {
			d.mu.Lock()
			stale := d.onStale
			d.mu.Unlock()
			if stale != nil {
				stale(fmt.Errorf("disk image %s: %w", d.path, err))
			}
		}
		return CompletionEvent(op, DiskError, nil)
	}
	if d.sync == SyncAlways {
		if err := d.f.Sync(); err != nil {
			return CompletionEvent(op, DiskError, nil)
		}
	}
	d.writes.Add(1)
	return CompletionEvent(op, DiskOK, nil)
}
