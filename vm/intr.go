package vm

import (
	"encoding/binary"
	"fmt"

	"hvft/vm/uc"
)

const (
	flagTF = 1 << 8
	flagIF = 1 << 9
	flagNT = 1 << 14
	flagRF = 1 << 16

	vectorDB = 1
	vectorUD = 6
	vectorGP = 13

	gateInterrupt = 0xE
	gateTrap      = 0xF
)

// hasErrorCode reports whether x86 pushes an error code for an exception.
func hasErrorCode(vector uint32) bool {
	switch vector {
	case 8, 10, 11, 12, 13, 14, 17:
		return true
	}
	return false
}

// interrupt delivers the first deliverable IRQ at an epoch boundary, if the
// guest has interrupts enabled.
func (m *Machine) interrupt(rip uint64) error {
	irq, ok := m.board.deliverable()
	if !ok {
		return nil
	}
	flags, err := m.eng.RegRead(uc.RFLAGS)
	if err != nil {
		return err
	}
	if flags&flagIF == 0 {
		return nil
	}
	// After STI or MOV SS, x86 recognises no interrupt until the next
	// instruction has run: the IRQ waits for the next boundary.
	if shadow, err := m.eng.InterruptShadow(); err != nil || shadow {
		return err
	}
	if err := m.deliver(uint32(IRQVectorBase+irq), rip, false); err != nil {
		return fmt.Errorf("delivering IRQ %d: %w", irq, err)
	}
	m.board.accept(irq)
	m.halted = false
	m.stats.Interrupts++
	return nil
}

// int1At reports whether the instruction at rip is INT1 (ICEBP, the single
// byte f1). Unicorn 2.1 raises #UD for it, with RIP at the byte, where
// x86-64 raises #DB as a trap; f1 is no prefix, so a #UD whose first byte
// is f1 can only be INT1's.
func (m *Machine) int1At(rip uint64) bool {
	var b [1]byte
	if m.proc != nil {
		if err := (linuxMachine{m}).Read(rip, b[:]); err != nil {
			return false
		}
	} else if rip < uint64(len(m.mem)) { // board guests: identity-mapped
		b[0] = m.mem[rip]
	}
	return b[0] == 0xF1
}

// deliverException delivers a CPU exception raised at rip.
func (m *Machine) deliverException(vector uint32, rip uint64) error {
	m.stats.Exceptions++
	return m.deliver(vector, rip, vector < 32 && hasErrorCode(vector))
}

// deliver enters the guest's handler for vector as an x86-64 CPU does
// without a privilege change: it pushes SS, RSP, RFLAGS, CS, RIP (and an
// error code of zero where x86 has one) on the 16-byte-aligned current
// stack and jumps through the IDT gate.
func (m *Machine) deliver(vector uint32, rip uint64, errorCode bool) error {
	idtr, err := m.eng.ReadMMR(uc.IDTR)
	if err != nil {
		return err
	}
	at := fmt.Sprintf("vector %d at RIP %#x", vector, rip)
	off := uint64(vector) * 16
	if off+15 > uint64(idtr.Limit) || idtr.Limit == 0 {
		return fmt.Errorf("no usable IDT gate for %s: the IDT (base %#x, limit %#x) does not reach it", at, idtr.Base, idtr.Limit)
	}
	gateAddr := idtr.Base + off
	if gateAddr+16 < gateAddr || gateAddr+16 > m.cfg.RAMSize {
		return fmt.Errorf("no usable IDT gate for %s: gate address %#x is outside RAM", at, gateAddr)
	}
	gate := m.mem[gateAddr : gateAddr+16]
	attr := gate[5]
	kind := attr & 0xF
	if attr&0x80 == 0 || (kind != gateInterrupt && kind != gateTrap) {
		return fmt.Errorf("no usable IDT gate for %s: gate type %#x, present %v", at, kind, attr&0x80 != 0)
	}
	handler := uint64(binary.LittleEndian.Uint16(gate[0:])) |
		uint64(binary.LittleEndian.Uint16(gate[6:]))<<16 |
		uint64(binary.LittleEndian.Uint32(gate[8:]))<<32
	selector := uint64(binary.LittleEndian.Uint16(gate[2:]))

	regs := []uc.Reg{uc.RSP, uc.RFLAGS, uc.CS, uc.SS}
	vals := make([]uint64, len(regs))
	if err := m.eng.RegReadBatch(regs, vals); err != nil {
		return err
	}
	rsp, flags, cs, ss := vals[0], vals[1], vals[2], vals[3]
	frame := []uint64{rip, cs, flags, rsp, ss}
	if errorCode {
		frame = append([]uint64{0}, frame...)
	}
	top := rsp &^ 0xF
	newRSP := top - uint64(8*len(frame))
	if newRSP > top || top > m.cfg.RAMSize {
		return fmt.Errorf("delivering %s: stack pointer %#x is outside RAM", at, rsp)
	}
	var raw []byte
	for _, v := range frame {
		raw = binary.LittleEndian.AppendUint64(raw, v)
	}
	if err := m.hostWrite(newRSP, raw); err != nil {
		return fmt.Errorf("delivering %s: %w", at, err)
	}
	newFlags := flags &^ (flagTF | flagNT | flagRF)
	if kind == gateInterrupt {
		newFlags &^= flagIF
	}
	regs, vals = []uc.Reg{uc.RSP, uc.RFLAGS, uc.RIP}, []uint64{newRSP, newFlags, handler}
	if selector != cs {
		regs, vals = append(regs, uc.CS), append(vals, selector)
	}
	return m.eng.RegWriteBatch(regs, vals)
}
