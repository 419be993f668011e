// Package vm is hvft's emulated machine: an x86-64 board on Unicorn whose
// every source of nondeterminism passes through one interface, the
// Environment, and whose execution is cut into epochs at points a second
// copy reaches again. It owns the board's devices, the hypervisor layer
// (port and CPUID traps, the software-managed TLB, the epoch clock,
// interrupt and exception delivery through the guest's IDT), the state hash
// and snapshots. It knows nothing of networks or replica roles.
package vm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"unsafe"

	"go.uber.org/zap"

	"hvft/vm/guestelf"
	"hvft/vm/tlb"
	"hvft/vm/uc"
)

// Guest memory layout (docs/board.md).
const (
	BootInfoAddr  = 0x1000
	BootInfoMagic = 0x54465648
	BootInfoSize  = 0x1000
	ImageMinAddr  = 0x2000
	// bootInfoVersion is the layout of the boot information block.
	bootInfoVersion = 1
)

// never is an address no guest reaches, passed to Unicorn as the "until"
// address so that only the hypervisor's own stops end a run.
const never = 0xFFFF_FFFF_FFFF_FFFF

// Config is the machine's configuration; a backup must run the same RAM
// size as its primary, and may run any TLB.
type Config struct {
	RAMSize uint64
	TLB     tlb.Config
	// RAMHashEvery includes RAM in the state hash of every Nth epoch (0:
	// only at power-off). Registers and devices are hashed every epoch.
	RAMHashEvery uint64
	Args         []string
	// DiskSectors is the size of the shared disk (0: no disk). The
	// image itself is the environment's business.
	DiskSectors uint64
}

// DefaultRAMSize is the board's RAM unless configured otherwise.
const DefaultRAMSize = 16 << 20

// Stop says where and why an epoch ended.
type Stop struct {
	Epoch  uint64
	Clock  uint64
	RIP    uint64
	Reason StopReason
	Hash   Digest
	Err    error // with StopFault: what went wrong
}

// Stats counts the machine's work.
type Stats struct {
	Epochs     uint64
	Blocks     uint64
	Answers    uint64
	TLBMisses  uint64
	Evictions  uint64
	Interrupts uint64
	Exceptions uint64
}

// Machine is one emulated computer. Its methods may be called from any
// goroutine, one at a time: the machine runs Unicorn on a goroutine of its
// own, locked to an OS thread, as Unicorn requires.
type Machine struct {
	cfg    Config
	eng    *uc.Engine
	ram    []byte
	board  *Board
	env    Environment
	tlb    *tlb.Table
	log    *zap.Logger
	calls  chan func()
	done   chan struct{}
	closer sync.Once
	epoch  uint64
	seq    uint64
	halted bool
	stats  Stats

	// Set by hooks during a run.
	fault     error
	powerStop bool
	resume    bool
	hookErr   error
}

