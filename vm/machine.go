// Package vm is hvft's emulated machine: an x86-64 board on Unicorn 2.1
// whose every source of nondeterminism passes through one interface, the
// Environment, and whose execution is cut into epochs at points a second
// copy reaches again. It owns the board's devices, the hypervisor layer
// (port and CPUID traps, the software-managed TLB, the epoch clock,
// interrupt and exception delivery through the guest's IDT), the state hash
// (RAM included at every epoch, from the pages written) and snapshots. It
// knows nothing of networks or replica roles.
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

	"github.com/zeebo/xxh3"

	"go.uber.org/zap"

	"hvft/vm/guestelf"
	"hvft/vm/linux"
	"hvft/vm/tlb"
	"hvft/vm/uc"
)

// Guest memory layout (docs/board.md).
const (
	BootInfoAddr  = 0x1000
	BootInfoMagic = 0x54465648
	BootInfoSize  = 0x1000
	ImageMinAddr  = 0x2000
	// BootInfoVersion is the layout of the boot information block.
	BootInfoVersion = 1
)

// never is an address no guest reaches, passed to Unicorn as the "until"
// address so that only the hypervisor's own stops end a run.
const never = 0xFFFF_FFFF_FFFF_FFFF

// Config is the machine's configuration; a backup must run the same RAM
// size as its primary, and may run any TLB.
type Config struct {
	RAMSize uint64
	TLB     tlb.Config
	Args    []string
	// DiskSectors is the size of the shared disk (0: no disk). The
	// image itself is the environment's business.
	DiskSectors uint64
	// Clock says when the block clock runs; both replicas must agree.
	Clock EpochClock
	// Linux, when set, runs a Linux program in place of a board guest
	// (the image passed to New is then ignored).
	Linux *LinuxSetup
	// WholeTLBFlushes makes every eviction of the modelled TLB flush all
	// of Unicorn's TLB instead of the victim's pages (the older way, kept
	// for benchmarks to compare against; it changes no result).
	WholeTLBFlushes bool

	// hookChoice, in tests, overrides how stopClock stops the clock.
	hookChoice hookChoice
}

// hookChoice is how a quiet epoch stops the block clock.
type hookChoice uint8

const (
	hookByTime hookChoice = iota // stopClock's rule
	hookRemove                   // always remove the hook
	hookPause                    // keep it paused whenever it is installed
)

// DefaultRAMSize is the board's RAM unless configured otherwise.
const DefaultRAMSize = 16 << 20

// MaxRAMSize bounds the board's RAM; the hypervisor keeps about 30 bytes
// of bookkeeping per 4 KiB page beside it.
const MaxRAMSize = 64 << 30

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
	TLBFills   uint64 // misses of Unicorn's TLB, answered by the hypervisor
	TLBMisses  uint64 // misses of the modelled TLB
	Evictions  uint64
	TLBFlushes uint64
	Interrupts uint64
	Exceptions uint64
	// QuietEpochs counts epochs run without the block clock; ClockPauses
	// those of them that kept its hook (stopClock).
	QuietEpochs uint64
	ClockPauses uint64
	// PagesHashed counts 4 KiB pages re-hashed at epoch boundaries
	// because they were written.
	PagesHashed uint64
}

// Machine is one emulated computer. Its methods may be called from any
// goroutine, one at a time: the machine runs Unicorn on a goroutine of its
// own, locked to an OS thread, as Unicorn requires.
type Machine struct {
	cfg Config
	eng *uc.Engine
	mem []byte
	// stateReader reads the CPU for the state hash in one call (made on
	// first use; the engine owns it); stateScratch is its reused output.
	stateReader  *uc.StateReader
	stateScratch uc.State
	board        *Board
	env          Environment
	log          *zap.Logger
	calls        chan func()
	done         chan struct{}
	closer       sync.Once
	epoch        uint64
	seq          uint64
	halted       bool
	stats        Stats
	ram          ramDigest

	// Set by hooks during a run.
	fault     error
	powerStop bool
	hookErr   error
	// The epoch running without the block clock, its environment
	// instructions so far, and whether one of them ended it.
	quiet     bool
	quietOps  int
	quietStop bool
	// lastQuietOps is the last quiet epoch's count of environment
	// instructions (it chooses how the clock is stopped, stopClock).
	lastQuietOps int

	// A Linux program's process and the physical pages behind it.
	proc *linux.Process
	phys physPages
}

