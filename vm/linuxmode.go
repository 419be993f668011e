package vm

import (
	"encoding/binary"
	"fmt"
	"slices"

	"go.uber.org/zap"

	"hvft/vm/linux"
	"hvft/vm/uc"
)

// LinuxSetup makes the machine run a static Linux program under the
// system-call personality (package linux) in place of a board guest: the
// program's own virtual addresses, translated by the hypervisor's page
// table through the fill hook, and SYSCALL trapped to the hypervisor.
type LinuxSetup struct {
	Program *linux.Program
	Process linux.Config
}

// DefaultLinuxRAMSize is a Linux program's RAM unless configured otherwise.
const DefaultLinuxRAMSize = 256 << 20

// DefaultTLBEntries and DefaultLinuxTLBEntries are the modelled TLB's
// capacity unless configured otherwise. A board guest's default is small,
// so that the mechanism shows; a Linux program's covers the working set
// of real programs (bzip2 -9 takes about 1.3 million misses at 32 entries
// of 64 KiB and a hundred at 1,024, half of its run time).
const (
	DefaultTLBEntries      = 32
	DefaultLinuxTLBEntries = 1024
)

// physPages allocates the machine's physical pages to the program's
// virtual ones, deterministically: lowest never-used page first, then the
// most recently freed. A page once mapped executable is never reused, so
// that no stale translation of its code can survive (Unicorn indexes
// translations by physical page, and host writes do not invalidate them).
type physPages struct {
	next    uint64
	limit   uint64
	free    []uint64
	wasExec map[uint64]bool
}

func (p *physPages) available() uint64 { return p.limit - p.next + uint64(len(p.free)) }

// alloc returns a page and whether it must be zeroed.
func (p *physPages) alloc() (uint64, bool) {
	if n := len(p.free); n > 0 {
		pg := p.free[n-1]
		p.free = p.free[:n-1]
		return pg, true
	}
	pg := p.next
	p.next++
	return pg, false
}

func (p *physPages) release(pg uint64) {
	if !p.wasExec[pg] {
		p.free = append(p.free, pg)
	}
}

// linuxMachine is the linux.Machine the personality drives: this machine
// seen through the program's page table.
type linuxMachine struct{ m *Machine }

func (l linuxMachine) eng() *uc.Engine { return l.m.eng }

// pages calls fn for each page of [addr, addr+n) with the part inside it.
func (l linuxMachine) pages(addr, n uint64, write bool, fn func(paddr, off, len uint64, prot uc.Prot) error) error {
	for done := uint64(0); done < n; {
		va := addr + done
		pa, prot, ok := l.eng().Translate(va)
		if !ok || (write && prot&uc.ProtWrite == 0) || (!write && prot&uc.ProtRead == 0) {
			return fmt.Errorf("bad address %#x", va)
		}
		chunk := min(n-done, uc.PageSize-va%uc.PageSize)
		if err := fn(pa, done, chunk, prot); err != nil {
			return err
		}
		done += chunk
	}
	return nil
}

func (l linuxMachine) Read(addr uint64, buf []byte) error {
	return l.pages(addr, uint64(len(buf)), false, func(pa, off, n uint64, _ uc.Prot) error {
		copy(buf[off:off+n], l.m.mem[pa:pa+n])
		return nil
	})
}

func (l linuxMachine) Write(addr uint64, data []byte) error {
	return l.pages(addr, uint64(len(data)), true, func(pa, off, n uint64, prot uc.Prot) error {
		copy(l.m.mem[pa:pa+n], data[off:off+n])
		l.m.ram.touched(pa, n)
		if prot&uc.ProtExec != 0 {
			va := addr + off
			return l.eng().InvalidateCode(va-va%uc.PageSize, uc.PageSize)
		}
		return nil
	})
}

func (l linuxMachine) Map(addr, size uint64, prot linux.Prot) error {
	pp := &l.m.phys
	n := size / uc.PageSize
	if pp.available() < n {
		return fmt.Errorf("out of guest RAM: %d pages wanted, %d free (raise --ram)", n, pp.available())
	}
	for i := uint64(0); i < n; i++ {
		pg, dirty := pp.alloc()
		if dirty {
			clear(l.m.mem[pg*uc.PageSize : (pg+1)*uc.PageSize])
			l.m.ram.touched(pg*uc.PageSize, uc.PageSize)
		}
		if prot&linux.ProtExec != 0 {
			pp.wasExec[pg] = true
		}
		if err := l.eng().MapPage(addr+i*uc.PageSize, pg*uc.PageSize, uc.Prot(prot)); err != nil {
			return err
		}
	}
	return nil
}

