package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"hvft/guests"
	"hvft/replica/etcdtest"
)

// startEtcd runs etcd on loopback and returns its client address.
func startEtcd(t *testing.T) string {
	t.Helper()
	client := freeAddr(t)
	startEtcdOn(t, []string{client})
	return client
}

// startEtcdOn runs etcd serving clients at every address in clients.
func startEtcdOn(t *testing.T, clients []string) *etcdtest.Server { return etcdtest.Start(t, clients) }

// TestEtcdArbiterTakeover: a pair with --arbiter on a real etcd; the
// primary is SIGKILLed; the backup wins the next generation and finishes
// the run with every tick once. A malformed --arbiter, or one beside
// --lease, is refused.
func TestEtcdArbiterTakeover(t *testing.T) {
	etcd := startEtcd(t)
	arb := "etcd://" + etcd + "/hvft/takeover"
	addr := freeAddr(t)
	out := filepath.Join(t.TempDir(), "console")
	primary := startHvft(t, "--log-level", "warn", "primary", "--listen", addr, "--arbiter", arb, "--console-out", out, "ticker", "--", "120", "3000")
	backup := startHvft(t, "--log-level", "info", "backup", "--primary", addr, "--arbiter", arb, "--console-out", out, "ticker", "--", "120", "3000")
	primary.waitFor(t, "progress", func() bool { return fileLines(out) >= 10 })
	primary.cmd.Process.Kill()
	primary.wait(t)
	if code := backup.wait(t); code != 0 {
		t.Fatalf("backup exit %d\n%s", code, backup.stderr.String())
	}
	if !strings.Contains(backup.stderr.String(), "won the next generation") {
		t.Fatalf("the backup took over without saying it won the generation:\n%s", backup.stderr.String())
	}
	if err := guests.CheckTicker(readFile(t, out), 120); err != nil {
		t.Fatalf("console: %v", err)
	}
	r := hvft(t, "", "primary", "--listen", freeAddr(t), "--backup-wait", "0", "--arbiter", "etcd://"+etcd, "hello")
	if r.code == 0 || !strings.Contains(r.stderr, "name a key prefix") {
		t.Fatalf("an arbiter without a prefix: exit %d, %s", r.code, r.stderr)
	}
	r = hvft(t, "", "primary", "--listen", freeAddr(t), "--backup-wait", "0", "--arbiter", arb, "--lease", t.TempDir(), "hello")
	if r.code == 0 || !strings.Contains(r.stderr, "give one") {
		t.Fatalf("--arbiter with --lease: exit %d, %s", r.code, r.stderr)
	}
}

// TestPausedPrimaryLosesItsGeneration: the primary is paused (SIGSTOP)
// past the failure timeout, the backup wins the next generation and goes
// on; resumed, the old primary finds the generation gone and stops,
// releasing nothing more. No lease is renewed, so the pause's length
// does not matter, nor does the machine's load. Both arbiters.
func TestPausedPrimaryLosesItsGeneration(t *testing.T) {
	etcd := startEtcd(t)
	for _, arb := range []string{"etcd://" + etcd + "/hvft/pause", "file:" + filepath.Join(t.TempDir(), "gens")} {
		t.Run(strings.SplitN(arb, ":", 2)[0], func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "console.txt")
			addr := freeAddr(t)
			guest := []string{"ticker", "--", "80", "3000"}
			link := []string{"--console-out", out, "--arbiter", arb, "--failure-timeout", "300ms"}
			primary := startHvft(t, append(append([]string{"--log-level", "warn", "primary", "--listen", addr}, link...), guest...)...)
			backup := startHvft(t, append(append([]string{"--log-level", "warn", "backup", "--primary", addr}, link...), guest...)...)
			primary.waitFor(t, "10 console lines", func() bool { return fileLines(out) >= 10 })
			pauseUntilTakeover(t, primary, backup)
			if code := primary.wait(t); code != exitFailure || !strings.Contains(primary.stderr.String(), "generation") {
				t.Errorf("old primary: exit %d, want %d and the generation it lost\n%s", code, exitFailure, primary.stderr.String())
			}
			if code := backup.wait(t); code != 0 {
				t.Fatalf("backup exit %d\n%s", code, backup.stderr.String())
			}
			if err := guests.CheckTicker(readFile(t, out), 80); err != nil {
				t.Fatalf("console file: %v", err)
			}
		})
	}
}

