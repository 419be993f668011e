package linux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeMachine is a linux.Machine over a map of pages, with a real Host
// answering requests: the personality's logic, without Unicorn.
type fakeMachine struct {
	pages map[uint64]*fakePage
	host  *Host
	seq   uint64
	out   map[int]*bytes.Buffer
	fs    uint64
	asks  []Call
}

type fakePage struct {
	data [PageSize]byte
	prot Prot
}

func newFake(t *testing.T) *fakeMachine {
	t.Helper()
	h, err := NewHost(t.TempDir(), strings.NewReader("standard input\n"), bytes.NewReader(bytes.Repeat([]byte{7}, 4096)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return &fakeMachine{pages: map[uint64]*fakePage{}, host: h, out: map[int]*bytes.Buffer{1: {}, 2: {}}}
}

func (f *fakeMachine) access(addr uint64, n int, write bool, fn func(p *fakePage, off uint64, b int)) error {
	for done := 0; done < n; {
		a := addr + uint64(done)
		p := f.pages[a/PageSize]
		if p == nil || (write && p.prot&ProtWrite == 0) {
			return fmt.Errorf("bad address %#x", a)
		}
		chunk := min(n-done, int(PageSize-a%PageSize))
		fn(p, a%PageSize, done)
		done += chunk
	}
	return nil
}

func (f *fakeMachine) Read(addr uint64, buf []byte) error {
	return f.access(addr, len(buf), false, func(p *fakePage, off uint64, at int) { copy(buf[at:], p.data[off:]) })
}

func (f *fakeMachine) Write(addr uint64, data []byte) error {
	return f.access(addr, len(data), true, func(p *fakePage, off uint64, at int) { copy(p.data[off:], data[at:]) })
}

func (f *fakeMachine) Map(addr, size uint64, prot Prot) error {
	for a := addr; a < addr+size; a += PageSize {
		if f.pages[a/PageSize] != nil {
			return fmt.Errorf("page %#x mapped twice", a)
		}
		f.pages[a/PageSize] = &fakePage{prot: prot}
	}
	return nil
}

func (f *fakeMachine) Unmap(addr, size uint64) {
	for a := addr; a < addr+size; a += PageSize {
		delete(f.pages, a/PageSize)
	}
}

func (f *fakeMachine) Protect(addr, size uint64, prot Prot) error {
	for a := addr; a < addr+size; a += PageSize {
		p := f.pages[a/PageSize]
		if p == nil {
			return errors.New("not mapped")
		}
		p.prot = prot
	}
	return nil
}

func (f *fakeMachine) Move(from, to, size uint64) error {
	for off := uint64(0); off < size; off += PageSize {
		p := f.pages[(from+off)/PageSize]
		if p == nil {
			return errors.New("not mapped")
		}
		delete(f.pages, (from+off)/PageSize)
		f.pages[(to+off)/PageSize] = p
	}
	return nil
}

func (f *fakeMachine) SetFSBase(v uint64) error { f.fs = v; return nil }

func (f *fakeMachine) Ask(c Call) (Result, error) {
	f.seq++
	f.asks = append(f.asks, c)
	return f.host.DoAt(f.seq, c)
}

func (f *fakeMachine) Emit(fd int, data []byte) error {
	f.out[fd].Write(data)
	return nil
}

// checkMapped fails unless the process's mappings and the fake's pages
// agree page for page.
func checkMapped(t *testing.T, p *Process, f *fakeMachine) {
	t.Helper()
	n := 0
	for _, v := range p.vmas {
		for a := v.start; a < v.end; a += PageSize {
			pg := f.pages[a/PageSize]
			if pg == nil {
				t.Fatalf("mapping %#x-%#x: page %#x not backed", v.start, v.end, a)
			}
			if pg.prot != v.prot {
				t.Fatalf("page %#x: protection %d, mapping says %d", a, pg.prot, v.prot)
			}
			n++
		}
	}
	if n != len(f.pages) {
		t.Fatalf("%d pages backed, %d mapped: a page leaked", len(f.pages), n)
	}
}

// scratch maps a page for syscall arguments and returns its address.
func scratch(t *testing.T, p *Process, f *fakeMachine) uint64 {
	t.Helper()
	addr, err := p.Syscall(f, sysMmap, [6]uint64{0, PageSize, uint64(ProtRead | ProtWrite), mapPrivate | mapAnonymous, ^uint64(0), 0})
	if err != nil || int64(addr) < 0 {
		t.Fatalf("mmap scratch: %#x %v", addr, err)
	}
	return addr
}

func call(t *testing.T, p *Process, f *fakeMachine, nr uint64, args ...uint64) int64 {
	t.Helper()
	var a [6]uint64
	copy(a[:], args)
	r, err := p.Syscall(f, nr, a)
	if err != nil {
		t.Fatalf("%s: %v", SyscallName(nr), err)
	}
	return int64(r)
}

func TestMemoryCalls(t *testing.T) {
	f := newFake(t)
	p, err := NewProcess(Config{Args: []string{"prog"}})
	if err != nil {
		t.Fatal(err)
	}
	p.brkBase, p.brk = 0x600000, 0x600000
	if got := call(t, p, f, sysBrk, 0); got != 0x600000 {
		t.Fatalf("brk(0) = %#x", got)
	}
	if got := call(t, p, f, sysBrk, 0x623456); got != 0x623456 {
		t.Fatalf("brk grow = %#x", got)
	}
	checkMapped(t, p, f)
	if err := f.Write(0x623000, []byte("heap")); err != nil {
		t.Fatalf("the grown heap is not writable: %v", err)
	}
	call(t, p, f, sysBrk, 0x601000)
	checkMapped(t, p, f)
	if f.pages[0x623000/PageSize] != nil {
		t.Fatal("shrinking brk left its pages")
	}
	a := call(t, p, f, sysMmap, 0, 10*PageSize, uint64(ProtRead|ProtWrite), mapPrivate|mapAnonymous, ^uint64(0))
	b := call(t, p, f, sysMmap, 0, 3*PageSize, uint64(ProtRead), mapPrivate|mapAnonymous, ^uint64(0))
	if a <= 0 || b <= 0 || b+3*PageSize > a && a+10*PageSize > b {
		t.Fatalf("mmap gave overlapping or failed ranges %#x, %#x", a, b)
	}
	checkMapped(t, p, f)
	if err := f.Write(uint64(b), []byte{1}); err == nil {
		t.Fatal("a PROT_READ mapping took a write")
	}
	// A hole in the middle splits the mapping in two.
	call(t, p, f, sysMunmap, uint64(a)+2*PageSize, 3*PageSize)
	checkMapped(t, p, f)
	if got := call(t, p, f, sysMprotect, uint64(a), 2*PageSize, uint64(ProtRead)); got != 0 {
		t.Fatalf("mprotect = %d", got)
	}
	checkMapped(t, p, f)
	if got := call(t, p, f, sysMprotect, uint64(a)+2*PageSize, PageSize, uint64(ProtRead)); got != -ENOMEM {
		t.Fatalf("mprotect of a hole = %d, want -ENOMEM", got)
	}
	// mremap: grow in place when the pages after are free, else move with
	// the contents.
	f.Write(uint64(a)+5*PageSize, []byte("moved"))
	grown := call(t, p, f, sysMremap, uint64(a)+5*PageSize, 5*PageSize, 40*PageSize, mremapMaymov)
	if grown <= 0 {
		t.Fatalf("mremap = %d", grown)
	}
	checkMapped(t, p, f)
	var got [5]byte
	if err := f.Read(uint64(grown), got[:]); err != nil || string(got[:]) != "moved" {
		t.Fatalf("mremap lost the contents: %q %v", got, err)
	}
	if got := call(t, p, f, sysMunmap, 12345, PageSize); got != -EINVAL {
		t.Fatalf("unaligned munmap = %d", got)
	}
	fixed := call(t, p, f, sysMmap, 0x10000000, PageSize, uint64(ProtRead|ProtWrite), mapPrivate|mapAnonymous|mapFixed, ^uint64(0))
	if fixed != 0x10000000 {
		t.Fatalf("MAP_FIXED = %#x", fixed)
	}
	if got := call(t, p, f, sysMmap, 0x10000000, PageSize, uint64(ProtRead), mapPrivate|mapAnonymous|mapFixedNoRe, ^uint64(0)); got != -EEXIST {
		t.Fatalf("MAP_FIXED_NOREPLACE over a mapping = %d", got)
	}
	checkMapped(t, p, f)
}

func TestFileCalls(t *testing.T) {
	f := newFake(t)
	root := f.host.Root
	os.MkdirAll(filepath.Join(root, "d"), 0o755)
	os.WriteFile(filepath.Join(root, "d", "a.txt"), []byte("0123456789"), 0o644)
	os.WriteFile(filepath.Join(root, "d", "b.txt"), nil, 0o644)
	p, _ := NewProcess(Config{Args: []string{"prog"}, Cwd: "/d"})
	buf := scratch(t, p, f)
	str := func(s string) uint64 {
		f.Write(buf, append([]byte(s), 0))
		return buf
	}
	data := buf + 1024
	// Relative to the working directory, and ".." cannot leave the root.
	fd := call(t, p, f, sysOpenat, uint64(atFDCWD&0xFFFFFFFF), str("../../../d/a.txt"), oRdonly)
	if fd != 3 {
		t.Fatalf("openat = %d, want 3", fd)
	}
	if n := call(t, p, f, sysRead, uint64(fd), data, 4); n != 4 {
		t.Fatalf("read = %d", n)
	}
	if n := call(t, p, f, sysPread64, uint64(fd), data+8, 3, 7); n != 3 {
		t.Fatalf("pread = %d", n)
	}
	if pos := call(t, p, f, sysLseek, uint64(fd), 0, 1); pos != 4 {
		t.Fatalf("pread moved the offset to %d", pos)
	}
	if pos := call(t, p, f, sysLseek, uint64(fd), uint64(-2&0xFFFFFFFFFFFFFFFF), 2); pos != 8 {
		t.Fatalf("SEEK_END-2 = %d", pos)
	}
	var got [11]byte
	f.Read(data, got[:])
	if string(got[:4]) != "0123" || string(got[8:11]) != "789" {
		t.Fatalf("read %q", got)
	}
	dup := call(t, p, f, sysDup, uint64(fd))
	if dup != 4 || call(t, p, f, sysLseek, uint64(dup), 0, 1) != 8 {
		t.Fatal("dup does not share the offset")
	}
	if call(t, p, f, sysClose, uint64(fd)) != 0 || call(t, p, f, sysClose, uint64(fd)) != -EBADF {
		t.Fatal("close twice")
	}
	// Writes: positional, and appends at the file's size.
	w := call(t, p, f, sysOpenat, uint64(atFDCWD&0xFFFFFFFF), str("new.txt"), oWronly|oCreat|oAppend, 0o644)
	f.Write(data, []byte("hello "))
	call(t, p, f, sysWrite, uint64(w), data, 6)
	os.WriteFile(filepath.Join(root, "d", "new.txt"), []byte("other hello "), 0o644) // someone else wrote
	call(t, p, f, sysWrite, uint64(w), data, 6)
	if b, _ := os.ReadFile(filepath.Join(root, "d", "new.txt")); string(b) != "other hello hello " {
		t.Fatalf("appends gave %q", b)
	}
	// Standard streams.
	f.Write(data, []byte("out"))
	if call(t, p, f, sysWrite, 1, data, 3) != 3 || f.out[1].String() != "out" {
		t.Fatalf("stdout got %q", f.out[1].String())
	}
	if n := call(t, p, f, sysRead, 0, data, 100); n != 15 {
		t.Fatalf("stdin read %d bytes", n)
	}
	// Directory listing: ".", ".." and the names, sorted, across calls.
	dfd := call(t, p, f, sysOpenat, uint64(atFDCWD&0xFFFFFFFF), str("/d"), oRdonly|oDirectory)
	var names []string
	for {
		n := call(t, p, f, sysGetdents64, uint64(dfd), data, 48)
		if n < 0 {
			t.Fatalf("getdents64 = %d", n)
		}
		if n == 0 {
			break
		}
		rec := make([]byte, n)
		f.Read(data, rec)
		for off := 0; off < len(rec); {
			l := int(binary.LittleEndian.Uint16(rec[off+16:]))
			names = append(names, strings.TrimRight(string(rec[off+19:off+l]), "\x00"))
			off += l
		}
	}
	if strings.Join(names, " ") != ". .. a.txt b.txt new.txt" {
		t.Fatalf("listing %q", names)
	}
	// Relative to a directory descriptor.
	if got := call(t, p, f, sysOpenat, uint64(dfd), str("b.txt"), oRdonly); got < 0 {
		t.Fatalf("openat(dirfd) = %d", got)
	}
	if got := call(t, p, f, sysOpenat, uint64(atFDCWD&0xFFFFFFFF), str("missing"), oRdonly); got != -ENOENT {
		t.Fatalf("open of a missing file = %d", got)
	}
	if got := call(t, p, f, sysUnlinkat, uint64(atFDCWD&0xFFFFFFFF), str("b.txt"), 0); got != 0 {
		t.Fatalf("unlink = %d", got)
	}
	if _, err := os.Stat(filepath.Join(root, "d", "b.txt")); err == nil {
		t.Fatal("unlink left the file")
	}
}

func TestUnsupportedCallsAreLoggedOnce(t *testing.T) {
	f := newFake(t)
	p, _ := NewProcess(Config{Args: []string{"prog"}})
	var logged []string
	p.Unsupported = func(nr uint64, name string) { logged = append(logged, name) }
	for i := 0; i < 3; i++ {
		if got := call(t, p, f, sysClone, 0); got != -ENOSYS {
			t.Fatalf("clone = %d", got)
		}
		if got := call(t, p, f, 999); got != -ENOSYS {
			t.Fatalf("syscall 999 = %d", got)
		}
	}
	if strings.Join(logged, ",") != "clone,syscall_999" {
		t.Fatalf("logged %q", logged)
	}
}

// TestJournalResolvesTheLastCall: a replica that re-executes the old
// primary's last unrepeatable call finds its result in the journal, or,
// when only the intent made it, decides from the world whether it ran.
func TestJournalResolvesTheLastCall(t *testing.T) {
	root := t.TempDir()
	victim := filepath.Join(root, "victim")
	os.WriteFile(victim, nil, 0o644)
	random := bytes.Repeat([]byte{1}, 16)
	old, _ := NewHost(root, nil, bytes.NewReader(random))
	if err := old.EnableJournal(); err != nil {
		t.Fatal(err)
	}
	old.DoAt(1, Call{Op: OpRandom, Size: 16})
	if r, _ := old.DoAt(5, Call{Op: OpUnlink, Path: "/victim"}); r.Value != 0 {
		t.Fatalf("unlink = %d", r.Value)
	}
	old.Close()
	// The new primary re-executes answer 5: the journal says it ran.
	next, _ := NewHost(root, nil, nil)
	if err := next.EnableJournal(); err != nil {
		t.Fatal(err)
	}
	next.SetRunID(random)
	if r, _ := next.DoAt(5, Call{Op: OpUnlink, Path: "/victim"}); r.Value != 0 {
		t.Fatalf("re-executed unlink = %d, want the journaled 0", r.Value)
	}
	// Without the journal, the same re-execution reports ENOENT: what the
	// journal is for.
	bare, _ := NewHost(root, nil, nil)
	if r, _ := bare.DoAt(5, Call{Op: OpUnlink, Path: "/victim"}); r.Value != -ENOENT {
		t.Fatalf("unjournaled re-execution = %d, want -ENOENT", r.Value)
	}
	// Only the intent, which found the file: it is gone, so the unlink
	// happened.
	again := Call{Op: OpUnlink, Path: "/victim"}
	next.writeRecord(journalIntentAt, journalRecord{kind: recIntent, existed: true, seq: 6, call: again.digest()})
	if r, _ := next.DoAt(6, again); r.Value != 0 {
		t.Fatalf("uncertain unlink = %d, want 0", r.Value)
	}
	if err := next.RemoveJournal(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(next.JournalPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the journal outlived the run")
	}
	// A journal directory that takes no file is refused up front.
	ro, _ := NewHost(root, nil, nil)
	ro.JournalDir = filepath.Join(root, "missing", "dir")
	if err := ro.EnableJournal(); err == nil || !strings.Contains(err.Error(), "--journal-dir") {
		t.Fatalf("a journal directory that does not exist: %v", err)
	}
}

// elfHeader builds a minimal ELF file with the given class, type and one
// program header of type phType.
func elfHeader(class byte, typ uint16, phType uint32) []byte {
	b := make([]byte, 64+56+16)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = class, 1, 1
	le := binary.LittleEndian
	le.PutUint16(b[16:], typ)
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[24:], 0x401000)
	le.PutUint64(b[32:], 64)
	le.PutUint16(b[52:], 64)
	le.PutUint16(b[54:], 56)
	le.PutUint16(b[56:], 1)
	ph := b[64:]
	le.PutUint32(ph[0:], phType)
	le.PutUint32(ph[4:], 5)
	le.PutUint64(ph[16:], 0x401000)
	le.PutUint64(ph[24:], 0x401000)
	le.PutUint64(ph[32:], 16)
	le.PutUint64(ph[40:], 16)
	le.PutUint64(ph[8:], 64+56)
	return b
}

func TestParseProgramRefuses(t *testing.T) {
	if _, err := ParseProgram(elfHeader(2, 2, 1)); err != nil {
		t.Fatalf("a minimal static executable was refused: %v", err)
	}
	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"dynamic": {elfHeader(2, 2, 3), "dynamic executables are not supported: link with -static"},
		"32-bit":  {append(elfHeader(1, 2, 1)[:52:52], make([]byte, 64)...), "32-bit"},
		"object":  {elfHeader(2, 1, 1), "ELF type"},
		"no load": {elfHeader(2, 2, 4), "no loadable segment"},
		"garbage": {[]byte("#!/bin/sh\necho hi\n"), "not an ELF file"},
	} {
		_, err := ParseProgram(tc.data)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one saying %q", name, err, tc.want)
		}
	}
}

