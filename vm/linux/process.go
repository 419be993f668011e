package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
)

// Machine is what the personality needs of the machine the program runs
// on. Addresses are the program's virtual addresses.
type Machine interface {
	// Read and Write move bytes of the program's memory; an address not
	// mapped (or, for Write, not writable) is an error (EFAULT).
	Read(addr uint64, buf []byte) error
	Write(addr uint64, data []byte) error
	// Map backs [addr, addr+size) with fresh zeroed pages; Unmap releases
	// them; Protect changes their protection; Move carries the pages of
	// [from, from+size) to [to, to+size), contents and all.
	Map(addr, size uint64, prot Prot) error
	Unmap(addr, size uint64)
	Protect(addr, size uint64, prot Prot) error
	Move(from, to, size uint64) error
	SetFSBase(v uint64) error
	// Ask asks the environment; an error stops the machine.
	Ask(c Call) (Result, error)
	// Emit sends bytes written to standard output (fd 1) or error (fd 2).
	Emit(fd int, data []byte) error
}

// Config is what the program is started with; replicas must agree on all
// of it.
type Config struct {
	Args []string
	Env  []string
	// Exe is the program's path as the program sees it (/proc/self/exe,
	// AT_EXECFN).
	Exe string
	// Cwd is the initial working directory, absolute.
	Cwd string
	// UID and GID are the identity the program sees (the user running
	// hvft, on the primary).
	UID, GID uint32
	// HWCap is AT_HWCAP: CPUID leaf 1's EDX as the board's CPU answers it
	// (0: a baseline of fpu, cx8, cmov, mmx, fxsr, sse and sse2).
	HWCap uint64
}

type vma struct {
	start, end uint64
	prot       Prot
}

type fileKind uint8

const (
	kindStdin fileKind = iota + 1
	kindStdout
	kindStderr
	kindFile
	kindDir
	kindPipeRead
	kindPipeWrite
)

// file is an open file description (shared by dup'd descriptors).
type file struct {
	id    uint64
	kind  fileKind
	path  string
	flags uint64
	off   int64
	pipe  *pipe
}

type pipe struct {
	id      uint64
	buf     []byte
	readers int
	writers int
}

type fd struct {
	f       *file
	cloexec bool
}

// Process is the program's state kept by the hypervisor. Everything in it
// follows from the program's instructions and the environment's answers,
// so replicas hold equal Processes; State serializes it for the state hash.
type Process struct {
	cfg      Config
	vmas     []vma
	brkBase  uint64
	brk      uint64
	fds      []*fd
	cwd      string
	umask    uint32
	lastMono int64
	lastTSC  uint64
	nextID   uint64
	// AT_RANDOM: where it is, what it holds, whether it was filled.
	randomAddr uint64
	random     [16]byte
	started    bool
	stdinRead  uint64
	// Exited is set by exit or exit_group, with the status.
	Exited   bool
	ExitCode int
	// Unsupported is called once per unimplemented call number (for the
	// log); it does not change the state.
	Unsupported func(nr uint64, name string)
	warned      map[uint64]bool
}

// NewProcess returns a process about to run a program with cfg.
func NewProcess(cfg Config) (*Process, error) {
	if len(cfg.Args) == 0 {
		return nil, errors.New("a Linux program needs argv[0]")
	}
	if cfg.Cwd == "" {
		cfg.Cwd = "/"
	}
	if !strings.HasPrefix(cfg.Cwd, "/") {
		return nil, fmt.Errorf("working directory %q is not absolute", cfg.Cwd)
	}
	p := &Process{cfg: cfg, cwd: path.Clean(cfg.Cwd), umask: 0o022, warned: map[uint64]bool{}}
	p.fds = []*fd{{f: p.newFile(kindStdin, "", oRdonly)}, {f: p.newFile(kindStdout, "", oWronly)}, {f: p.newFile(kindStderr, "", oWronly)}}
	return p, nil
}

func (p *Process) newFile(k fileKind, pth string, flags uint64) *file {
	p.nextID++
	return &file{id: p.nextID, kind: k, path: pth, flags: flags}
}

