package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"hvft/guests"
)

// netnsPair makes two network namespaces joined by a veth pair, as two
// hosts (10.211.N.1 and 10.211.N.2), and removes them at the end.
func netnsPair(t *testing.T) (a, b string, cut func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: network namespaces need root")
	}
	n := os.Getpid() % 200
	a, b = fmt.Sprintf("hvftA%d", n), fmt.Sprintf("hvftB%d", n)
	va, vb := fmt.Sprintf("hva%d", n), fmt.Sprintf("hvb%d", n)
	run := func(args ...string) error {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	exec.Command("ip", "netns", "del", a).Run()
	exec.Command("ip", "netns", "del", b).Run()
	for _, args := range [][]string{
		{"netns", "add", a}, {"netns", "add", b},
		{"link", "add", va, "type", "veth", "peer", "name", vb},
		{"link", "set", va, "netns", a}, {"link", "set", vb, "netns", b},
		{"-n", a, "addr", "add", fmt.Sprintf("10.211.%d.1/24", n), "dev", va},
		{"-n", b, "addr", "add", fmt.Sprintf("10.211.%d.2/24", n), "dev", vb},
		{"-n", a, "link", "set", va, "up"}, {"-n", b, "link", "set", vb, "up"},
		{"-n", a, "link", "set", "lo", "up"}, {"-n", b, "link", "set", "lo", "up"},
	} {
		if err := run(args...); err != nil {
			exec.Command("ip", "netns", "del", a).Run()
			exec.Command("ip", "netns", "del", b).Run()
			t.Skipf("skipped: cannot make network namespaces here: %v", err)
		}
	}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", a).Run()
		exec.Command("ip", "netns", "del", b).Run()
	})
	return a, b, func() { run("-n", a, "link", "set", va, "down") }
}

// startIn runs hvft inside a network namespace.
func startIn(t *testing.T, ns string, args ...string) *proc {
	return startHvft(t, append([]string{"__netns", ns}, args...)...)
}

// TestPartitionBetweenHosts: primary and backup on two hosts (network
// namespaces), authenticated link (required off loopback), a shared
// --lease directory (the file arbiter under its old name) and console
// file. The link between the hosts is cut while both run: the primary
// (going on alone) and the backup (taking over) both claim the next
// generation, and exactly one wins and finishes; the other stops with
// exit 125. The console is whole.
func TestPartitionBetweenHosts(t *testing.T) {
	a, b, cut := netnsPair(t)
	n := os.Getpid() % 200
	dir := t.TempDir()
	key, out, lease := filepath.Join(dir, "link.key"), filepath.Join(dir, "console.txt"), filepath.Join(dir, "run.lease")
	if r := hvft(t, "", "keygen", key); r.code != 0 {
		t.Fatal(r.stderr)
	}
	addr := fmt.Sprintf("10.211.%d.1:7400", n)
	common := []string{"--key-file", key, "--console-out", out, "--lease", lease, "--failure-timeout", "300ms"}
	guest := []string{"ticker", "--", "150", "5000"}
	primary := startIn(t, a, append(append([]string{"--log-level", "warn", "primary", "--listen", addr}, common...), guest...)...)
	backup := startIn(t, b, append(append([]string{"--log-level", "warn", "backup", "--primary", addr}, common...), guest...)...)
	primary.waitFor(t, "20 console lines", func() bool { return fileLines(out) >= 20 })
	cut()
	bcode := backup.wait(t)
	pcode := primary.wait(t)
	winners := 0
	for _, r := range []struct {
		name string
		code int
		p    *proc
	}{{"primary", pcode, primary}, {"backup", bcode, backup}} {
		switch {
		case r.code == 0:
			winners++
		case r.code != exitFailure || !strings.Contains(r.p.stderr.String(), "generation"):
			t.Errorf("%s: exit %d, want 0, or %d for the generation it lost\n%s", r.name, r.code, exitFailure, r.p.stderr.String())
		}
	}
	if winners != 1 {
		t.Fatalf("%d replicas finished the run (primary exit %d, backup exit %d)\n%s\n%s", winners, pcode, bcode, primary.stderr.String(), backup.stderr.String())
	}
	data, _ := os.ReadFile(out)
	if err := guests.CheckTicker(string(data), 150); err != nil {
		t.Fatalf("console: %v", err)
	}
}

