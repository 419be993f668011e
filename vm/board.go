package vm

import (
	"encoding/binary"
	"fmt"
)

// The board's port map, the guest's view of which is docs/board.md and
// guests/include/hvft.h. Keep the three in step.
const (
	PortConsoleTX      = 0x500
	PortConsoleRX      = 0x501
	PortConsoleRXAvail = 0x502
	PortClockLo        = 0x510
	PortClockHi        = 0x511
	PortRandom         = 0x520
	PortTimerPeriod    = 0x530
	PortPICMask        = 0x540
	PortPICPending     = 0x541
	PortPICEOI         = 0x542
	PortPICInService   = 0x543
	PortPowerOff       = 0x550
	PortBoardID        = 0x560
)

// IRQ lines; IRQ n arrives at IDT vector IRQVectorBase+n.
const (
	IRQTimer      = 0
	IRQConsoleRX  = 1
	IRQDisk       = 2 // reserved for the disk
	NumIRQs       = 8
	IRQVectorBase = 32
)

// BoardID is what PortBoardID reads: "HVFT" little-endian.
const BoardID = 0x54465648

// BoardVersion names this port map, device behaviour and boot state
// (docs/board.md); a backup must run the same one, and a log is replayed
// only on it. The boot state counts because it is in the first epoch's
// hash: a pair that booted differently would diverge at once rather than
// be refused at the handshake.
const BoardVersion = 3

// RXCapacity bounds the console input FIFO. The host side delivers no more
// than fits, so accepted input is never dropped.
const RXCapacity = 4096

// rxEmpty is what PortConsoleRX reads when the FIFO is empty.
const rxEmpty = 0xFFFFFFFF

// Board is the devices' deterministic state: everything a backup must hold
// to take over, and nothing that depends on the host. Host-dependent values
// (clock, randomness, arrival of ticks and input) reach it only as
// environment answers and epoch-boundary events.
type Board struct {
	ConsoleOut   uint64 // console bytes the guest has written: their sequence numbers
	RX           []byte // console input delivered but not yet read
	ClockLatch   uint32 // high half of the clock value read by the last PortClockLo
	TimerPeriod  uint32 // microseconds; 0 = stopped
	PICMask      uint32
	PICPending   uint32
	PICInService uint32
	PoweredOff   bool
	ExitCode     uint32

	// Configuration the guest can observe; equal on both replicas.
	RAMSize     uint64
	DiskSectors uint64
	// The block device: its registers, status, operation count and the
	// operation in flight (nil when idle).
	DiskSector, DiskBuffer, DiskCount, DiskStatus uint32
	DiskOps                                       uint64
	DiskOp                                        *DiskOp
}

// NewBoard returns the board at reset: every IRQ masked, timer stopped,
// disk idle.
func NewBoard(ramSize, diskSectors uint64) *Board {
	return &Board{PICMask: 0xFFFFFFFF, RAMSize: ramSize, DiskSectors: diskSectors}
}

// Deterministic reports whether the board alone answers an IN at port; the
// live environment passes such answers through, and replay checks the log
// against them.
func Deterministic(port uint32) bool {
	switch port {
	case PortClockLo, PortRandom:
		return false
	}
	return true
}

// inLocal is the board's own answer to an IN at port; for the clock and the
// random source the environment supplies the answer instead.
func (b *Board) inLocal(port uint32) uint64 {
	switch port {
	case PortConsoleRX:
		if len(b.RX) == 0 {
			return rxEmpty
		}
		return uint64(b.RX[0])
	case PortConsoleRXAvail:
		return uint64(len(b.RX))
	case PortClockHi:
		return uint64(b.ClockLatch)
	case PortTimerPeriod:
		return uint64(b.TimerPeriod)
	case PortPICMask:
		return uint64(b.PICMask)
	case PortPICPending:
		return uint64(b.PICPending)
	case PortPICInService:
		return uint64(b.PICInService)
	case PortBoardID:
		return BoardID
	case PortDiskStatus:
		return uint64(b.DiskStatus)
	case PortDiskSectors:
		return b.DiskSectors
	}
	return 0xFFFFFFFF // nothing at this port: an open bus reads all ones
}

// completeIn applies the side effects of an IN answered with answer and
// returns the 32-bit value the guest sees.
func (b *Board) completeIn(port uint32, answer uint64) uint32 {
	switch port {
	case PortConsoleRX:
		if len(b.RX) > 0 && answer != rxEmpty {
			b.RX = b.RX[1:]
		}
	case PortClockLo:
		b.ClockLatch = uint32(answer >> 32)
	}
	return uint32(answer)
}

// Effect is what an OUT asks of the host beyond the board's state.
type Effect int

// Effects of an OUT.
const (
	EffectNone      Effect = iota
	EffectConsole          // a console byte to emit
	EffectTimer            // the timer was reprogrammed
	EffectPowerOff         // the guest powered off
	EffectDiskRead         // a disk read to perform
	EffectDiskWrite        // a disk write to perform (an output)
	EffectStream           // a Linux program wrote standard output or error (Output.Data)
)

// out applies an OUT to the board's state.
func (b *Board) out(port uint32, value uint32) Effect {
	switch port {
	case PortConsoleTX:
		b.ConsoleOut++
		return EffectConsole
	case PortTimerPeriod:
		b.TimerPeriod = value
		return EffectTimer
	case PortPICMask:
		b.PICMask = value
	case PortPICEOI:
		if value < 32 {
			b.PICInService &^= 1 << value
		}
	case PortPowerOff:
		b.PoweredOff = true
		b.ExitCode = value
		return EffectPowerOff
	case PortDiskSector:
		b.DiskSector = value
	case PortDiskBuffer:
		b.DiskBuffer = value
	case PortDiskCount:
		b.DiskCount = value
	case PortDiskCommand:
		return b.diskCommand(value)
	}
	return EffectNone
}