// Boot loads prog, lays out the initial stack and returns where the
// program starts: its entry point and stack pointer.
func (p *Process) Boot(m Machine, prog *Program) (entry, sp uint64, err error) {
	for _, s := range prog.Segments {
		lo, hi := pageDown(s.Addr), pageUp(s.Addr+s.MemSize)
		// Segments may share a page at their edges: map only what is not
		// mapped yet, and widen the protection of what is.
		for a := lo; a < hi; a += PageSize {
			if v := p.find(a); v != nil {
				if err := p.protect(m, a, PageSize, v.prot|s.Prot|ProtWrite); err != nil {
					return 0, 0, err
				}
				continue
			}
			if err := p.mapFixed(m, a, PageSize, s.Prot|ProtWrite); err != nil {
				return 0, 0, fmt.Errorf("loading the segment at %#x: %w", s.Addr, err)
			}
		}
		if err := m.Write(s.Addr, s.Data); err != nil {
			return 0, 0, fmt.Errorf("loading the segment at %#x: %w", s.Addr, err)
		}
		if hi > p.brkBase {
			p.brkBase = hi
		}
	}
	for _, s := range prog.Segments {
		if err := p.protect(m, pageDown(s.Addr), pageUp(s.Addr+s.MemSize)-pageDown(s.Addr), p.segProt(prog, s)); err != nil {
			return 0, 0, err
		}
	}
	p.brk = p.brkBase
	if err := p.mapFixed(m, stackTop-stackMax, stackMax, ProtRead|ProtWrite); err != nil {
		return 0, 0, fmt.Errorf("mapping the stack: %w", err)
	}
	sp, err = p.initialStack(m, prog, make([]byte, 16))
	return prog.Entry, sp, err
}

// Start fills AT_RANDOM from the environment: the run's first answer,
// asked before the program's first instruction (not at boot, so that a
// machine built only to receive a running program's state asks nothing).
func (p *Process) Start(m Machine) error {
	if p.started {
		return nil
	}
	r, err := m.Ask(Call{Op: OpRandom, Size: 16})
	if err != nil {
		return err
	}
	if len(r.Data) != len(p.random) {
		return fmt.Errorf("AT_RANDOM: the environment gave %d bytes, want %d", len(r.Data), len(p.random))
	}
	copy(p.random[:], r.Data)
	p.started = true
	return m.Write(p.randomAddr, r.Data)
}

// Random is AT_RANDOM: it names the run (the journal's file).
func (p *Process) Random() []byte { return append([]byte(nil), p.random[:]...) }

// StdinRead counts the bytes of standard input the program has read.
func (p *Process) StdinRead() uint64 { return p.stdinRead }

// segProt is the protection of the pages of s once loaded: the union of
// every segment's that shares them.
func (p *Process) segProt(prog *Program, s Segment) Prot {
	prot := s.Prot
	lo, hi := pageDown(s.Addr), pageUp(s.Addr+s.MemSize)
	for _, o := range prog.Segments {
		if pageDown(o.Addr) < hi && lo < pageUp(o.Addr+o.MemSize) {
			prot |= o.Prot
		}
	}
	return prot
}