// TestReadsAreCutToOneFrame: a read larger than MaxTransfer comes back
// short, so that its answer fits the protocol's frame (a program that asks
// for 8 MiB at once must still replicate).
func TestReadsAreCutToOneFrame(t *testing.T) {
	f := newFake(t)
	os.WriteFile(filepath.Join(f.host.Root, "big"), bytes.Repeat([]byte("x"), 3*MaxTransfer), 0o644)
	p, _ := NewProcess(Config{Args: []string{"prog"}})
	buf := call(t, p, f, sysMmap, 0, 4*MaxTransfer, uint64(ProtRead|ProtWrite), mapPrivate|mapAnonymous, ^uint64(0))
	f.Write(uint64(buf), []byte("/big\x00"))
	fd := call(t, p, f, sysOpenat, uint64(atFDCWD&0xFFFFFFFF), uint64(buf), oRdonly)
	if n := call(t, p, f, sysRead, uint64(fd), uint64(buf), 4*MaxTransfer); n != MaxTransfer {
		t.Fatalf("read of %d bytes returned %d, want %d", 4*MaxTransfer, n, MaxTransfer)
	}
	if MaxTransfer+4096 > 1<<20 {
		t.Fatalf("MaxTransfer %d leaves no room in a 1 MiB frame", MaxTransfer)
	}
}