func (l linuxMachine) Unmap(addr, size uint64) {
	for a := addr; a < addr+size; a += uc.PageSize {
		if pa, _, ok := l.eng().Translate(a); ok {
			l.eng().UnmapPage(a)
			l.m.phys.release(pa / uc.PageSize)
		}
	}
	l.m.flushTLB()
}

func (l linuxMachine) Protect(addr, size uint64, prot linux.Prot) error {
	for a := addr; a < addr+size; a += uc.PageSize {
		pa, _, ok := l.eng().Translate(a)
		if !ok {
			return fmt.Errorf("protect: %#x is not mapped", a)
		}
		if prot&linux.ProtExec != 0 {
			l.m.phys.wasExec[pa/uc.PageSize] = true
		}
		if err := l.eng().MapPage(a, pa, uc.Prot(prot)); err != nil {
			return err
		}
	}
	l.m.flushTLB()
	return nil
}

func (l linuxMachine) Move(from, to, size uint64) error {
	for off := uint64(0); off < size; off += uc.PageSize {
		pa, prot, ok := l.eng().Translate(from + off)
		if !ok {
			return fmt.Errorf("move: %#x is not mapped", from+off)
		}
		l.eng().UnmapPage(from + off)
		if err := l.eng().MapPage(to+off, pa, prot); err != nil {
			return err
		}
	}
	l.m.flushTLB()
	return nil
}

func (l linuxMachine) SetFSBase(v uint64) error { return l.eng().RegWrite(uc.FSBase, v) }

func (l linuxMachine) Ask(c linux.Call) (linux.Result, error) {
	m := l.m
	seq := m.seq + 1
	r, err := m.env.Host(m.point(), seq, c)
	if err != nil {
		return r, err
	}
	m.seq = seq
	return r, nil
}

func (l linuxMachine) Emit(fd int, data []byte) error {
	m := l.m
	m.board.ConsoleOut += uint64(len(data))
	o := Output{Port: uint32(fd), Seq: m.board.ConsoleOut, At: m.point(), Answers: m.seq, Data: data}
	return m.env.Out(o, EffectStream, m.board)
}

// linuxMemoryState appends the page table and the physical allocator's
// state (the process itself is in machineState).
func (m *Machine) linuxMemoryState(buf []byte) []byte {
	le := binary.LittleEndian
	pt := m.eng.PageTable()
	buf = le.AppendUint64(buf, uint64(len(pt)))
	for _, e := range pt {
		buf = le.AppendUint64(buf, e.VAddr)
		buf = le.AppendUint64(buf, e.PAddr/uc.PageSize)
		buf = append(buf, byte(e.Prot))
	}
	pp := &m.phys
	buf = le.AppendUint64(buf, pp.next)
	buf = le.AppendUint64(buf, uint64(len(pp.free)))
	for _, pg := range pp.free {
		buf = le.AppendUint64(buf, pg)
	}
	exec := make([]uint64, 0, len(pp.wasExec))
	for pg := range pp.wasExec {
		exec = append(exec, pg)
	}
	slices.Sort(exec)
	buf = le.AppendUint64(buf, uint64(len(exec)))
	for _, pg := range exec {
		buf = le.AppendUint64(buf, pg)
	}
	return buf
}