// New builds a machine, loads the image and boots it to its entry point.
func New(cfg Config, img *guestelf.Image, env Environment, log *zap.Logger) (*Machine, error) {
	if cfg.RAMSize == 0 {
		cfg.RAMSize = DefaultRAMSize
		if cfg.Linux != nil {
			cfg.RAMSize = DefaultLinuxRAMSize
		}
	}
	if cfg.Linux != nil && cfg.DiskSectors != 0 {
		return nil, errors.New("a Linux program reaches files under --root, not the board's disk")
	}
	if err := cfg.TLB.Validate(); err != nil {
		return nil, err
	}
	if cfg.RAMSize%cfg.TLB.PageSize != 0 || cfg.RAMSize < 2*cfg.TLB.PageSize {
		return nil, fmt.Errorf("RAM size %d must be a multiple of the TLB page size %d and hold at least two pages", cfg.RAMSize, cfg.TLB.PageSize)
	}
	if cfg.RAMSize > MaxRAMSize {
		return nil, fmt.Errorf("RAM size %d exceeds %d GiB", cfg.RAMSize, MaxRAMSize>>30)
	}
	if log == nil {
		log = zap.NewNop()
	}
	m := &Machine{cfg: cfg, board: NewBoard(cfg.RAMSize, cfg.DiskSectors), env: env, log: log,
		calls: make(chan func()), done: make(chan struct{})}
	started := make(chan error, 1)
	go m.thread(started)
	if err := <-started; err != nil {
		return nil, err
	}
	if obs, ok := env.(BoardObserver); ok {
		obs.Attach(m.board)
	}
	if obs, ok := env.(LinuxObserver); ok && cfg.Linux != nil {
		obs.AttachLinux(func() LinuxInfo {
			return LinuxInfo{Random: m.proc.Random(), StdinRead: m.proc.StdinRead()}
		})
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
	if err := syscall.Munmap(m.mem); err != nil {
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
	// All RAM is mapped once, before anything runs: a page mapped later
	// (inside a hook) is translated without self-modifying-code tracking.
	err = eng.MapPtr(0, m.cfg.RAMSize, uc.ProtAll, unsafe.Pointer(&ram[0]))
	if err == nil {
		err = eng.EnableSoftTLB(uc.SoftTLB{RAMSize: m.cfg.RAMSize, EntrySize: m.cfg.TLB.PageSize,
			Entries: m.cfg.TLB.Entries, Policy: uc.Policy(m.cfg.TLB.Policy), Seed: m.cfg.TLB.Seed, WholeFlushes: m.cfg.WholeTLBFlushes})
	}
	if err == nil {
		err = eng.Hooks(m)
	}
	if err == nil && m.cfg.Linux != nil {
		m.eng = eng
		err = m.openLinux()
	}
	if err != nil {
		eng.Close()
		syscall.Munmap(ram)
		return err
	}
	m.mem, m.eng = ram, eng
	m.ram.initZero(ram) // nothing has written it yet
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
	if m.cfg.Linux != nil {
		return m.bootLinux(m.cfg.Linux)
	}
	for _, s := range img.Segments {
		if s.Addr < ImageMinAddr || s.Addr+s.MemSize > m.cfg.RAMSize {
			return fmt.Errorf("segment at %#x-%#x lies outside RAM (%#x-%#x)", s.Addr, s.Addr+s.MemSize, ImageMinAddr, m.cfg.RAMSize)
		}
		m.hostWrite(s.Addr, s.Data)
	}
	info, err := bootInfo(m.cfg.RAMSize, m.cfg.Args)
	if err != nil {
		return err
	}
	m.hostWrite(BootInfoAddr, info)
	regs := []uc.Reg{uc.RIP, uc.RSP, uc.RDI, uc.RFLAGS}
	vals := []uint64{img.Entry, m.cfg.RAMSize - 16, BootInfoAddr, 0x2}
	if err := m.eng.RegWriteBatch(regs, vals); err != nil {
		return err
	}
	return m.resetFPU()
}

// bootInfo lays out the boot information block (docs/board.md).
func bootInfo(ramSize uint64, args []string) ([]byte, error) {
	b := binary.LittleEndian.AppendUint32(nil, BootInfoMagic)
	b = binary.LittleEndian.AppendUint32(b, BootInfoVersion)
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
		ts := m.eng.TLBStats()
		s.TLBFills, s.TLBMisses, s.Evictions, s.TLBFlushes = ts.Fills, ts.Misses, ts.Evictions, ts.Flushes
		s.PagesHashed = m.ram.rehashed
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
	if m.proc != nil && m.epoch == 0 {
		if err := m.proc.Start(linuxMachine{m}); err != nil {
			return Stop{}, err
		}
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
	end := EpochEnd{Epoch: m.epoch, Clock: m.eng.Blocks(), RIP: rip, Reason: reason, Answers: m.seq, RAMHashed: true}
	if end.Hash, err = m.hash(); err != nil {
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
			err = m.board.completeDisk(ev, m.hostWrite)
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
	return st, nil
}

// pauseBelowOps is the length, in environment instructions, under which
// a quiet epoch is taken for one of a series of short ones (a guest that
// arms its disk interrupt every few instructions): the next quiet epoch
// then pauses the block hook instead of removing it, since restarting the
// clock after a removal retranslates the code the guest runs next.
const pauseBelowOps = 64

// stopClock stops the block clock for a quiet epoch. Removing its hook
// saves a call per block; pausing it saves the retranslation when the
// clock restarts soon. The choice rests on the previous quiet epoch's
// count of environment instructions, which both replicas share, never on
// host time: which translations exist is then the same on every replica
// (and invalidation is exact, so they could not differ in what they run).
func (m *Machine) stopClock() error {
	keep := m.lastQuietOps > 0 && m.lastQuietOps < pauseBelowOps
	switch m.cfg.hookChoice {
	case hookRemove:
		keep = false
	case hookPause:
		keep = true
	}
	if keep && m.eng.BlockHookInstalled() {
		m.eng.PauseBlockClock()
		m.stats.ClockPauses++
		return nil
	}
	return m.eng.SetBlockClock(false)
}

// execute runs Unicorn until one of the hypervisor's stops.
func (m *Machine) execute(limit uint64) (StopReason, error) {
	m.quiet, m.quietOps, m.quietStop = m.nextQuiet(), 0, false
	if m.quiet {
		if err := m.stopClock(); err != nil {
			return 0, err
		}
		defer func() { m.lastQuietOps = m.quietOps }()
		m.stats.QuietEpochs++
	} else if err := m.eng.SetBlockClock(true); err != nil {
		return 0, err
	} else {
		m.eng.SetBlockLimit(m.eng.Blocks() + limit)
		defer m.eng.SetBlockLimit(0)
	}
	m.powerStop, m.hookErr = false, nil
	m.eng.ClearPageFault()
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
	case runErr != nil && m.proc != nil:
		m.fault = m.linuxFault(runErr)
		return StopFault, nil
	case runErr != nil:
		m.fault = m.describeFault(runErr)
		return StopFault, nil
	case m.powerStop:
		return StopPowerOff, nil
	case m.eng.BlockLimitHit():
		return StopLimit, nil
	}
	if rip, err = m.eng.RegRead(uc.RIP); err != nil {
		return 0, err
	}
	// What ran decides: the engine records a HLT that executed, and an
	// environment instruction that ended a quiet epoch stops it exactly
	// at the next instruction boundary (StopPrecise), never after a HLT
	// later in its block (which would then have run, and halted).
	if m.eng.Halted() {
		if m.proc != nil {
			// HLT is privileged: a program that runs it dies of SIGSEGV.
			m.fault = fmt.Errorf("the program was killed by SIGSEGV (a privileged instruction) near RIP %#x", rip)
			return StopFault, nil
		}
		m.halted = true
		return StopHalt, nil
	}
	if m.quietStop {
		return StopEnv, nil
	}
	m.fault = fmt.Errorf("emulation stopped for no known reason at RIP %#x", rip)
	return StopFault, nil
}

func (m *Machine) describeFault(err error) error {
	rip, _ := m.eng.RegRead(uc.RIP)
	if addr, access, ok := m.eng.FillFault(); ok {
		m.eng.ClearFillFault()
		return fmt.Errorf("guest %v at %#x (RAM ends at %#x), in the block at RIP %#x", access, addr, m.cfg.RAMSize, m.point().RIP)
	}
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
	if m.quiet { // no block hook records the block: Unicorn's RIP will do
		addr, _ = m.eng.RegRead(uc.RIP)
	}
	return Point{Epoch: m.epoch + 1, Clock: m.eng.Blocks(), RIP: addr}
}

// failHook stops the engine because the environment failed.
func (m *Machine) failHook(err error) {
	if m.hookErr == nil {
		m.hookErr = err
	}
	m.eng.StopPrecise()
}

// In implements uc.Handler: every IN goes to the environment.
func (m *Machine) In(port uint32, size int) uint32 {
	if m.hookErr != nil {
		return 0
	}
	if m.proc != nil {
		m.killProgram("SIGSEGV (port I/O is privileged)")
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
	m.afterEnvOp()
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
	if m.proc != nil {
		m.killProgram("SIGSEGV (port I/O is privileged)")
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
			o.Data = append([]byte(nil), m.mem[op.Buffer:op.Buffer+op.Count*SectorSize]...)
		}
	}
	if err := m.env.Out(o, effect, m.board); err != nil {
		m.failHook(err)
		return
	}
	if effect == EffectPowerOff {
		m.powerStop = true
		m.eng.StopPrecise()
		return
	}
	m.afterEnvOp()
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
		return true
	}
	m.afterEnvOp()
	return true
}

// Interrupt implements uc.Handler: every CPU exception goes to the guest's
// IDT, with RIP at the faulting instruction.
func (m *Machine) Interrupt(intno uint32) {
	if m.proc != nil {
		if intno == vectorGP || intno == vectorUD { // RDTSCP is #UD on this CPU model: emulated all the same
			if rip, err := m.eng.RegRead(uc.RIP); err == nil && m.timeStamp(rip) {
				return
			}
		}
		if intno == vectorUD {
			if rip, err := m.eng.RegRead(uc.RIP); err == nil && m.int1At(rip) {
				// Linux reports a trap's RIP past the instruction.
				if err := m.eng.RegWrite(uc.RIP, rip+1); err != nil {
					m.failHook(fmt.Errorf("INT1 at RIP %#x: %w", rip, err))
					return
				}
				intno = vectorDB
			}
		}
		sig, ok := exceptionSignals[intno]
		if !ok {
			sig = fmt.Sprintf("SIGSEGV (exception %d)", intno)
		}
		m.killProgram(sig)
		return
	}
	rip, err := m.eng.RegRead(uc.RIP)
	if err == nil {
		if intno == vectorUD && m.int1At(rip) {
			// INT1 is a trap: its handler returns past it.
			intno, rip = vectorDB, rip+1
		}
		err = m.deliverException(intno, rip)
	}
	if err != nil {
		if intno == vectorUD {
			err = fmt.Errorf("invalid instruction: %w", err)
		}
		m.fault = err
		m.eng.StopPrecise()
	}
}

// hostWrite copies data into guest RAM at addr on the hypervisor's behalf
// (boot, DMA, interrupt frames, restores): translations of code there are
// discarded, since Unicorn does not see the write, and the pages are
// re-hashed at the next boundary.
func (m *Machine) hostWrite(addr uint64, data []byte) error {
	if addr > m.cfg.RAMSize || uint64(len(data)) > m.cfg.RAMSize-addr {
		return fmt.Errorf("host write of %d bytes at %#x lies outside RAM (%#x bytes)", len(data), addr, m.cfg.RAMSize)
	}
	copy(m.mem[addr:], data)
	m.ram.touched(addr, uint64(len(data)))
	return m.eng.InvalidateCode(addr, uint64(len(data)))
}

// ramDigest is a digest of guest RAM kept up to date from the pages
// written: the sum, lane by lane modulo 2^64, of a 128-bit hash of every 4
// KiB page and its index. A sum (not a hash of hashes) lets one page's
// change update it in constant time; the per-page hashes seed it apart so
// that equal pages at different places do not cancel.
type ramDigest struct {
	mem      []byte
	pages    []xxh3.Uint128
	sum      xxh3.Uint128
	host     []uint64 // pages written by the host since the last boundary
	hostSet  []bool
	rehashed uint64
}

func (d *ramDigest) init(mem []byte) { d.start(mem, false) }

// initZero is init for RAM known to be all zero (a fresh mapping): the
// pages are hashed from a zero page of our own, never read. Reading them
// would map the kernel's shared zero page under each, and the guest's
// first store to every page would then fault twice (a copy-on-write with
// a TLB shootdown across the process's threads) instead of once.
func (d *ramDigest) initZero(mem []byte) { d.start(mem, true) }

var zeroPage [uc.PageSize]byte

func (d *ramDigest) start(mem []byte, zero bool) {
	n := len(mem) / uc.PageSize
	d.mem, d.pages, d.hostSet, d.sum = mem, make([]xxh3.Uint128, n), make([]bool, n), xxh3.Uint128{}
	d.host = d.host[:0]
	for i := range d.pages {
		if zero {
			d.pages[i] = xxh3.Hash128Seed(zeroPage[:], uint64(i))
		} else {
			d.pages[i] = d.pageHash(i)
		}
		d.add(d.pages[i])
	}
}

func (d *ramDigest) pageHash(i int) xxh3.Uint128 {
	return xxh3.Hash128Seed(d.mem[i*uc.PageSize:(i+1)*uc.PageSize], uint64(i))
}

func (d *ramDigest) add(h xxh3.Uint128) {
	d.sum.Lo += h.Lo
	d.sum.Hi += h.Hi
}

// update re-hashes the page at base (a page-aligned address).
func (d *ramDigest) update(base uint64) {
	i := int(base / uc.PageSize)
	h := d.pageHash(i)
	old := d.pages[i]
	d.sum.Lo -= old.Lo
	d.sum.Hi -= old.Hi
	d.add(h)
	d.pages[i] = h
	d.rehashed++
}

// touched notes a host write of n bytes at addr.
func (d *ramDigest) touched(addr, n uint64) {
	if n == 0 {
		return
	}
	for p := addr / uc.PageSize; p <= (addr+n-1)/uc.PageSize; p++ {
		if !d.hostSet[p] {
			d.hostSet[p] = true
			d.host = append(d.host, p)
		}
	}
}

// writableKeep bounds the pages left writable in Unicorn's TLB across a
// boundary: each is re-hashed at every boundary until a flush, so more
// would cost more hashing than the refills a flush costs.
const writableKeep = 32

// syncRAM brings the RAM digest up to date at a boundary.
func (m *Machine) syncRAM() {
	d := &m.ram
	for _, p := range d.host {
		d.hostSet[p] = false
		d.update(p * uc.PageSize)
	}
	d.host = d.host[:0]
	m.eng.TakeWritten(writableKeep, d.update)
}
