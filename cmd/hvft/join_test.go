package main

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"hvft/guests"
)

// TestDemoRejoinThreeKills: three successive primaries SIGKILLed, a new
// backup joining each new primary by state transfer; the console is
// complete, in order and once; every joined backup reproduced its
// primary's state hash at the join and matched every epoch after it.
func TestDemoRejoinThreeKills(t *testing.T) {
	report := filepath.Join(t.TempDir(), "demo.json")
	r := hvft(t, "", "--log-level", "warn", "demo", "--rejoin", "--kills", "3", "--kill-after", "25", "--report", report,
		// 1000 ticks of 4 ms: the guest's epochs are its ticks, and each of
		// the three cycles needs 25 of them plus however many pass while a
		// backup joins (hundreds of ms when the machine is loaded).
		"ticker", "--", "1000", "4000")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if err := guests.CheckTicker(r.stdout, 1000); err != nil {
		t.Fatalf("merged console: %v", err)
	}
	var rep struct {
		Kills    []json.RawMessage `json:"kills"`
		Replicas []demoReplica     `json:"replicas"`
	}
	data, _ := os.ReadFile(report)
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Kills) != 3 {
		t.Fatalf("%d kills, want 3: %s", len(rep.Kills), data)
	}
	joined := 0
	for _, rr := range rep.Replicas {
		if rr.Report.Divergence != "" {
			t.Errorf("%s diverged: %s", rr.Label, rr.Report.Divergence)
		}
		if strings.HasPrefix(rr.Label, "backup-") {
			if len(rr.Report.Joins) == 0 || !rr.Report.Joins[0].Verified || rr.Report.HashesCompared == 0 {
				t.Errorf("%s: joins %+v, hashes compared %d", rr.Label, rr.Report.Joins, rr.Report.HashesCompared)
			}
			joined++
		}
	}
	// backup-2 and backup-3 were killed as primaries; backup-4 finished.
	if joined < 1 {
		t.Fatalf("no joined backup lived to report: %s", data)
	}
}

// TestJoinWhileGuestWritesRAM: a backup joins a primary running ramwriter
// (rewriting megabytes of RAM without pause during the pre-copy); its
// restored state hashes equal to the primary's at the join boundary,
// pages changed during the pre-copy are re-sent at the stop, and the two
// end on the same final hash.
func TestJoinWhileGuestWritesRAM(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	prep, brep := filepath.Join(dir, "p.json"), filepath.Join(dir, "b.json")
	// Long enough (seconds on Unicorn 2.1) that the joiner connects mid-run.
	guest := []string{"ramwriter", "--", "4", "3000"}
	primary := startHvft(t, append([]string{"--log-level", "warn", "primary", "--listen", addr, "--backup-wait", "0", "--report", prep}, guest...)...)
	// Join at once: the guest writes from its first instruction on.
	b := hvft(t, "", append([]string{"--log-level", "warn", "backup", "--join", "--primary", addr, "--report", brep}, guest...)...)
	if b.code != 0 || b.stdout != "" {
		t.Fatalf("joined backup: exit %d stdout %q\n%s", b.code, b.stdout, b.stderr)
	}
	if code := primary.wait(t); code != 0 {
		t.Fatalf("primary exit %d\n%s", code, primary.stderr.String())
	}
	type join struct {
		Verified   bool    `json:"verified"`
		DirtyBytes uint64  `json:"dirty_bytes"`
		Bytes      uint64  `json:"bytes"`
		PauseMS    float64 `json:"pause_ms"`
	}
	var p, bk struct {
		FinalHash      string `json:"final_hash"`
		HashesCompared uint64 `json:"hashes_compared"`
		Joins          []join `json:"joins"`
	}
	d, _ := os.ReadFile(prep)
	json.Unmarshal(d, &p)
	d, _ = os.ReadFile(brep)
	json.Unmarshal(d, &bk)
	if len(p.Joins) != 1 || len(bk.Joins) != 1 || !bk.Joins[0].Verified {
		t.Fatalf("joins: primary %+v, backup %+v", p.Joins, bk.Joins)
	}
	if p.Joins[0].DirtyBytes == 0 || p.Joins[0].Bytes < 16<<20 {
		t.Errorf("the guest wrote during the pre-copy, yet %d bytes were re-sent (%d in all)", p.Joins[0].DirtyBytes, p.Joins[0].Bytes)
	}
	if p.FinalHash != bk.FinalHash || bk.HashesCompared == 0 {
		t.Errorf("final hashes %s / %s, %d compared", p.FinalHash, bk.FinalHash, bk.HashesCompared)
	}
	t.Logf("join: pause %.1f ms, %d bytes, %d re-sent at the stop", p.Joins[0].PauseMS, p.Joins[0].Bytes, p.Joins[0].DirtyBytes)

	// A second backup without --join is refused by a running primary, and
	// one with --join is refused while a backup is attached.
	primary = startHvft(t, "--log-level", "warn", "primary", "--listen", addr, "--backup-wait", "0", "ticker", "--", "100", "5000")
	r := hvft(t, "", "--log-level", "error", "backup", "--primary", addr, "ticker", "--", "100", "5000")
	if r.code != exitFailure || !strings.Contains(r.stderr, "--join") {
		t.Errorf("plain backup against a running primary: exit %d %s", r.code, r.stderr)
	}
	primary.cmd.Process.Kill()
}