// TestRejoinsUnderTheArbiter: two kills with a backup joining each
// survivor, under the file arbiter: each takeover won one generation (the
// run ends at generation 3), and the console is whole.
func TestRejoinsUnderTheArbiter(t *testing.T) {
	gens := filepath.Join(t.TempDir(), "gens")
	r := hvft(t, "", "--log-level", "warn", "demo", "--rejoin", "--kills", "2", "--kill-after", "30", "--arbiter", "file:"+gens, "ticker", "--", "1000", "3000")
	if r.code != 0 {
		t.Fatalf("demo exit %d\n%s", r.code, r.stderr)
	}
	if err := guests.CheckTicker(r.stdout, 1000); err != nil {
		t.Fatalf("merged console: %v", err)
	}
	entries, err := os.ReadDir(gens)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "gen-") { // the run's nonce lies beside them
			names = append(names, e.Name())
		}
	}
	if len(names) != 3 || names[2] != "gen-00000000000000000003" {
		t.Fatalf("generations %v, want 1, 2 and 3", names)
	}
}

// TestNewerGenerationFencesTheDisk: a primary runs diskkv alone; a second
// primary of the same run (the same arbiter and disk) wins the next
// generation and raises the disk's fence before its first write. The
// first primary's next write is refused by the disk itself, and it stops
// (exit 125) instead of writing on over the newer primary's records; the
// image's chain verifies whole. Without the fence the first primary writes
// on and exits 0.
func TestNewerGenerationFencesTheDisk(t *testing.T) {
	dir := t.TempDir()
	img, out := filepath.Join(dir, "d.img"), filepath.Join(dir, "console.txt")
	arb := "file:" + filepath.Join(dir, "gens")
	common := []string{"--log-level", "warn", "primary", "--backup-wait", "0", "--arbiter", arb, "--disk", img, "--disk-size", "256MiB"}
	first := startHvft(t, append(common, "--listen", freeAddr(t), "--console-out", out, "diskkv", "--", "run", "400000", "7", "16")...)
	first.waitFor(t, "the first primary's puts", func() bool { return fileLines(out) >= 20 })
	second := hvft(t, "", append(common, "--listen", freeAddr(t), "diskkv", "--", "run", "50", "8", "16")...)
	if second.code != 0 || !strings.Contains(second.stdout, "diskkv done") {
		t.Fatalf("second primary: exit %d\n%s%s", second.code, second.stdout, second.stderr)
	}
	if code := first.wait(t); code != exitFailure || !strings.Contains(first.stderr.String(), "fenced by a newer generation") {
		t.Fatalf("first primary: exit %d, want %d and the disk's refusal\n%s", code, exitFailure, first.stderr.String())
	}
	r := hvft(t, "", "--log-level", "warn", "run", "--disk", img, "diskkv", "--", "verify")
	if r.code != 0 || !strings.Contains(r.stdout, "diskkv verify ok") {
		t.Fatalf("the image after both: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// silentProxy forwards TCP connections to target and can drop, without
// closing anything, the bytes of one direction or both: a partition as
// the replicas see it (silence), on one host. toBackup and toPrimary
// drop what flows that way.
type silentProxy struct {
	addr                string
	toBackup, toPrimary atomic.Bool
	mu                  sync.Mutex
	open                []net.Conn
}

// reset closes every connection through the proxy: a reset link.
func (p *silentProxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.open {
		c.Close()
	}
}

func startSilentProxy(t *testing.T, target string) *silentProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &silentProxy{addr: ln.Addr().String()}
	var conns sync.WaitGroup
	t.Cleanup(func() { ln.Close(); conns.Wait() })
	pipe := func(dst, src net.Conn, drop *atomic.Bool) {
		defer conns.Done()
		defer dst.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 && !drop.Load() {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// The backup may dial before the primary listens: wait for it.
			var up net.Conn
			for deadline := time.Now().Add(time.Minute); ; {
				if up, err = net.Dial("tcp", target); err == nil || time.Now().After(deadline) {
					break
				}
				time.Sleep(10 * time.Millisecond) // a retry pause, bounded by the deadline
			}
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.open = append(p.open, c, up)
			p.mu.Unlock()
			conns.Add(2)
			go pipe(up, c, &p.toPrimary)
			go pipe(c, up, &p.toBackup)
			t.Cleanup(func() { c.Close(); up.Close() })
		}
	}()
	return p
}

// pauseUntilTakeover stops the primary until its backup has taken over,
// then lets it run again (to find itself fenced).
func pauseUntilTakeover(t *testing.T, primary, backup *proc) {
	t.Helper()
	primary.cmd.Process.Signal(syscall.SIGSTOP)
	backup.waitFor(t, "the takeover", func() bool {
		return strings.Contains(backup.stderr.String(), "live: this replica is now the primary")
	})
	primary.cmd.Process.Signal(syscall.SIGCONT)
}

// pauseUntilAlone stops the backup until the primary has won the right to
// go on alone, then lets it run again (to lose its own claim).
func pauseUntilAlone(t *testing.T, primary, backup *proc) {
	t.Helper()
	backup.cmd.Process.Signal(syscall.SIGSTOP)
	primary.waitFor(t, "the primary going on alone", func() bool {
		return strings.Contains(primary.stderr.String(), "going on alone")
	})
	backup.cmd.Process.Signal(syscall.SIGCONT)
}

// TestPartitionMatrixWithFileArbiter: the matrix of
// TestPartitionMatrixWithEtcd on one host, with --arbiter file:DIR. The
// link runs through a proxy that falls silent in one direction or both;
// or one replica is paused. (One host has no link to cut between a
// replica and a directory: those cells are etcd's.) Each cell ends with
// exactly the expected replica going on and the console whole.
func TestPartitionMatrixWithFileArbiter(t *testing.T) {
	for _, cell := range []struct {
		fault string
		// who may go on: "primary", "backup" or "either" (exactly one)
		want string
	}{
		{"ab", "either"}, {"a>b", "either"}, {"b>a", "either"},
		{"pause-primary", "backup"}, {"pause-backup", "primary"},
	} {
		for _, disk := range []bool{false, true} {
			name := cell.fault
			if disk {
				name += "/disk"
			}
			t.Run(name, func(t *testing.T) { fileArbiterCell(t, cell.fault, cell.want, disk) })
		}
	}
}

func fileArbiterCell(t *testing.T, fault, want string, disk bool) {
	dir := t.TempDir()
	out, img := filepath.Join(dir, "console.txt"), filepath.Join(dir, "disk.img")
	addr := freeAddr(t)
	proxy := startSilentProxy(t, addr)
	common := []string{"--console-out", out, "--arbiter", "file:" + filepath.Join(dir, "gens"), "--failure-timeout", "300ms"}
	guest := []string{"ticker", "--", "150", "4000"}
	if disk {
		guest = []string{"diskkv", "--", "run", matrixPuts, "5", "4"}
		common = append(common, "--disk", img)
	}
	primary := startHvft(t, append(append([]string{"--log-level", "warn", "primary", "--listen", addr}, common...), guest...)...)
	backup := startHvft(t, append(append([]string{"--log-level", "warn", "backup", "--primary", proxy.addr}, common...), guest...)...)
	primary.waitFor(t, "20 console lines", func() bool { return fileLines(out) >= 20 })
	switch fault {
	case "ab":
		proxy.toBackup.Store(true)
		proxy.toPrimary.Store(true)
	case "a>b":
		proxy.toBackup.Store(true)
	case "b>a":
		proxy.toPrimary.Store(true)
	case "pause-primary":
		pauseUntilTakeover(t, primary, backup)
	case "pause-backup":
		pauseUntilAlone(t, primary, backup)
	}
	pcode, bcode := primary.wait(t), backup.wait(t)
	bTook := strings.Contains(backup.stderr.String(), "live: this replica is now the primary")
	pOn, bOn := pcode == 0, bcode == 0 && bTook
	ok := map[string]bool{"primary": pOn && !bOn, "backup": bOn && !pOn, "either": pOn != bOn}[want]
	if !ok {
		t.Fatalf("primary exit %d, backup exit %d (took over %v): want %s to go on\nprimary:\n%s\nbackup:\n%s",
			pcode, bcode, bTook, want, primary.stderr.String(), backup.stderr.String())
	}
	for _, r := range []struct {
		name     string
		code     int
		p, other *proc
	}{{"primary", pcode, primary, backup}, {"backup", bcode, backup, primary}} {
		if r.code != 0 && !stoppedAsLoser(r.code, r.p, r.other) {
			t.Errorf("%s stopped (exit %d) without naming the generation it lost, nor killed by the other's disk claim\n%s\nother:\n%s",
				r.name, r.code, r.p.stderr.String(), r.other.stderr.String())
		}
	}
	if disk {
		checkMatrixDisk(t, readFile(t, out), img)
	} else if err := guests.CheckTicker(readFile(t, out), 150); err != nil {
		t.Fatalf("console: %v", err)
	}
	t.Logf("%s: primary exit %d, backup exit %d (took over %v)", fault, pcode, bcode, bTook)
}

// stoppedAsLoser says whether a replica that did not finish stopped the way
// a loser must: with exit 125 naming the generation it lost, or SIGKILLed
// by the winner's claim of the shared disk because it was stopped
// (SIGSTOP) inside a write of its old generation, which the winner's log
// names with its PID.
func stoppedAsLoser(code int, p, winner *proc) bool {
	if code == exitFailure && strings.Contains(p.stderr.String(), "generation") {
		return true
	}
	killed := fmt.Sprintf("killed process %d: it was stopped holding a write", p.cmd.Process.Pid)
	return code == -1 && strings.Contains(winner.stderr.String(), killed)
}

// TestLonePrimarySurvivesAPause: a primary running alone under --lease
// (the old flag, with the old 300 ms TTL) is paused for a second. Under
// the renewed lease it fenced itself on resuming ("a newer generation
// holds the lease") and truncated its output with exit 0; with the
// arbiter nothing is renewed, so it finishes whole.
func TestLonePrimarySurvivesAPause(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "console.txt")
	primary := startHvft(t, "--log-level", "warn", "primary", "--listen", freeAddr(t), "--backup-wait", "0",
		"--console-out", out, "--lease", filepath.Join(dir, "lease"), "--lease-ttl", "300ms", "ticker", "--", "60", "5000")
	primary.waitFor(t, "10 console lines", func() bool { return fileLines(out) >= 10 })
	primary.cmd.Process.Signal(syscall.SIGSTOP)
	<-time.After(time.Second) // the pause's length: three old TTLs
	primary.cmd.Process.Signal(syscall.SIGCONT)
	if code := primary.wait(t); code != 0 {
		t.Fatalf("the paused lone primary: exit %d\n%s", code, primary.stderr.String())
	}
	if err := guests.CheckTicker(readFile(t, out), 60); err != nil {
		t.Fatalf("console: %v", err)
	}
}

// TestFencedTakeoverStops: a backup takes over from a killed primary and
// a new backup joins it; the new primary is then paused, the joiner takes
// over in its turn (generation 3), and the paused one, resumed, finds its
// backup gone, loses its claim and stops with exit 125, releasing nothing
// more. Before, a fenced replica that had taken over ran on and exited 0
// with output missing. The console holds every tick once.
func TestFencedTakeoverStops(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "console.txt")
	common := []string{"--console-out", out, "--arbiter", "file:" + filepath.Join(dir, "gens"), "--failure-timeout", "300ms"}
	guest := []string{"ticker", "--", "300", "5000"}
	first, second := freeAddr(t), freeAddr(t)
	primary := startHvft(t, append(append([]string{"--log-level", "warn", "primary", "--listen", first}, common...), guest...)...)
	backup := startHvft(t, append(append([]string{"--log-level", "warn", "backup", "--primary", first, "--listen", second}, common...), guest...)...)
	primary.waitFor(t, "10 console lines", func() bool { return fileLines(out) >= 10 })
	primary.cmd.Process.Kill()
	backup.waitFor(t, "the first takeover", func() bool {
		return strings.Contains(backup.stderr.String(), "live: this replica is now the primary")
	})
	joiner := startHvft(t, append(append([]string{"--log-level", "info", "backup", "--primary", second, "--join"}, common...), guest...)...)
	joiner.waitFor(t, "the join", func() bool { return strings.Contains(joiner.stderr.String(), "received the primary's state") })
	pauseUntilTakeover(t, backup, joiner)
	if code := backup.wait(t); code != exitFailure || !strings.Contains(backup.stderr.String(), "generation") {
		t.Errorf("the fenced second primary: exit %d, want %d naming the generation\n%s", code, exitFailure, backup.stderr.String())
	}
	if code := joiner.wait(t); code != 0 {
		t.Fatalf("the third primary: exit %d\n%s", code, joiner.stderr.String())
	}
	if err := guests.CheckTicker(readFile(t, out), 300); err != nil {
		t.Fatalf("console: %v", err)
	}
	if gens, _ := filepath.Glob(filepath.Join(dir, "gens", "gen-*")); len(gens) != 3 {
		t.Errorf("generations %v, want 3", gens)
	}
}