// New builds a machine, loads the image and boots it to its entry point.
func New(cfg Config, img *guestelf.Image, env Environment, log *zap.Logger) (*Machine, error) {
	if cfg.RAMSize == 0 {
		cfg.RAMSize = DefaultRAMSize
	}
	if err := cfg.TLB.Validate(); err != nil {
		return nil, err
	}
	if cfg.RAMSize%cfg.TLB.PageSize != 0 || cfg.RAMSize < 2*cfg.TLB.PageSize {
		return nil, fmt.Errorf("RAM size %d must be a multiple of the TLB page size %d and hold at least two pages", cfg.RAMSize, cfg.TLB.PageSize)
	}
	if cfg.RAMSize > 1<<40 {
		return nil, fmt.Errorf("RAM size %d exceeds 1 TiB", cfg.RAMSize)
	}
	if log == nil {
		log = zap.NewNop()
	}
	table, err := tlb.New(cfg.TLB)
	if err != nil {
		return nil, err
	}
	m := &Machine{cfg: cfg, board: NewBoard(cfg.RAMSize, cfg.DiskSectors), env: env, tlb: table, log: log,
		calls: make(chan func()), done: make(chan struct{})}
	started := make(chan error, 1)
	go m.thread(started)
	if err := <-started; err != nil {
		return nil, err
	}
	if obs, ok := env.(BoardObserver); ok {
		obs.Attach(m.board)
	}
	if err := m.call(func() error { return m.boot(img) }); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// thread owns the engine for the machine's life.
func (m *Machine) thread(started chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(m.done)
	if err := m.open(); err != nil {
		started <- err
		return
	}
	started <- nil
	for fn := range m.calls {
		fn()
	}
	if err := m.eng.Close(); err != nil {
		m.log.Warn("closing the engine", zap.Error(err))
	}
	if err := syscall.Munmap(m.ram); err != nil {
		m.log.Warn("releasing guest RAM", zap.Error(err))
	}
}

func (m *Machine) open() error {
	ram, err := syscall.Mmap(-1, 0, int(m.cfg.RAMSize), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return fmt.Errorf("allocating %d bytes of guest RAM: %w", m.cfg.RAMSize, err)
	}
	eng, err := uc.Open()
	if err != nil {
		syscall.Munmap(ram)
		return err
	}
	if err := eng.Hooks(m); err != nil {
		eng.Close()
		syscall.Munmap(ram)
		return err
	}
	m.ram, m.eng = ram, eng
	return nil
}

// call runs fn on the machine's thread.
func (m *Machine) call(fn func() error) error {
	var err error
	ok := make(chan struct{})
	select {
	case m.calls <- func() { err = fn(); close(ok) }:
	case <-m.done:
		return errors.New("machine is closed")
	}
	<-ok
	return err
}

// Close releases the machine. It is safe to call more than once.
func (m *Machine) Close() {
	m.closer.Do(func() { close(m.calls) })
	<-m.done
}

func (m *Machine) boot(img *guestelf.Image) error {
	for _, s := range img.Segments {
		if s.Addr < ImageMinAddr || s.Addr+s.MemSize > m.cfg.RAMSize {
			return fmt.Errorf("segment at %#x-%#x lies outside RAM (%#x-%#x)", s.Addr, s.Addr+s.MemSize, ImageMinAddr, m.cfg.RAMSize)
		}
		copy(m.ram[s.Addr:], s.Data)
	}
	info, err := bootInfo(m.cfg.RAMSize, m.cfg.Args)
	if err != nil {
		return err
	}
	copy(m.ram[BootInfoAddr:], info)
	regs := []uc.Reg{uc.RIP, uc.RSP, uc.RDI, uc.RFLAGS}
	vals := []uint64{img.Entry, m.cfg.RAMSize - 16, BootInfoAddr, 0x2}
	return m.eng.RegWriteBatch(regs, vals)
}

// bootInfo lays out the boot information block (docs/board.md).
func bootInfo(ramSize uint64, args []string) ([]byte, error) {
	b := binary.LittleEndian.AppendUint32(nil, BootInfoMagic)
	b = binary.LittleEndian.AppendUint32(b, bootInfoVersion)
	b = binary.LittleEndian.AppendUint64(b, ramSize)
	var strs []byte
	for _, a := range args {
		strs = append(strs, a...)
		strs = append(strs, 0)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(args)))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(strs)))
	b = append(b, strs...)
	if len(b) > BootInfoSize {
		return nil, fmt.Errorf("guest arguments take %d bytes; at most %d fit in the boot information block", len(strs), BootInfoSize-24)
	}
	return b, nil
}

// Board returns a copy of the devices' state.
func (m *Machine) Board() Board {
	var b Board
	m.call(func() error {
		b = *m.board
		b.RX = append([]byte(nil), m.board.RX...)
		if op := m.board.DiskOp; op != nil {
			cp := *op
			b.DiskOp = &cp
		}
		return nil
	})
	return b
}

