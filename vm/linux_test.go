package vm

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"hvft/vm/linux"
	"hvft/vm/tlb"
)

// linuxBuild compiles the test programs of testdata/linux once per test
// binary: gcc is there wherever cgo is.
var linuxBuild = struct {
	once sync.Once
	dir  string
	err  error
}{}

// linuxProgram returns the path of a test program built from
// testdata/linux/NAME.c (static, glibc).
func linuxProgram(t testing.TB, name string) string {
	t.Helper()
	linuxBuild.once.Do(func() {
		linuxBuild.dir, linuxBuild.err = os.MkdirTemp("", "hvft-linux-progs")
		if linuxBuild.err != nil {
			return
		}
		probe := filepath.Join("..", "testdata", "linux", "probe.c")
		for _, b := range []struct{ name, cc, link, src string }{
			{"probe", "gcc", "-static", probe},
			{"probe-pie", "gcc", "-static-pie", probe},
			{"probe-musl", "musl-gcc", "-static", probe},
			{"branchy_linux", "gcc", "-static", filepath.Join("..", "guests", "linux", "branchy_linux.c")},
		} {
			n := b.name
			out, err := exec.Command(b.cc, "-O2", b.link, "-o", filepath.Join(linuxBuild.dir, n), b.src).CombinedOutput()
			if err != nil {
				linuxBuild.err = &buildError{n, err, out}
				return
			}
		}
	})
	if linuxBuild.err != nil {
		t.Fatalf("building the Linux test programs: %v", linuxBuild.err)
	}
	return filepath.Join(linuxBuild.dir, name)
}

type buildError struct {
	name string
	err  error
	out  []byte
}

func (e *buildError) Error() string { return e.name + ": " + e.err.Error() + "\n" + string(e.out) }

type linuxRun struct {
	out   string
	res   Result
	err   error
	ends  []Stop
	final Digest
	stats Stats
}