// TestJoinAfterDescriptorExhaustion: a primary allowed 40 open files is
// flooded with 100 idle connections, so that accepting fails (EMFILE).
// It says so in its log and keeps accepting: once the flood is gone a
// backup joins it. Before, the first failed accept ended the primary's
// accepting for the rest of the run, silently.
func TestJoinAfterDescriptorExhaustion(t *testing.T) {
	addr := freeAddr(t)
	guest := []string{"ticker", "--", "100000", "5000"}
	primary := startHvft(t, append([]string{"__nofile", "40", "--log-level", "info", "primary", "--listen", addr, "--backup-wait", "0"}, guest...)...)
	primary.waitFor(t, "the primary's first tick", func() bool { return strings.Contains(primary.stdout.String(), "tick 1 ") })
	var flood []net.Conn
	for range 100 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		flood = append(flood, c)
	}
	primary.waitFor(t, "a failed accept in the log", func() bool {
		return strings.Contains(primary.stderr.String(), "accepting a connection failed; retrying")
	})
	for _, c := range flood {
		c.Close()
	}
	backup := startHvft(t, append([]string{"--log-level", "info", "backup", "--primary", addr, "--join"}, guest...)...)
	backup.waitFor(t, "the join", func() bool {
		return strings.Contains(backup.stderr.String(), "received the primary's state")
	})
	if !strings.Contains(primary.stderr.String(), "a backup is joining") {
		t.Fatalf("the primary did not log the join\n%s", primary.stderr.String())
	}
}

// TestJoinDuringDescriptorExhaustion: a joiner that starts while the
// primary is out of file descriptors (100 idle connections held against a
// limit of 40 files) waits in the primary's listen queue and gets no
// welcome within its handshake's 5 s. It tries again (--connect-timeout
// has time left) and joins once the flood is gone. Before, it gave up at
// its first handshake, and joiners were locked out of a primary that
// recovered.
func TestJoinDuringDescriptorExhaustion(t *testing.T) {
	addr := freeAddr(t)
	guest := []string{"ticker", "--", "100000", "5000"}
	primary := startHvft(t, append([]string{"__nofile", "40", "--log-level", "info", "primary", "--listen", addr, "--backup-wait", "0"}, guest...)...)
	primary.waitFor(t, "the primary's first tick", func() bool { return strings.Contains(primary.stdout.String(), "tick 1 ") })
	var flood []net.Conn
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	for range 100 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		flood = append(flood, c)
	}
	primary.waitFor(t, "a failed accept in the log", func() bool {
		return strings.Contains(primary.stderr.String(), "accepting a connection failed; retrying")
	})
	backup := startHvft(t, append([]string{"--log-level", "info", "backup", "--primary", addr, "--join", "--connect-timeout", "1m"}, guest...)...)
	backup.waitFor(t, "a handshake that failed and is retried", func() bool {
		return strings.Contains(backup.stderr.String(), "the primary did not complete the handshake; retrying")
	})
	for _, c := range flood {
		c.Close()
	}
	flood = nil
	backup.waitFor(t, "the join", func() bool {
		return strings.Contains(backup.stderr.String(), "received the primary's state")
	})
}