// Stats returns the machine's counters.
func (m *Machine) Stats() Stats {
	var s Stats
	m.call(func() error {
		s = m.stats
		s.Blocks = m.eng.Blocks()
		s.Answers = m.seq
		ts := m.tlb.Stats()
		s.TLBMisses, s.Evictions = ts.Misses, ts.Evictions
		return nil
	})
	return s
}

// PoweredOff reports whether the guest powered off, and its exit code.
func (m *Machine) PoweredOff() (bool, uint32) {
	b := m.Board()
	return b.PoweredOff, b.ExitCode
}

// RunEpoch runs the guest until the block clock advances by limit, the guest
// halts, powers off or faults, then processes the boundary: it hashes the
// state, hands the boundary to the environment and delivers the interrupts
// it returns. A halted guest does not run: the epoch ends at once, and (in a
// live environment) the boundary waits for a host event.
func (m *Machine) RunEpoch(ctx context.Context, limit uint64) (Stop, error) {
	var st Stop
	err := m.call(func() error {
		var err error
		st, err = m.runEpoch(ctx, limit)
		return err
	})
	return st, err
}

func (m *Machine) runEpoch(ctx context.Context, limit uint64) (Stop, error) {
	if m.board.PoweredOff {
		return Stop{}, errors.New("the guest has powered off")
	}
	if m.fault != nil {
		return Stop{}, fmt.Errorf("the machine stopped on a fault: %w", m.fault)
	}
	if limit == 0 {
		return Stop{}, errors.New("epoch limit must be positive")
	}
	reason := StopHalt
	if !m.halted {
		var err error
		if reason, err = m.execute(limit); err != nil {
			return Stop{}, err
		}
	}
	rip, err := m.eng.RegRead(uc.RIP)
	if err != nil {
		return Stop{}, err
	}
	m.epoch++
	m.stats.Epochs++
	end := EpochEnd{Epoch: m.epoch, Clock: m.eng.Blocks(), RIP: rip, Reason: reason, Answers: m.seq}
	end.RAMHashed = reason == StopPowerOff || (m.cfg.RAMHashEvery > 0 && m.epoch%m.cfg.RAMHashEvery == 0)
	if end.Hash, err = m.hash(end.RAMHashed); err != nil {
		return Stop{}, err
	}
	st := Stop{Epoch: end.Epoch, Clock: end.Clock, RIP: rip, Reason: reason, Hash: end.Hash}
	if reason == StopFault {
		st.Err = m.fault
		if _, err := m.env.EndEpoch(ctx, &end, Wake{}); err != nil {
			return st, err
		}
		return st, nil
	}
	wake, err := m.wake()
	if err != nil {
		return st, err
	}
	events, err := m.env.EndEpoch(ctx, &end, wake)
	if err != nil {
		return st, err
	}
	for _, ev := range events {
		var err error
		if ev.IRQ == IRQDisk {
			err = m.board.completeDisk(ev, m.ram)
		} else {
			err = m.board.raise(ev)
		}
		if err != nil {
			return st, fmt.Errorf("epoch %d boundary: %w", m.epoch, err)
		}
	}
	if reason != StopPowerOff {
		if err := m.interrupt(rip); err != nil {
			m.fault = err
			return st, err
		}
	}
	m.tlb.Touch(rip)
	if rsp, err := m.eng.RegRead(uc.RSP); err == nil {
		m.tlb.Touch(rsp)
	}
	return st, nil
}