// restoreLinux rebuilds the process, page table and physical allocator
// from a peer's state (machineState, then linuxMemoryState), checking
// every page against RAM.
func (m *Machine) restoreLinux(b []byte) error {
	proc, rest, err := linux.RestoreProcess(m.cfg.Linux.Process, b)
	if err != nil {
		return err
	}
	r := reader{buf: rest}
	pages := m.cfg.RAMSize / uc.PageSize
	n := r.u64()
	if n > pages {
		return fmt.Errorf("page table of %d pages; RAM holds %d", n, pages)
	}
	type entry struct {
		v, p uint64
		prot uc.Prot
	}
	entries := make([]entry, 0, n)
	used := make(map[uint64]bool, n)
	for i := uint64(0); i < n && r.err == nil; i++ {
		e := entry{v: r.u64(), p: r.u64(), prot: uc.Prot(r.u8())}
		if e.v%uc.PageSize != 0 || e.p >= pages || e.prot > uc.ProtAll || used[e.p] {
			return fmt.Errorf("page table entry %#x -> page %d (protection %d) is invalid", e.v, e.p, e.prot)
		}
		used[e.p] = true
		entries = append(entries, e)
	}
	next := r.u64()
	free := make([]uint64, r.count(8))
	for i := range free {
		if free[i] = r.u64(); free[i] >= next || used[free[i]] {
			return fmt.Errorf("free physical page %d is invalid", free[i])
		}
	}
	wasExec := map[uint64]bool{}
	for i, k := uint64(0), r.count(8); i < k; i++ {
		pg := r.u64()
		if pg >= pages {
			return fmt.Errorf("physical page %d lies outside RAM", pg)
		}
		wasExec[pg] = true
	}
	if r.err != nil {
		return fmt.Errorf("linux memory state: %w", r.err)
	}
	if len(r.buf) != 0 || next > pages {
		return fmt.Errorf("linux memory state: %d trailing bytes, next page %d of %d", len(r.buf), next, pages)
	}
	m.eng.ClearPageTable()
	for _, e := range entries {
		if err := m.eng.MapPage(e.v, e.p*uc.PageSize, e.prot); err != nil {
			return err
		}
	}
	m.phys = physPages{next: next, limit: pages, free: free, wasExec: wasExec}
	proc.Unsupported = m.proc.Unsupported
	m.proc = proc
	m.flushTLB()
	return nil
}

// flushTLB drops Unicorn's cached translations after the page table changed.
func (m *Machine) flushTLB() {
	if err := m.eng.FlushTLB(); err != nil {
		m.log.Warn("flushing the TLB", zap.Error(err))
	}
}

// openLinux prepares the engine for a Linux program.
func (m *Machine) openLinux() error {
	if err := m.eng.EnablePageTable(m.cfg.RAMSize / uc.PageSize); err != nil {
		return err
	}
	m.phys = physPages{limit: m.cfg.RAMSize / uc.PageSize, wasExec: map[uint64]bool{}}
	return m.eng.HookSyscall()
}

// bootLinux loads the program and its initial stack.
func (m *Machine) bootLinux(setup *LinuxSetup) error {
	// AT_HWCAP must agree with what CPUID will answer: leaf 1's EDX of
	// the CPU model (the library's, the same on every replica).
	cpu, err := ProbeCPUModel()
	if err != nil {
		return err
	}
	pcfg := setup.Process
	pcfg.HWCap = uint64(cpu.Answer(1, 0)[3])
	proc, err := linux.NewProcess(pcfg)
	if err != nil {
		return err
	}
	proc.Unsupported = func(nr uint64, name string) {
		m.log.Warn("unsupported system call: ENOSYS", zap.Uint64("nr", nr), zap.String("name", name))
	}
	m.proc = proc
	entry, sp, err := proc.Boot(linuxMachine{m}, setup.Program)
	if err != nil {
		return fmt.Errorf("starting the program: %w", err)
	}
	if err := m.eng.RegWriteBatch([]uc.Reg{uc.RIP, uc.RSP, uc.RFLAGS}, []uint64{entry, sp, 0x202}); err != nil {
		return err
	}
	if err := m.resetFPU(); err != nil {
		return err
	}
	// Ring 3 with CR4.TSD: RDTSC and RDTSCP fault to the hypervisor, which
	// answers them from the environment.
	// Unicorn starts with CR4 reading 0 but SSE enabled in its hidden
	// flags; writing CR4 recomputes them, so OSFXSR and OSXMMEXCPT go in
	// with TSD.
	cr4, err := m.eng.RegRead(uc.CR4)
	if err == nil {
		err = m.eng.RegWrite(uc.CR4, cr4|cr4OSFXSR|cr4OSXMMEXCPT|cr4TSD)
	}
	if err == nil {
		err = m.eng.SetCPL(3)
	}
	return err
}

const (
	cr4TSD        = 1 << 2
	cr4OSFXSR     = 1 << 9
	cr4OSXMMEXCPT = 1 << 10
)