// TestSleepIsAnAnswer: nanosleep and clock_nanosleep (relative, and to an
// absolute deadline) ask the environment to let the time pass, for as
// long as asked: the live side sleeps, a replay answers at once.
func TestSleepIsAnAnswer(t *testing.T) {
	f := newFake(t)
	p, _ := NewProcess(Config{Args: []string{"prog"}})
	buf := scratch(t, p, f)
	f.Write(buf, append(u64(0), u64(2e6)...)) // 2 ms
	if got := call(t, p, f, sysNanosleep, buf, 0); got != 0 {
		t.Fatalf("nanosleep = %d", got)
	}
	if last := f.asks[len(f.asks)-1]; last.Op != OpSleep || last.Off != 2e6 {
		t.Fatalf("nanosleep asked %+v, want a sleep of 2 ms", last)
	}
	// An absolute deadline 3 ms past the clock's present.
	now := f.host.Now().UnixNano()
	f.Write(buf, append(u64(uint64(now/1e9)), u64(uint64(now%1e9))...))
	n := len(f.asks)
	f.host.Now = func() time.Time { return time.Unix(0, now-3e6) }
	if got := call(t, p, f, sysClockNanosleep, clockRealtime, 1, buf, 0); got != 0 {
		t.Fatalf("clock_nanosleep = %d", got)
	}
	if last := f.asks[len(f.asks)-1]; len(f.asks) != n+2 || last.Op != OpSleep || last.Off != 3e6 {
		t.Fatalf("clock_nanosleep asked %+v, want the clock then a sleep of 3 ms", f.asks[n:])
	}
	f.Write(buf, append(u64(0), u64(2e9)...))
	if got := call(t, p, f, sysNanosleep, buf, 0); got != -EINVAL {
		t.Fatalf("nanosleep of 2e9 ns in tv_nsec = %d, want -EINVAL", got)
	}
}