func (p *Process) initialStack(m Machine, prog *Program, random []byte) (uint64, error) {
	top := uint64(stackTop)
	var strs []byte
	place := func(b []byte) uint64 { // addresses fixed below, once the size is known
		off := uint64(len(strs))
		strs = append(strs, b...)
		return off
	}
	cstr := func(s string) uint64 { return place(append([]byte(s), 0)) }
	exeOff := cstr(p.cfg.Exe)
	argOffs := make([]uint64, len(p.cfg.Args))
	for i, a := range p.cfg.Args {
		argOffs[i] = cstr(a)
	}
	envOffs := make([]uint64, len(p.cfg.Env))
	for i, e := range p.cfg.Env {
		envOffs[i] = cstr(e)
	}
	platOff := cstr("x86_64")
	randOff := place(random)
	if len(strs) > 256<<10 {
		return 0, fmt.Errorf("arguments and environment take %d bytes; at most 256 KiB fit", len(strs))
	}
	strBase := (top - 16 - uint64(len(strs))) &^ 15
	addr := func(off uint64) uint64 { return strBase + off }
	auxv := [][2]uint64{
		{atPhdr, prog.PHdr}, {atPhent, prog.PHEnt}, {atPhnum, prog.PHNum}, {atPagesz, PageSize},
		{atBase, 0}, {atFlags, 0}, {atEntry, prog.Entry}, {atUID, uint64(p.cfg.UID)}, {atEUID, uint64(p.cfg.UID)},
		{atGID, uint64(p.cfg.GID)}, {atEGID, uint64(p.cfg.GID)}, {atPlatform, addr(platOff)}, {atHwcap, p.hwcap()},
		{atClktck, 100}, {atSecure, 0}, {atRandom, addr(randOff)}, {atHwcap2, 0}, {atExecfn, addr(exeOff)},
		{atNull, 0},
	}
	words := 1 + len(argOffs) + 1 + len(envOffs) + 1 + 2*len(auxv)
	sp := (strBase - uint64(8*words)) &^ 15
	var w []byte
	put := func(v uint64) { w = binary.LittleEndian.AppendUint64(w, v) }
	put(uint64(len(argOffs)))
	for _, o := range argOffs {
		put(addr(o))
	}
	put(0)
	for _, o := range envOffs {
		put(addr(o))
	}
	put(0)
	for _, kv := range auxv {
		put(kv[0])
		put(kv[1])
	}
	p.randomAddr = addr(randOff)
	if err := m.Write(strBase, strs); err != nil {
		return 0, err
	}
	if err := m.Write(sp, w); err != nil {
		return 0, err
	}
	return sp, nil
}

// baselineHWCap is AT_HWCAP when the machine gives none: fpu, cx8, cmov,
// mmx, fxsr, sse, sse2.
const baselineHWCap = 1<<0 | 1<<8 | 1<<15 | 1<<23 | 1<<24 | 1<<25 | 1<<26

func (p *Process) hwcap() uint64 {
	if p.cfg.HWCap != 0 {
		return p.cfg.HWCap
	}
	return baselineHWCap
}

// find returns the mapping holding addr.
func (p *Process) find(addr uint64) *vma {
	i := sort.Search(len(p.vmas), func(i int) bool { return p.vmas[i].end > addr })
	if i < len(p.vmas) && p.vmas[i].start <= addr {
		return &p.vmas[i]
	}
	return nil
}

// mapFixed maps [addr, addr+size), replacing what was there.
func (p *Process) mapFixed(m Machine, addr, size uint64, prot Prot) error {
	p.unmap(m, addr, size)
	if err := m.Map(addr, size, prot); err != nil {
		return err
	}
	p.vmas = append(p.vmas, vma{addr, addr + size, prot})
	sort.Slice(p.vmas, func(i, j int) bool { return p.vmas[i].start < p.vmas[j].start })
	p.merge()
	return nil
}

func (p *Process) merge() {
	out := p.vmas[:0]
	for _, v := range p.vmas {
		if n := len(out); n > 0 && out[n-1].end == v.start && out[n-1].prot == v.prot {
			out[n-1].end = v.end
			continue
		}
		out = append(out, v)
	}
	p.vmas = out
}

// split cuts mappings at addr so that a range can start or end there.
func (p *Process) split(addr uint64) {
	for i, v := range p.vmas {
		if v.start < addr && addr < v.end {
			p.vmas = append(p.vmas[:i+1], p.vmas[i:]...)
			p.vmas[i].end = addr
			p.vmas[i+1].start = addr
			return
		}
	}
}

// unmap releases whatever is mapped in [addr, addr+size).
func (p *Process) unmap(m Machine, addr, size uint64) {
	end := addr + size
	p.split(addr)
	p.split(end)
	out := p.vmas[:0]
	for _, v := range p.vmas {
		if v.start >= addr && v.end <= end {
			m.Unmap(v.start, v.end-v.start)
			continue
		}
		out = append(out, v)
	}
	p.vmas = out
}

// protect changes the protection of [addr, addr+size), all of which must
// be mapped.
func (p *Process) protect(m Machine, addr, size uint64, prot Prot) error {
	end := addr + size
	for a := addr; a < end; {
		v := p.find(a)
		if v == nil {
			return errNoMem
		}
		a = v.end
	}
	p.split(addr)
	p.split(end)
	for i := range p.vmas {
		v := &p.vmas[i]
		if v.start >= addr && v.end <= end {
			v.prot = prot
		}
	}
	p.merge()
	return m.Protect(addr, size, prot)
}