// runLinux runs a Linux program on a machine with cfg, in env (a live
// one recording into rec when env is nil).
func runLinux(t *testing.T, path string, args []string, cfg Config, env Environment, rec Recorder, stdin string) linuxRun {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	prog, err := linux.ParseProgram(data)
	if err != nil {
		t.Fatal(err)
	}
	var out consoleBuffer
	var live *Live
	if env == nil {
		host, err := linux.NewHost("/", strings.NewReader(stdin), nil)
		if err != nil {
			t.Fatal(err)
		}
		host.Random = bytes.NewReader(bytes.Repeat([]byte("hvft"), 1<<12))
		defer host.Close()
		if live, err = NewLive(LiveConfig{Console: &out, Recorder: rec, CPU: sharedCPU(t), Host: host}); err != nil {
			t.Fatal(err)
		}
		env = live
	}
	if cfg.TLB.PageSize == 0 {
		cfg.TLB = tlb.Config{PageSize: 64 << 10, Entries: 32, Policy: tlb.Random, Seed: 1}
	}
	cfg.Args = append([]string{path}, args...)
	cfg.Linux = &LinuxSetup{Program: prog, Process: linux.Config{Args: cfg.Args, Exe: path, Cwd: "/"}}
	m, err := New(cfg, nil, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var r linuxRun
	r.res, r.err = m.Run(ctx, RunOptions{EpochLength: 20_000, MaxEpochs: 1 << 20, OnEpoch: func(s Stop) error {
		r.ends = append(r.ends, s)
		return nil
	}})
	if live != nil {
		live.Close()
	}
	r.stats = m.Stats()
	if r.final, err = m.Hash(); err != nil {
		t.Fatal(err)
	}
	r.out = string(out.b)
	return r
}

// TestLinuxProgramReplaysUnderEveryTLB: a Linux program's run, recorded,
// replays with the same state hash at every epoch under TLBs of other
// sizes, policies and seeds: the page table and the personality keep
// nothing that depends on when the TLB misses.
func TestLinuxProgramReplaysUnderEveryTLB(t *testing.T) {
	for _, tc := range []struct {
		mode  []string
		clock EpochClock
	}{{[]string{"mem"}, ClockAlways}, {[]string{"env", "a b"}, ClockAlways}, {[]string{"tsc", "20"}, ClockAlways},
		{[]string{"mem"}, ClockAdaptive}, {[]string{"tsc", "20"}, ClockAdaptive}} {
		mode, clock := tc.mode, tc.clock
		t.Run(mode[0]+"-"+clock.String(), func(t *testing.T) {
			var log Log
			live := runLinux(t, linuxProgram(t, "probe"), mode, Config{Clock: clock, TLB: tlb.Config{PageSize: 64 << 10, Entries: 32, Policy: tlb.Random, Seed: 7}}, nil, &log, "")
			if live.err != nil || live.res.ExitCode != 0 {
				t.Fatalf("live run: exit %d, %v\n%s", live.res.ExitCode, live.err, live.out)
			}
			if mode[0] == "mem" && !strings.Contains(live.out, "mem ok") || mode[0] == "tsc" && !strings.Contains(live.out, "monotonic yes rdtscp-later yes") {
				t.Fatalf("program output:\n%s", live.out)
			}
			for _, c := range []tlb.Config{
				{PageSize: 4 << 10, Entries: 4, Policy: tlb.FIFO},
				{PageSize: 2 << 20, Entries: 8, Policy: tlb.LRU},
				{PageSize: 4 << 10, Entries: 64, Policy: tlb.Random, Seed: 99},
			} {
				ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
				rep := runLinux(t, linuxProgram(t, "probe"), mode, Config{TLB: c, Clock: clock}, NewReplay(ctx, NewLogSource(&log)), nil, "")
				cancel()
				if rep.err != nil {
					t.Fatalf("replay under %+v: %v", c, rep.err)
				}
				if rep.final != live.final || len(rep.ends) != len(live.ends) {
					t.Fatalf("replay under %+v: final hash %v after %d epochs, live %v after %d", c, rep.final, len(rep.ends), live.final, len(live.ends))
				}
				for i := range rep.ends {
					if rep.ends[i].Hash != live.ends[i].Hash {
						t.Fatalf("replay under %+v: epoch %d hash differs", c, i+1)
					}
				}
			}
		})
	}
}

// TestLinuxLibcsAndPIE: the same program linked against glibc (static
// and static-PIE) and musl (make deps installs musl-tools; Debian's
// musl-gcc makes no static-PIE) runs and replays under another TLB.
func TestLinuxLibcsAndPIE(t *testing.T) {
	for _, name := range []string{"probe", "probe-pie", "probe-musl"} {
		for _, mode := range [][]string{{"mem"}, {"files", t.TempDir()}, {"tsc", "3"}} {
			var log Log
			live := runLinux(t, linuxProgram(t, name), mode, Config{}, nil, &log, "")
			want := map[string]string{"mem": "mem ok", "files": "files ok", "tsc": "monotonic yes rdtscp-later yes"}[mode[0]]
			if live.err != nil || !strings.Contains(live.out, want) {
				t.Fatalf("%s %v: %v\n%s", name, mode, live.err, live.out)
			}
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			rep := runLinux(t, linuxProgram(t, name), mode, Config{TLB: tlb.Config{PageSize: 4 << 10, Entries: 8, Policy: tlb.LRU}},
				NewReplay(ctx, NewLogSource(&log)), nil, "")
			cancel()
			if rep.err != nil || rep.final != live.final {
				t.Fatalf("%s %v: replay %v, final hash %v, live %v", name, mode, rep.err, rep.final, live.final)
			}
		}
	}
}

// TestLinuxAuxvMatchesCPUID: AT_HWCAP is what CPUID answers (musl's
// getauxval reads the vector as the kernel wrote it).
func TestLinuxAuxvMatchesCPUID(t *testing.T) {
	r := runLinux(t, linuxProgram(t, "probe-musl"), []string{"hwcap"}, Config{}, nil, nil, "")
	if r.err != nil || !strings.Contains(r.out, "hwcap consistent") {
		t.Fatalf("%v: %s", r.err, r.out)
	}
}

// TestLinuxReplayCatchesADifferentAnswer: a replay whose log answers a
// host request differently diverges (the answers really are input).
func TestLinuxReplayCatchesADifferentAnswer(t *testing.T) {
	var log Log
	live := runLinux(t, linuxProgram(t, "probe"), []string{"env"}, Config{}, nil, &log, "")
	if live.err != nil {
		t.Fatal(live.err)
	}
	changed := false
	for _, r := range log.Records {
		if a := r.Answer; a != nil && a.Kind == KindHost && linux.Op(a.Port) == linux.OpClock && !changed {
			a.Value += 1e9 // one second later
			changed = true
		}
	}
	if !changed {
		t.Fatal("the program read no clock")
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	rep := runLinux(t, linuxProgram(t, "probe"), []string{"env"}, Config{}, NewReplay(ctx, NewLogSource(&log)), nil, "")
	var div *DivergenceError
	if rep.err == nil || !asDivergence(rep.err, &div) {
		t.Fatalf("replay with a changed clock answer: %v, want a divergence", rep.err)
	}
}

// TestLinuxProgramFaults: what kills a Linux program kills the run, with
// the signal named.
func TestLinuxProgramFaults(t *testing.T) {
	for mode, want := range map[string]string{
		"segv": "SIGSEGV: write to the page at 0x0",
		"ud2":  "SIGILL",
		"int1": "SIGTRAP (debug)", // a #DB trap, though Unicorn reports it as #UD
		"hlt":  "SIGSEGV (general protection fault)",
	} {
		r := runLinux(t, linuxProgram(t, "probe"), []string{mode}, Config{}, nil, nil, "")
		if r.err == nil || !strings.Contains(r.err.Error(), want) || r.res.Last.Reason != StopFault {
			t.Errorf("%s: %v (stop %v), want a fault saying %q", mode, r.err, r.res.Last.Reason, want)
		}
	}
}

// TestLinuxBranchyMatchesNative: the board's benchmark, built for Linux,
// computes under the personality the checksum it computes natively.
func TestLinuxBranchyMatchesNative(t *testing.T) {
	prog := linuxProgram(t, "branchy_linux")
	native, err := exec.Command(prog, "32", "200").Output()
	if err != nil {
		t.Fatal(err)
	}
	r := runLinux(t, prog, []string{"32", "200"}, Config{}, nil, nil, "")
	if r.err != nil || r.out != string(native) {
		t.Fatalf("under hvft: %q (%v); natively %q", r.out, r.err, native)
	}
}

func asDivergence(err error, target **DivergenceError) bool {
	for e := err; e != nil; {
		if d, ok := e.(*DivergenceError); ok {
			*target = d
			return true
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		e = u.Unwrap()
	}
	return false
}

// newLinuxMachine builds a machine for a Linux program in a live
// environment whose console is out.
func newLinuxMachine(t *testing.T, path string, args []string, out *consoleBuffer) *Machine {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	prog, err := linux.ParseProgram(data)
	if err != nil {
		t.Fatal(err)
	}
	host, err := linux.NewHost("/", nil, bytes.NewReader(bytes.Repeat([]byte("hvft"), 1<<12)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	live, err := NewLive(LiveConfig{Console: out, CPU: sharedCPU(t), Host: host})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { live.Close() })
	argv := append([]string{path}, args...)
	cfg := Config{TLB: tlb.Config{PageSize: 64 << 10, Entries: 32, Policy: tlb.FIFO}, Args: argv,
		Linux: &LinuxSetup{Program: prog, Process: linux.Config{Args: argv, Exe: path, Cwd: "/"}}}
	m, err := New(cfg, nil, live, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// TestLinuxSnapshotRestore: a Linux program's machine, snapshotted after a
// few epochs and restored into a fresh machine (which has booted the
// program itself), goes on to the same end with the same hash: the
// process, its page table and its physical pages travel in the snapshot,
// as a joining backup needs. A snapshot whose page table points past RAM
// is refused.
func TestLinuxSnapshotRestore(t *testing.T) {
	prog := linuxProgram(t, "probe")
	var outA, outB consoleBuffer
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	const epochLen = 20000
	// Snapshot half-way through, when the program has mapped and unmapped
	// memory since it booted.
	count := newLinuxMachine(t, prog, []string{"mem"}, &consoleBuffer{})
	epochs := 0
	for off := false; !off; off, _ = count.PoweredOff() {
		if _, err := count.RunEpoch(ctx, epochLen); err != nil {
			t.Fatal(err)
		}
		epochs++
	}
	a := newLinuxMachine(t, prog, []string{"mem"}, &outA)
	for i := 0; i < epochs/2; i++ {
		if _, err := a.RunEpoch(ctx, epochLen); err != nil {
			t.Fatal(err)
		}
	}
	var snap bytes.Buffer
	if err := a.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	b := newLinuxMachine(t, prog, []string{"mem"}, &outB)
	if err := b.Restore(bytes.NewReader(snap.Bytes())); err != nil {
		t.Fatal(err)
	}
	ha, _ := a.Hash()
	hb, _ := b.Hash()
	if ha != hb {
		t.Fatalf("restored hash %v, snapshotted %v", hb, ha)
	}
	// The hash covers the process but not where its pages lie: compare
	// the page tables and allocators themselves.
	var ma, mb []byte
	a.call(func() error { ma = a.linuxMemoryState(nil); return nil })
	b.call(func() error { mb = b.linuxMemoryState(nil); return nil })
	if !bytes.Equal(ma, mb) {
		t.Fatal("the restored page table or physical allocator differs from the snapshotted one")
	}
	finish := func(m *Machine) Digest {
		for i := 0; ; i++ {
			if off, _ := m.PoweredOff(); off {
				break
			}
			if i > 1<<16 {
				t.Fatal("the program never exited")
			}
			if _, err := m.RunEpoch(ctx, epochLen); err != nil {
				t.Fatal(err)
			}
		}
		h, _ := m.Hash()
		return h
	}
	if fa, fb := finish(a), finish(b); fa != fb {
		t.Fatalf("after the restore the machines ended apart: %v and %v", fa, fb)
	}
	if !strings.Contains(string(outB.b), "mem ok") {
		t.Fatalf("the restored machine printed %q", outB.b)
	}
	// Point the first page-table entry past RAM: refused. The memory
	// state ends the body: a count, then (virtual, physical page, prot).
	bad := newLinuxMachine(t, prog, []string{"mem"}, &consoleBuffer{})
	var mem []byte
	a.call(func() error { mem = a.linuxMemoryState(nil); return nil })
	data := append([]byte(nil), snap.Bytes()...)
	bodyEnd := 24 + int(binary.LittleEndian.Uint32(data[20:]))
	first := bodyEnd - len(mem) + 8 + 8
	binary.LittleEndian.PutUint64(data[first:], 1<<40)
	if err := bad.Restore(bytes.NewReader(data)); err == nil || !strings.Contains(err.Error(), "page table entry") {
		t.Fatalf("a page table entry past RAM: %v, want it refused", err)
	}
}