// etcdHosts makes three hosts: the primary's (A) and the backup's (B)
// network namespaces, joined by one veth pair, and each joined to the
// root namespace (where etcd runs) by another. It returns the namespaces,
// the address each side reaches etcd's port at, and a function that takes
// one of the three links down ("ab", "ae", "be").
func etcdHosts(t *testing.T, etcdPort int) (a, b, etcdA, etcdB string, cut func(link string)) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: network namespaces need root")
	}
	n := os.Getpid()%200 + 1
	a, b = fmt.Sprintf("hvfeA%d", n), fmt.Sprintf("hvfeB%d", n)
	run := func(args ...string) error {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	clean := func() {
		exec.Command("ip", "netns", "del", a).Run()
		exec.Command("ip", "netns", "del", b).Run()
		exec.Command("ip", "link", "del", fmt.Sprintf("hea%d", n)).Run()
		exec.Command("ip", "link", "del", fmt.Sprintf("heb%d", n)).Run()
	}
	clean()
	links := map[string][2]string{ // link -> (namespace, device) whose down cuts it
		"ab": {a, fmt.Sprintf("hab%d", n)}, "ae": {a, fmt.Sprintf("hae%d", n)}, "be": {b, fmt.Sprintf("hbe%d", n)},
	}
	for _, args := range [][]string{
		{"netns", "add", a}, {"netns", "add", b},
		{"link", "add", fmt.Sprintf("hab%d", n), "type", "veth", "peer", "name", fmt.Sprintf("hba%d", n)},
		{"link", "set", fmt.Sprintf("hab%d", n), "netns", a}, {"link", "set", fmt.Sprintf("hba%d", n), "netns", b},
		{"-n", a, "addr", "add", fmt.Sprintf("10.212.%d.1/24", n), "dev", fmt.Sprintf("hab%d", n)},
		{"-n", b, "addr", "add", fmt.Sprintf("10.212.%d.2/24", n), "dev", fmt.Sprintf("hba%d", n)},
		{"link", "add", fmt.Sprintf("hae%d", n), "type", "veth", "peer", "name", fmt.Sprintf("hea%d", n)},
		{"link", "set", fmt.Sprintf("hae%d", n), "netns", a},
		{"-n", a, "addr", "add", fmt.Sprintf("10.213.%d.1/24", n), "dev", fmt.Sprintf("hae%d", n)},
		{"addr", "add", fmt.Sprintf("10.213.%d.254/24", n), "dev", fmt.Sprintf("hea%d", n)},
		{"link", "add", fmt.Sprintf("hbe%d", n), "type", "veth", "peer", "name", fmt.Sprintf("heb%d", n)},
		{"link", "set", fmt.Sprintf("hbe%d", n), "netns", b},
		{"-n", b, "addr", "add", fmt.Sprintf("10.214.%d.2/24", n), "dev", fmt.Sprintf("hbe%d", n)},
		{"addr", "add", fmt.Sprintf("10.214.%d.254/24", n), "dev", fmt.Sprintf("heb%d", n)},
		{"-n", a, "link", "set", fmt.Sprintf("hab%d", n), "up"}, {"-n", b, "link", "set", fmt.Sprintf("hba%d", n), "up"},
		{"-n", a, "link", "set", fmt.Sprintf("hae%d", n), "up"}, {"link", "set", fmt.Sprintf("hea%d", n), "up"},
		{"-n", b, "link", "set", fmt.Sprintf("hbe%d", n), "up"}, {"link", "set", fmt.Sprintf("heb%d", n), "up"},
		{"-n", a, "link", "set", "lo", "up"}, {"-n", b, "link", "set", "lo", "up"},
	} {
		if err := run(args...); err != nil {
			clean()
			t.Skipf("skipped: cannot make network namespaces here: %v", err)
		}
	}
	t.Cleanup(clean)
	etcdA, etcdB = fmt.Sprintf("10.213.%d.254:%d", n, etcdPort), fmt.Sprintf("10.214.%d.254:%d", n, etcdPort)
	return a, b, etcdA, etcdB, func(link string) {
		l := links[link]
		if err := run("-n", l[0], "link", "set", l[1], "down"); err != nil {
			t.Error(err)
		}
	}
}