// raise applies one boundary event.
func (b *Board) raise(ev Event) error {
	if ev.IRQ >= NumIRQs {
		return fmt.Errorf("event for IRQ %d: the board has %d lines", ev.IRQ, NumIRQs)
	}
	if ev.IRQ == IRQDisk {
		return fmt.Errorf("disk completion outside the machine")
	}
	if ev.IRQ == IRQConsoleRX {
		if len(b.RX)+len(ev.Data) > RXCapacity {
			return fmt.Errorf("console input of %d bytes overflows the FIFO (%d of %d held)", len(ev.Data), len(b.RX), RXCapacity)
		}
		b.RX = append(b.RX, ev.Data...)
	}
	b.PICPending |= 1 << ev.IRQ
	return nil
}

// deliverable returns the lowest IRQ that is pending, unmasked and not in
// service.
func (b *Board) deliverable() (int, bool) {
	ready := b.PICPending &^ b.PICMask &^ b.PICInService
	for irq := 0; irq < NumIRQs; irq++ {
		if ready&(1<<irq) != 0 {
			return irq, true
		}
	}
	return 0, false
}

// wakeMask is the set of IRQs that, once raised, could be delivered now.
func (b *Board) wakeMask() uint32 {
	return ^b.PICMask &^ b.PICInService & (1<<NumIRQs - 1)
}

func (b *Board) accept(irq int) {
	b.PICPending &^= 1 << irq
	b.PICInService |= 1 << irq
}

// encode appends the board's state in a fixed layout, for hashing and
// snapshots alike.
func (b *Board) encode(buf []byte) []byte {
	buf = binary.LittleEndian.AppendUint64(buf, b.ConsoleOut)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(b.RX)))
	buf = append(buf, b.RX...)
	for _, v := range []uint32{b.ClockLatch, b.TimerPeriod, b.PICMask, b.PICPending, b.PICInService, b.ExitCode} {
		buf = binary.LittleEndian.AppendUint32(buf, v)
	}
	buf = append(buf, boolByte(b.PoweredOff))
	buf = binary.LittleEndian.AppendUint64(buf, b.RAMSize)
	buf = binary.LittleEndian.AppendUint64(buf, b.DiskSectors)
	for _, v := range []uint32{b.DiskSector, b.DiskBuffer, b.DiskCount, b.DiskStatus} {
		buf = binary.LittleEndian.AppendUint32(buf, v)
	}
	buf = binary.LittleEndian.AppendUint64(buf, b.DiskOps)
	if b.DiskOp == nil {
		return append(buf, 0)
	}
	op := b.DiskOp
	buf = append(buf, 1)
	buf = binary.LittleEndian.AppendUint64(buf, op.ID)
	for _, v := range []uint32{op.Command, op.Sector, op.Buffer, op.Count} {
		buf = binary.LittleEndian.AppendUint32(buf, v)
	}
	return buf
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// validate checks a board decoded from a peer or a file against the
// machine it is to run on: the same configuration, and an operation in
// flight that the board itself could have started.
func (b *Board) validate(ramSize, diskSectors uint64) error {
	if b.RAMSize != ramSize || b.DiskSectors != diskSectors {
		return fmt.Errorf("board state for %d bytes of RAM and %d disk sectors; this machine has %d and %d", b.RAMSize, b.DiskSectors, ramSize, diskSectors)
	}
	if op := b.DiskOp; op != nil {
		if (op.Command != DiskRead && op.Command != DiskWrite) || op.Count == 0 || op.Count > MaxDiskSectors ||
			uint64(op.Sector)+uint64(op.Count) > diskSectors || uint64(op.Buffer)+uint64(op.Count)*SectorSize > ramSize {
			return fmt.Errorf("board state: %v in flight lies outside the disk or RAM", op)
		}
	}
	return nil
}

// decodeBoard reads what encode wrote and returns the rest of buf.
func decodeBoard(buf []byte) (*Board, []byte, error) {
	var r reader
	r.buf = buf
	b := &Board{}
	b.ConsoleOut = r.u64()
	n := r.u32()
	if n > RXCapacity {
		return nil, nil, fmt.Errorf("board state: console FIFO of %d bytes exceeds %d", n, RXCapacity)
	}
	b.RX = append([]byte(nil), r.bytes(int(n))...)
	b.ClockLatch, b.TimerPeriod, b.PICMask = r.u32(), r.u32(), r.u32()
	b.PICPending, b.PICInService, b.ExitCode = r.u32(), r.u32(), r.u32()
	b.PoweredOff = r.u8() != 0
	b.RAMSize, b.DiskSectors = r.u64(), r.u64()
	b.DiskSector, b.DiskBuffer, b.DiskCount, b.DiskStatus = r.u32(), r.u32(), r.u32(), r.u32()
	b.DiskOps = r.u64()
	if r.u8() != 0 {
		op := &DiskOp{ID: r.u64()}
		op.Command, op.Sector, op.Buffer, op.Count = r.u32(), r.u32(), r.u32(), r.u32()
		b.DiskOp = op
	}
	if r.err != nil {
		return nil, nil, fmt.Errorf("board state: %w", r.err)
	}
	return b, r.buf, nil
}