var errNoMem = errors.New("range not mapped")

// freeRange finds size bytes unmapped below mmapTop, highest first.
func (p *Process) freeRange(size uint64) (uint64, bool) {
	hi := uint64(mmapTop)
	for i := len(p.vmas) - 1; i >= 0; i-- {
		v := p.vmas[i]
		if v.start >= hi {
			continue
		}
		if v.end <= hi && hi-v.end >= size {
			return hi - size, true
		}
		if v.start < hi {
			hi = v.start
		}
	}
	if hi-pageUp(p.brk+(64<<20)) >= size && hi > size {
		return hi - size, true
	}
	return 0, false
}

// State serializes the process: everything a replica must agree on, in
// an order that does not depend on maps, for the state hash and for a
// backup that joins (RestoreProcess).
func (p *Process) State() []byte {
	var e encoder
	e.u64(p.brkBase)
	e.u64(p.brk)
	e.u64(uint64(len(p.vmas)))
	for _, v := range p.vmas {
		e.u64(v.start)
		e.u64(v.end)
		e.u8(uint8(v.prot))
	}
	// Open file descriptions and pipes, each once, in id order.
	files, pipes := map[uint64]*file{}, map[uint64]*pipe{}
	for _, d := range p.fds {
		if d != nil {
			files[d.f.id] = d.f
			if d.f.pipe != nil {
				pipes[d.f.pipe.id] = d.f.pipe
			}
		}
	}
	e.u64(uint64(len(pipes)))
	for _, id := range sortedKeys(pipes) {
		pp := pipes[id]
		e.u64(pp.id)
		e.u64(uint64(pp.readers))
		e.u64(uint64(pp.writers))
		e.bytes(pp.buf)
	}
	e.u64(uint64(len(files)))
	for _, id := range sortedKeys(files) {
		f := files[id]
		e.u64(f.id)
		e.u8(uint8(f.kind))
		e.u64(f.flags)
		e.u64(uint64(f.off))
		e.bytes([]byte(f.path))
		var pid uint64
		if f.pipe != nil {
			pid = f.pipe.id
		}
		e.u64(pid)
	}
	e.u64(uint64(len(p.fds)))
	for _, d := range p.fds {
		if d == nil {
			e.u64(0)
			continue
		}
		e.u64(d.f.id)
		e.bool(d.cloexec)
	}
	e.bytes([]byte(p.cwd))
	e.u64(uint64(p.umask))
	e.u64(uint64(p.lastMono))
	e.u64(p.lastTSC)
	e.u64(p.nextID)
	e.u64(p.randomAddr)
	e.b = append(e.b, p.random[:]...)
	e.bool(p.started)
	e.u64(p.stdinRead)
	e.bool(p.Exited)
	e.u64(uint64(p.ExitCode))
	return e.b
}

