package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
// namespaces), authenticated link (required off loopback), a shared lease
// and console file. The link between the hosts is cut while both run:
// the backup cannot take the lease the primary keeps renewing and steps
// down; the primary finishes alone. Exactly one primary; the console is
// whole.
func TestPartitionBetweenHosts(t *testing.T) {
	a, b, cut := netnsPair(t)
	n := os.Getpid() % 200
	dir := t.TempDir()
	key, out, lease := filepath.Join(dir, "link.key"), filepath.Join(dir, "console.txt"), filepath.Join(dir, "run.lease")
	if r := hvft(t, "", "keygen", key); r.code != 0 {
		t.Fatal(r.stderr)
	}
	addr := fmt.Sprintf("10.211.%d.1:7400", n)
	common := []string{"--key-file", key, "--console-out", out, "--lease", lease, "--lease-ttl", "300ms", "--failure-timeout", "300ms"}
	guest := []string{"ticker", "--", "150", "5000"}
	primary := startIn(t, a, append(append([]string{"--log-level", "warn", "primary", "--listen", addr}, common...), guest...)...)
	backup := startIn(t, b, append(append([]string{"--log-level", "warn", "backup", "--primary", addr}, common...), guest...)...)
	primary.waitFor(t, "20 console lines", func() bool { return fileLines(out) >= 20 })
	cut()
	bcode := backup.wait(t)
	pcode := primary.wait(t)
	if pcode != 0 {
		t.Fatalf("primary exit %d\n%s", pcode, primary.stderr.String())
	}
	if bcode != exitFailure || !strings.Contains(backup.stderr.String(), "renews it: it is alive") {
		t.Fatalf("backup exit %d: it must step down\n%s", bcode, backup.stderr.String())
	}
	data, _ := os.ReadFile(out)
	if err := guests.CheckTicker(string(data), 150); err != nil {
		t.Fatalf("console: %v", err)
	}
}