// timeStamp emulates the RDTSC or RDTSCP at rip (a #GP under CR4.TSD)
// and reports whether the instruction was one.
func (m *Machine) timeStamp(rip uint64) bool {
	var insn [3]byte
	l := linuxMachine{m}
	if err := l.Read(rip, insn[:2]); err != nil {
		return false
	}
	size := uint64(0)
	switch {
	case insn[0] == 0x0F && insn[1] == 0x31:
		size = 2
	case insn[0] == 0x0F && insn[1] == 0x01:
		if err := l.Read(rip+2, insn[2:]); err == nil && insn[2] == 0xF9 {
			size = 3
		}
	}
	if size == 0 {
		return false
	}
	v, err := m.proc.ReadTSC(l)
	if err != nil {
		m.failHook(err)
		return true
	}
	regs := []uc.Reg{uc.RAX, uc.RDX, uc.RIP}
	vals := []uint64{v & 0xFFFF_FFFF, v >> 32, rip + size}
	if size == 3 {
		regs, vals = append(regs, uc.RCX), append(vals, 0) // IA32_TSC_AUX: CPU 0
	}
	if err := m.eng.RegWriteBatch(regs, vals); err != nil {
		m.failHook(err)
	}
	return true
}

var syscallRegs = []uc.Reg{uc.RAX, uc.RDI, uc.RSI, uc.RDX, uc.R10, uc.R8, uc.R9, uc.RIP, uc.RFLAGS}

// Syscall implements uc.SyscallHandler: the personality performs the call.
func (m *Machine) Syscall() {
	if m.hookErr != nil || m.fault != nil {
		return
	}
	var v [9]uint64
	if err := m.eng.RegReadBatch(syscallRegs, v[:]); err != nil {
		m.failHook(err)
		return
	}
	ret, err := m.proc.Syscall(linuxMachine{m}, v[0], [6]uint64{v[1], v[2], v[3], v[4], v[5], v[6]})
	if err != nil {
		m.failHook(err)
		return
	}
	// As on Linux: RAX the result, RCX the return address, R11 the flags.
	if err := m.eng.RegWriteBatch([]uc.Reg{uc.RAX, uc.RCX, uc.R11}, []uint64{ret, v[7] + 2, v[8]}); err != nil {
		m.failHook(err)
		return
	}
	if m.proc.Exited {
		m.board.PoweredOff, m.board.ExitCode = true, uint32(m.proc.ExitCode)
		if err := m.env.Out(Output{Port: PortPowerOff, Value: uint32(m.proc.ExitCode), At: m.point(), Answers: m.seq}, EffectPowerOff, m.board); err != nil {
			m.failHook(err)
			return
		}
		m.powerStop = true
		m.eng.StopPrecise()
		return
	}
	// A system call is an environment instruction: a quiet epoch may end
	// here (the adaptive clock; a Linux program arms no interrupt, so
	// only the epoch's bound ends one).
	m.afterEnvOp()
}

// exceptionSignals names the signals a program's faults raise.
var exceptionSignals = map[uint32]string{0: "SIGFPE (divide error)", 1: "SIGTRAP (debug)", 3: "SIGTRAP (breakpoint)",
	4: "SIGSEGV (overflow)", 5: "SIGSEGV (bound range)", 6: "SIGILL (invalid instruction)", 7: "SIGFPE (no FPU)",
	13: "SIGSEGV (general protection fault)", 14: "SIGSEGV (page fault)", 16: "SIGFPE (x87 error)",
	17: "SIGBUS (alignment check)", 19: "SIGFPE (SIMD error)"}

// killProgram ends the run on a fault the program would die of on Linux
// (no signal handlers run: docs/linux.md).
func (m *Machine) killProgram(what string) {
	rip, _ := m.eng.RegRead(uc.RIP)
	m.fault = fmt.Errorf("the program was killed by %s at RIP %#x", what, rip)
	m.eng.StopPrecise()
}

// linuxFault describes why a Linux program's run stopped with an error.
func (m *Machine) linuxFault(runErr error) error {
	if addr, access, ok := m.eng.PageFault(); ok {
		m.eng.ClearPageFault()
		kind := map[uc.Access]string{uc.Read: "read of", uc.Write: "write to", uc.Fetch: "instruction fetch from"}[access]
		return fmt.Errorf("the program was killed by SIGSEGV: %s the page at %#x, which is not mapped so (in the block at RIP %#x)", kind, addr, m.point().RIP)
	}
	return m.describeFault(runErr)
}