// TestPartitionMatrixWithEtcd: primary, backup and etcd on three hosts.
// Each cell injects one fault while the pair runs: a link taken down
// (both directions), packets of one direction only dropped (a blackhole
// route on one side: "a>b" drops what the primary sends the backup), or
// one of the three processes paused (SIGSTOP, resumed once the others
// have acted on it). In every cell at most one replica goes on, the one
// the cell expects; every console line that left is in the shared
// console once; and when some replica finishes the console is whole. A
// fault that touches only etcd changes nothing: nobody needs the arbiter
// while the pair talks.
func TestPartitionMatrixWithEtcd(t *testing.T) {
	etcdPort := 23000 + os.Getpid()%1000
	a, b, etcdA, etcdB, cut := etcdHosts(t, etcdPort)
	etcd := startEtcdOn(t, []string{etcdA, etcdB})
	key := filepath.Join(t.TempDir(), "link.key")
	if r := hvft(t, "", "keygen", key); r.code != 0 {
		t.Fatal(r.stderr)
	}
	n := os.Getpid()%200 + 1
	ip := func(args ...string) {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Errorf("ip %v: %v: %s", args, err, out)
		}
	}
	// Where each side's packets to the other go: a blackhole route there
	// drops one direction only.
	oneWay := map[string][2]string{"a>b": {a, fmt.Sprintf("10.212.%d.2", n)}, "b>a": {b, fmt.Sprintf("10.212.%d.1", n)},
		"a>e": {a, fmt.Sprintf("10.213.%d.254", n)}}
	const (
		primaryOn = iota
		backupOn
		eitherOne
		nobody
		bothFinish // the pair goes on together
	)
	for i, cell := range []struct {
		faults []string
		want   int
		disk   bool // diskkv on a shared disk, not ticker
	}{
		{[]string{"ab"}, eitherOne, false},
		{[]string{"ae"}, primaryOn, false},
		{[]string{"be"}, primaryOn, false},
		{[]string{"ab", "ae"}, backupOn, false},
		{[]string{"ab", "be"}, primaryOn, false},
		{[]string{"ab", "ae", "be"}, nobody, false},
		{[]string{"a>b"}, eitherOne, false},
		{[]string{"b>a"}, eitherOne, false},
		{[]string{"a>e"}, bothFinish, false},
		{[]string{"pause-primary"}, backupOn, false},
		{[]string{"pause-backup"}, primaryOn, false},
		{[]string{"pause-etcd"}, bothFinish, false},
		// The shared disk too: every acknowledged put is in the image and
		// a stale primary's write never lands over the new one's.
		{[]string{"ab"}, eitherOne, true},
		{[]string{"a>b"}, eitherOne, true},
		{[]string{"pause-primary"}, backupOn, true},
		{[]string{"pause-backup"}, primaryOn, true},
	} {
		name := strings.Join(cell.faults, "+")
		if cell.disk {
			name += "/disk"
		}
		t.Run(name, func(t *testing.T) {
			if i > 0 {
				// Every cell on fresh links: bring them all up again.
				for _, l := range [][]string{{"-n", a, "link", "set", fmt.Sprintf("hab%d", n), "up"}, {"-n", a, "link", "set", fmt.Sprintf("hae%d", n), "up"}, {"-n", b, "link", "set", fmt.Sprintf("hbe%d", n), "up"}} {
					exec.Command("ip", l...).Run()
				}
			}
			out := filepath.Join(t.TempDir(), "console.txt")
			addr := fmt.Sprintf("10.212.%d.1:%d", n, 7500+i)
			prefix := fmt.Sprintf("/hvft/matrix%d", i)
			common := []string{"--key-file", key, "--console-out", out, "--failure-timeout", "300ms"}
			guest := []string{"ticker", "--", "150", "4000"}
			img := filepath.Join(t.TempDir(), "disk.img")
			if cell.disk {
				guest = []string{"diskkv", "--", "run", matrixPuts, "5", "4"}
				common = append(common, "--disk", img)
			}
			primary := startIn(t, a, append(append([]string{"--log-level", "warn", "primary", "--listen", addr, "--arbiter", "etcd://" + etcdA + prefix}, common...), guest...)...)
			backup := startIn(t, b, append(append([]string{"--log-level", "warn", "backup", "--primary", addr, "--arbiter", "etcd://" + etcdB + prefix}, common...), guest...)...)
			primary.waitFor(t, "20 console lines", func() bool { return fileLines(out) >= 20 })
			for _, f := range cell.faults {
				switch f {
				case "ab", "ae", "be":
					cut(f)
				case "a>b", "b>a", "a>e":
					r := oneWay[f]
					ip("-n", r[0], "route", "add", "blackhole", r[1]+"/32")
					t.Cleanup(func() { exec.Command("ip", "-n", r[0], "route", "del", "blackhole", r[1]+"/32").Run() })
				case "pause-primary":
					pauseUntilTakeover(t, primary, backup)
				case "pause-backup":
					pauseUntilAlone(t, primary, backup)
				case "pause-etcd":
					etcd.Signal(syscall.SIGSTOP)
					primary.waitFor(t, "60 console lines with etcd paused", func() bool { return fileLines(out) >= 60 })
					etcd.Signal(syscall.SIGCONT)
				default:
					t.Fatalf("unknown fault %q", f)
				}
			}
			pcode, bcode := primary.wait(t), backup.wait(t)
			bTook := strings.Contains(backup.stderr.String(), "live: this replica is now the primary")
			pOn, bOn := pcode == 0, bcode == 0 && bTook
			if pOn && bOn {
				t.Fatalf("two primaries: both finished\nprimary:\n%s\nbackup:\n%s", primary.stderr.String(), backup.stderr.String())
			}
			ok := map[int]bool{primaryOn: pOn && !bOn, backupOn: bOn && !pOn, eitherOne: pOn != bOn, nobody: !pOn && !bOn,
				bothFinish: pcode == 0 && bcode == 0 && !bTook}[cell.want]
			if !ok {
				t.Fatalf("primary exit %d, backup exit %d (took over %v): want outcome %d\nprimary:\n%s\nbackup:\n%s",
					pcode, bcode, bTook, cell.want, primary.stderr.String(), backup.stderr.String())
			}
			data, _ := os.ReadFile(out)
			lines := strings.Count(string(data), "\n")
			if cell.disk {
				checkMatrixDisk(t, string(data), img)
			} else if pOn || bOn {
				if err := guests.CheckTicker(string(data), 150); err != nil {
					t.Fatalf("console: %v", err)
				}
			} else if err := guests.CheckTicker(string(data), lines); err != nil {
				t.Fatalf("console of a run that nobody finished (%d lines): %v", lines, err)
			}
			t.Logf("%v: primary exit %d, backup exit %d (took over %v), %d console lines", cell.faults, pcode, bcode, bTook, lines)
		})
	}
}

// matrixPuts is the diskkv run of a partition matrix's disk cells.
const matrixPuts = "600"

// checkMatrixDisk checks a disk cell's end: every put acknowledged on the
// console once and in order, and the image cold-boots with every one of
// them in its chain (a stale write landing over a newer one breaks it).
func checkMatrixDisk(t *testing.T, console, img string) {
	t.Helper()
	if err := checkPuts(console, 600, 5, 4); err != nil {
		t.Fatalf("console: %v", err)
	}
	verifyImage(t, img, 600, 5, 4)
}