// TestCutLinkWithoutArbiterLeavesOnePrimary: a pair on one host given no
// --arbiter arbitrates on a default directory the primary makes and
// advertises, so a link that falls silent, or is reset, leaves exactly
// one primary; before, both went on and the shared console got every
// line after the cut twice.
func TestCutLinkWithoutArbiterLeavesOnePrimary(t *testing.T) {
	for _, fault := range []string{"silent", "reset"} {
		t.Run(fault, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "console.txt")
			addr := freeAddr(t)
			proxy := startSilentProxy(t, addr)
			common := []string{"--console-out", out, "--failure-timeout", "300ms"}
			guest := []string{"ticker", "--", "150", "4000"}
			primary := startHvft(t, append(append([]string{"--log-level", "info", "primary", "--listen", addr}, common...), guest...)...)
			backup := startHvft(t, append(append([]string{"--log-level", "info", "backup", "--primary", proxy.addr}, common...), guest...)...)
			primary.waitFor(t, "20 console lines", func() bool { return fileLines(out) >= 20 })
			if fault == "silent" {
				proxy.toBackup.Store(true)
				proxy.toPrimary.Store(true)
			} else {
				proxy.reset()
			}
			pcode, bcode := primary.wait(t), backup.wait(t)
			if (pcode == 0) == (bcode == 0) {
				t.Fatalf("primary exit %d, backup exit %d: want exactly one to go on\nprimary:\n%s\nbackup:\n%s", pcode, bcode, primary.stderr.String(), backup.stderr.String())
			}
			if !strings.Contains(backup.stderr.String(), "arbitrating on the primary's default arbiter") {
				t.Errorf("the backup did not adopt the primary's default arbiter\n%s", backup.stderr.String())
			}
			if err := guests.CheckTicker(readFile(t, out), 150); err != nil {
				t.Fatalf("console: %v", err)
			}
		})
	}
}