// execute runs Unicorn until one of the hypervisor's stops.
func (m *Machine) execute(limit uint64) (StopReason, error) {
	m.eng.SetBlockLimit(m.eng.Blocks() + limit)
	defer m.eng.SetBlockLimit(0)
	for {
		m.powerStop, m.resume, m.hookErr = false, false, nil
		rip, err := m.eng.RegRead(uc.RIP)
		if err != nil {
			return 0, err
		}
		runErr := m.eng.Start(rip, never, 0, 0)
		switch {
		case m.hookErr != nil:
			// The environment failed (or saw a divergence): not a guest fault.
			return 0, m.hookErr
		case m.fault != nil:
			return StopFault, nil
		case runErr != nil:
			m.fault = m.describeFault(runErr)
			return StopFault, nil
		case m.powerStop:
			return StopPowerOff, nil
		case m.eng.BlockLimitHit():
			return StopLimit, nil
		case m.resume:
			continue
		}
		rip, err = m.eng.RegRead(uc.RIP)
		if err != nil {
			return 0, err
		}
		if rip > 0 && rip <= m.cfg.RAMSize && m.ram[rip-1] == 0xF4 {
			m.halted = true
			return StopHalt, nil
		}
		m.fault = fmt.Errorf("emulation stopped for no known reason at RIP %#x", rip)
		return StopFault, nil
	}
}

func (m *Machine) describeFault(err error) error {
	rip, _ := m.eng.RegRead(uc.RIP)
	var ue *uc.Error
	if errors.As(err, &ue) && ue.Code == uc.ErrInsnInvalid {
		return fmt.Errorf("invalid instruction at RIP %#x: %w", rip, err)
	}
	return fmt.Errorf("guest stopped at RIP %#x: %w", rip, err)
}

// wake reports which IRQs could end a halt now.
func (m *Machine) wake() (Wake, error) {
	w := Wake{Halted: m.halted, Room: RXCapacity - len(m.board.RX)}
	if !m.halted {
		return w, nil
	}
	flags, err := m.eng.RegRead(uc.RFLAGS)
	if err != nil {
		return w, err
	}
	if flags&flagIF == 0 {
		return w, nil
	}
	if _, ok := m.board.deliverable(); ok {
		w.Halted = false // an interrupt is already waiting: not idle
		return w, nil
	}
	w.Mask = m.board.wakeMask()
	return w, nil
}

// point names the current position for hooks.
func (m *Machine) point() Point {
	addr, _ := m.eng.LastBlock()
	return Point{Epoch: m.epoch + 1, Clock: m.eng.Blocks(), RIP: addr}
}

// failHook stops the engine because the environment failed.
func (m *Machine) failHook(err error) {
	if m.hookErr == nil {
		m.hookErr = err
	}
	m.eng.Stop()
}

// In implements uc.Handler: every IN goes to the environment.
func (m *Machine) In(port uint32, size int) uint32 {
	if m.hookErr != nil {
		return 0
	}
	seq := m.seq + 1
	answer, err := m.env.In(m.point(), seq, port, size, m.board.inLocal(port))
	if err != nil {
		m.failHook(err)
		return 0
	}
	m.seq = seq
	v := m.board.completeIn(port, answer)
	switch size {
	case 1:
		v &= 0xFF
	case 2:
		v &= 0xFFFF
	}
	return v
}

// Out implements uc.Handler: the board keeps its state, the environment
// performs or discards the output.
func (m *Machine) Out(port uint32, size int, value uint32) {
	if m.hookErr != nil {
		return
	}
	effect := m.board.out(port, value)
	o := Output{Port: port, Value: value, At: m.point(), Answers: m.seq}
	switch effect {
	case EffectConsole:
		o.Seq = m.board.ConsoleOut
	case EffectDiskRead, EffectDiskWrite:
		op := *m.board.DiskOp
		o.Disk = &op
		if effect == EffectDiskWrite {
			// The payload is what RAM holds now (docs/board.md).
			o.Data = append([]byte(nil), m.ram[op.Buffer:op.Buffer+op.Count*SectorSize]...)
		}
	}
	if err := m.env.Out(o, effect, m.board); err != nil {
		m.failHook(err)
		return
	}
	if effect == EffectPowerOff {
		m.powerStop = true
		m.eng.Stop()
	}
}