// TestPollReadiness: poll reports what a single-threaded process can do
// without waiting: a pipe by its buffer, the standard streams always, a
// closed descriptor as POLLNVAL; old signal state reads as the default.
func TestPollReadiness(t *testing.T) {
	f := newFake(t)
	p, _ := NewProcess(Config{Args: []string{"prog"}})
	buf := scratch(t, p, f)
	call(t, p, f, sysPipe, buf)
	var fds [8]byte
	f.Read(buf, fds[:])
	rfd, wfd := binary.LittleEndian.Uint32(fds[:]), binary.LittleEndian.Uint32(fds[4:])
	pollfd := func(fd uint32, events uint16) []byte {
		e := binary.LittleEndian.AppendUint32(nil, fd)
		e = binary.LittleEndian.AppendUint16(e, events)
		return append(e, 0, 0)
	}
	set := append(append(append(pollfd(rfd, pollIn), pollfd(wfd, pollOut)...), pollfd(0, pollIn)...), pollfd(77, pollIn)...)
	f.Write(buf+64, set)
	if n := call(t, p, f, sysPoll, buf+64, 4, 0); n != 3 {
		t.Fatalf("poll = %d, want 3 (write end, stdin, bad fd)", n)
	}
	got := make([]byte, len(set))
	f.Read(buf+64, got)
	revents := func(i int) uint16 { return binary.LittleEndian.Uint16(got[8*i+6:]) }
	if revents(0) != 0 || revents(1) != pollOut || revents(2) != pollIn || revents(3) != pollNval {
		t.Fatalf("revents %#x %#x %#x %#x", revents(0), revents(1), revents(2), revents(3))
	}
	f.Write(buf+200, []byte("x"))
	call(t, p, f, sysWrite, uint64(wfd), buf+200, 1)
	f.Write(buf+64, set[:8])
	if n := call(t, p, f, sysPoll, buf+64, 1, 0); n != 1 {
		t.Fatalf("poll of a pipe holding a byte = %d", n)
	}
	f.Write(buf+300, bytes.Repeat([]byte{0xFF}, 32))
	call(t, p, f, sysRtSigaction, 2, 0, buf+300, 8)
	old := make([]byte, 32)
	f.Read(buf+300, old)
	if !bytes.Equal(old, make([]byte, 32)) {
		t.Fatalf("old sigaction %x, want SIG_DFL (zeros)", old)
	}
}