// RestoreProcess rebuilds a process of cfg from State's bytes at the
// front of b, and returns the bytes after them. Everything is checked: the
// bytes come from a peer.
func RestoreProcess(cfg Config, b []byte) (*Process, []byte, error) {
	p, err := NewProcess(cfg)
	if err != nil {
		return nil, nil, err
	}
	d := decoder{b: b}
	p.brkBase, p.brk = d.u64(), d.u64()
	n := d.count(17)
	p.vmas = make([]vma, 0, n)
	for i := uint64(0); i < n; i++ {
		v := vma{start: d.u64(), end: d.u64(), prot: Prot(d.u8())}
		if v.start%PageSize != 0 || v.end%PageSize != 0 || v.end <= v.start || v.prot > 7 ||
			len(p.vmas) > 0 && p.vmas[len(p.vmas)-1].end > v.start {
			return nil, nil, fmt.Errorf("process state: mapping %#x-%#x (protection %d) is not a page range after the one before", v.start, v.end, v.prot)
		}
		p.vmas = append(p.vmas, v)
	}
	pipes := map[uint64]*pipe{}
	for n, i := d.count(32), uint64(0); i < n; i++ {
		pp := &pipe{id: d.u64(), readers: int(d.u64()), writers: int(d.u64()), buf: d.bytes()}
		pipes[pp.id] = pp
	}
	files := map[uint64]*file{}
	for n, i := d.count(33), uint64(0); i < n; i++ {
		f := &file{id: d.u64(), kind: fileKind(d.u8()), flags: d.u64(), off: int64(d.u64()), path: string(d.bytes())}
		if pid := d.u64(); pid != 0 {
			if f.pipe = pipes[pid]; f.pipe == nil {
				return nil, nil, fmt.Errorf("process state: file %d names pipe %d, which does not exist", f.id, pid)
			}
		}
		if f.kind < kindStdin || f.kind > kindPipeWrite || f.off < 0 || (f.kind == kindPipeRead || f.kind == kindPipeWrite) != (f.pipe != nil) {
			return nil, nil, fmt.Errorf("process state: file %d of kind %d at offset %d is inconsistent", f.id, f.kind, f.off)
		}
		files[f.id] = f
	}
	n = d.count(9)
	if n > maxFDs {
		return nil, nil, fmt.Errorf("process state: %d descriptors, more than %d", n, maxFDs)
	}
	p.fds = make([]*fd, n)
	for i := range p.fds {
		id := d.u64()
		if id == 0 {
			continue
		}
		f := files[id]
		if f == nil {
			return nil, nil, fmt.Errorf("process state: descriptor %d names file %d, which does not exist", i, id)
		}
		p.fds[i] = &fd{f: f, cloexec: d.bool()}
	}
	p.cwd = string(d.bytes())
	p.umask = uint32(d.u64())
	p.lastMono, p.lastTSC, p.nextID = int64(d.u64()), d.u64(), d.u64()
	p.randomAddr = d.u64()
	copy(p.random[:], d.take(len(p.random)))
	p.started = d.bool()
	p.stdinRead = d.u64()
	p.Exited, p.ExitCode = d.bool(), int(d.u64())
	if d.err != nil {
		return nil, nil, fmt.Errorf("process state: %w", d.err)
	}
	if !strings.HasPrefix(p.cwd, "/") || p.brk < p.brkBase {
		return nil, nil, fmt.Errorf("process state: working directory %q, brk %#x below %#x", p.cwd, p.brk, p.brkBase)
	}
	return p, d.b, nil
}

func sortedKeys[V any](m map[uint64]V) []uint64 {
	keys := make([]uint64, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}

type encoder struct{ b []byte }

func (e *encoder) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func (e *encoder) u8(v uint8)   { e.b = append(e.b, v) }
func (e *encoder) bool(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}
func (e *encoder) bytes(b []byte) {
	e.u64(uint64(len(b)))
	e.b = append(e.b, b...)
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil || n < 0 || n > len(d.b) {
		if d.err == nil {
			d.err = errors.New("truncated")
		}
		return make([]byte, max(n, 0))
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

func (d *decoder) u64() uint64 { return binary.LittleEndian.Uint64(d.take(8)) }
func (d *decoder) u8() uint8   { return d.take(1)[0] }
func (d *decoder) bool() bool {
	v := d.u8()
	if v > 1 && d.err == nil {
		d.err = fmt.Errorf("flag %d (want 0 or 1)", v)
	}
	return v == 1
}

// count reads a count of records of at least size bytes each, refusing
// one the remaining bytes cannot hold.
func (d *decoder) count(size int) uint64 {
	n := d.u64()
	if d.err == nil && n > uint64(len(d.b)/size) {
		d.err = fmt.Errorf("%d records cannot fit in %d bytes", n, len(d.b))
		return 0
	}
	return n
}

func (d *decoder) bytes() []byte {
	n := d.count(1)
	return append([]byte(nil), d.take(int(n))...)
}

// ReadTSC answers RDTSC from the environment; the counter never goes
// back, even across a failover.
func (p *Process) ReadTSC(m Machine) (uint64, error) {
	r, err := m.Ask(Call{Op: OpTSC})
	if err != nil {
		return 0, err
	}
	v := uint64(r.Value)
	if v <= p.lastTSC {
		v = p.lastTSC + 1
	}
	p.lastTSC = v
	return v, nil
}