// CPUID implements uc.Handler: the environment answers.
func (m *Machine) CPUID() bool {
	if m.hookErr != nil {
		return true
	}
	vals := make([]uint64, 2)
	if err := m.eng.RegReadBatch([]uc.Reg{uc.RAX, uc.RCX}, vals); err != nil {
		m.failHook(err)
		return true
	}
	seq := m.seq + 1
	r, err := m.env.CPUID(m.point(), seq, uint32(vals[0]), uint32(vals[1]))
	if err != nil {
		m.failHook(err)
		return true
	}
	m.seq = seq
	if err := m.eng.RegWriteBatch([]uc.Reg{uc.RAX, uc.RBX, uc.RCX, uc.RDX},
		[]uint64{uint64(r[0]), uint64(r[1]), uint64(r[2]), uint64(r[3])}); err != nil {
		m.failHook(err)
	}
	return true
}

// Interrupt implements uc.Handler: a CPU exception goes to the guest's IDT.
func (m *Machine) Interrupt(intno uint32) {
	rip, err := m.eng.RegRead(uc.RIP)
	if err == nil {
		err = m.deliverException(intno, rip)
	}
	if err != nil {
		m.fault = err
		m.eng.Stop()
	}
}

// InvalidInstruction implements uc.Handler: #UD goes to the guest's IDT.
// Unicorn then ends the run; execute resumes it at the handler.
func (m *Machine) InvalidInstruction() bool {
	rip, err := m.eng.RegRead(uc.RIP)
	if err == nil {
		err = m.deliverException(vectorUD, rip)
	}
	if err != nil {
		m.fault = fmt.Errorf("invalid instruction: %w", err)
		return false
	}
	m.resume = true
	return true
}

// Mem implements uc.Handler: a miss of the software-managed TLB installs the
// page; an access outside RAM is a fatal fault.
func (m *Machine) Mem(access uc.Access, addr uint64, size int, value int64) bool {
	end := addr + uint64(max(size, 1))
	if access != uc.ReadUnmapped && access != uc.WriteUnmapped && access != uc.FetchUnmapped {
		m.fault = fmt.Errorf("guest %v at %#x in the block at RIP %#x", access, addr, m.point().RIP)
		return false
	}
	if end < addr || end > m.cfg.RAMSize {
		m.fault = fmt.Errorf("guest %v at %#x (%d bytes), outside RAM (%#x bytes), in the block at RIP %#x", access, addr, size, m.cfg.RAMSize, m.point().RIP)
		return false
	}
	first := m.tlb.PageOf(addr)
	pin := func(p uint64) bool { return m.pinned(p, access, addr, first) }
	if err := m.install(first, pin); err != nil {
		m.fault = err
		return false
	}
	if last := m.tlb.PageOf(end - 1); last != first && !m.tlb.Contains(last) {
		if err := m.install(last, pin); err != nil {
			m.fault = err
			return false
		}
	}
	return true
}

// pinned says which pages an eviction must spare: the page being installed,
// and those of the block being executed (or, for a fetch, the block being
// translated), since Unicorn invalidates translations of an unmapped page.
func (m *Machine) pinned(page uint64, access uc.Access, addr, first uint64) bool {
	if page == first {
		return true
	}
	blk, size := m.eng.LastBlock()
	if page == m.tlb.PageOf(blk) || page == m.tlb.PageOf(blk+uint64(size)) {
		return true
	}
	return access == uc.FetchUnmapped && addr >= 16 && page == m.tlb.PageOf(addr-16)
}

func (m *Machine) install(page uint64, pinned func(uint64) bool) error {
	if m.tlb.Contains(page) {
		return nil
	}
	victim, evict, err := m.tlb.Miss(page, pinned)
	if err != nil {
		return err
	}
	size := m.cfg.TLB.PageSize
	if evict {
		if err := m.eng.Unmap(victim, size); err != nil {
			return fmt.Errorf("TLB eviction: %w", err)
		}
		m.tlb.Evicted(victim)
	}
	if err := m.eng.MapPtr(page, size, uc.ProtAll, unsafe.Pointer(&m.ram[page])); err != nil {
		return fmt.Errorf("TLB install: %w", err)
	}
	m.tlb.Installed(page)
	return nil
}
