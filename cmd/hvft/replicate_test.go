package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"hvft/epoch"
	"hvft/guests"
	"hvft/replica"
)

// proc is a running hvft process.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr syncBuffer
	done           chan struct{}
	cancel         context.CancelFunc
	err            error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startHvft(t *testing.T, args ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	name := hvftBin
	if len(args) > 1 && args[0] == "__netns" { // run inside a network namespace
		name, args = "ip", append([]string{"netns", "exec", args[1], hvftBin}, args[2:]...)
	}
	if len(args) > 1 && args[0] == "__nofile" { // with at most args[1] open files
		name, args = "sh", append([]string{"-c", `ulimit -n "$0" && exec "$@"`, args[1], hvftBin}, args[2:]...)
	}
	p := &proc{cmd: exec.CommandContext(ctx, name, args...), done: make(chan struct{}), cancel: cancel}
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	// A grandchild holding the output pipes must not outlast the bound.
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.cmd.Process.Kill(); <-p.done; cancel() })
	return p
}

// wait returns the exit code; the process's own bound ends a hang.
func (p *proc) wait(t *testing.T) int {
	t.Helper()
	<-p.done
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return 0
	case errors.As(p.err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("%v", p.err)
	return -1
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type demoReport struct {
	Killed        bool     `json:"killed"`
	KilledAtEpoch uint64   `json:"killed_at_epoch"`
	KillToLiveMS  *float64 `json:"kill_to_live_ms"`
	Gaps          uint64   `json:"gaps"`
	Backup        struct {
		BecamePrimary  bool   `json:"became_primary"`
		ExitCode       *int   `json:"exit_code"`
		HashesCompared uint64 `json:"hashes_compared"`
		Failover       *struct {
			DetectedAfterMS float64 `json:"detected_after_ms"`
			LiveAtEpoch     uint64  `json:"live_at_epoch"`
		} `json:"failover"`
	} `json:"backup"`
}

// TestDemoSurvivesPrimaryKill: the primary is SIGKILLed at a random epoch
// (seeded, logged); the merged console has every ticker line exactly once,
// in order, with valid checksums, and the survivor exits with the guest's
// code.
func TestDemoSurvivesPrimaryKill(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	const ticks = 80
	runs := 4
	if testing.Short() {
		runs = 1
	}
	for i := 0; i < runs; i++ {
		killAt := 2 + rng.IntN(ticks-10)
		t.Run("kill-at-"+strconv.Itoa(killAt), func(t *testing.T) {
			report := filepath.Join(t.TempDir(), "demo.json")
			r := hvft(t, "", "--log-level", "warn", "demo", "--kill-after", strconv.Itoa(killAt), "--report", report,
				"ticker", "--", strconv.Itoa(ticks), "3000")
			if r.code != 0 {
				t.Fatalf("demo exit %d\n%s", r.code, r.stderr)
			}
			if err := guests.CheckTicker(r.stdout, ticks); err != nil {
				t.Fatalf("merged console: %v\n%s", err, r.stdout)
			}
			var rep demoReport
			data, _ := os.ReadFile(report)
			if err := json.Unmarshal(data, &rep); err != nil {
				t.Fatal(err)
			}
			if !rep.Killed || !rep.Backup.BecamePrimary || rep.Backup.Failover == nil || rep.Gaps != 0 {
				t.Fatalf("report %s", data)
			}
			if rep.Backup.HashesCompared == 0 {
				t.Errorf("no hashes compared before the kill: %s", data)
			}
			t.Logf("killed after epoch %d; detected after %.1f ms, live at epoch %d, kill to live %v ms",
				rep.KilledAtEpoch, rep.Backup.Failover.DetectedAfterMS, rep.Backup.Failover.LiveAtEpoch, derefMS(rep.KillToLiveMS))
		})
	}
}

func derefMS(v *float64) any {
	if v == nil {
		return "n/a"
	}
	return *v
}

// TestBackupKillLeavesPrimaryAlone: the primary finishes the run alone.
func TestBackupKillLeavesPrimaryAlone(t *testing.T) {
	addr := freeAddr(t)
	report := filepath.Join(t.TempDir(), "primary.json")
	primary := startHvft(t, "--log-level", "warn", "primary", "--listen", addr, "--report", report, "ticker", "--", "60", "3000")
	backup := startHvft(t, "--log-level", "warn", "backup", "--primary", addr, "ticker", "--", "60", "3000")
	primary.waitFor(t, "progress", func() bool { return strings.Count(primary.stdout.String(), "tick ") >= 10 })
	backup.cmd.Process.Kill()
	backup.wait(t)
	if code := primary.wait(t); code != 0 {
		t.Fatalf("primary exit %d\n%s", code, primary.stderr.String())
	}
	if err := guests.CheckTicker(primary.stdout.String(), 60); err != nil {
		t.Fatalf("primary console: %v", err)
	}
	data, _ := os.ReadFile(report)
	var rep struct {
		BackupLost string `json:"backup_lost"`
	}
	json.Unmarshal(data, &rep)
	if rep.BackupLost == "" {
		t.Errorf("report does not say the backup was lost: %s", data)
	}
}

// TestHandshakeRefusesMismatch: a backup with another guest image, other
// arguments or another RAM size is refused with the reason; the primary
// keeps waiting for a proper backup, and says what it waits for.
func TestHandshakeRefusesMismatch(t *testing.T) {
	addr := freeAddr(t)
	primary := startHvft(t, "primary", "--listen", addr, "--backup-wait", "20s", "ticker", "--", "5", "2000")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"hello"}, "guest image differs"},
		{[]string{"ticker", "--", "6", "2000"}, "guest arguments differ"},
		{[]string{"--ram", "32MiB", "ticker", "--", "5", "2000"}, "RAM size differs"},
	} {
		args := append([]string{"--log-level", "error", "backup", "--primary", addr}, c.args...)
		if c.args[0] == "--ram" {
			args = append([]string{"--log-level", "error", "backup", "--primary", addr}, c.args...)
		}
		r := hvft(t, "", args...)
		if r.code != exitFailure || !strings.Contains(r.stderr, "refused") || !strings.Contains(r.stderr, c.want) {
			t.Errorf("backup %v: exit %d, stderr %s", c.args, r.code, r.stderr)
		}
	}
	good := hvft(t, "", "--log-level", "error", "backup", "--primary", addr, "ticker", "--", "5", "2000")
	if good.code != 0 || good.stdout != "" {
		t.Errorf("matching backup: exit %d stdout %q stderr %s", good.code, good.stdout, good.stderr)
	}
	if code := primary.wait(t); code != 0 {
		t.Fatalf("primary exit %d\n%s", code, primary.stderr.String())
	}
	log := primary.stderr.String()
	if !strings.Contains(log, "waiting for a backup") || strings.Count(log, "refused a backup") != 3 {
		t.Errorf("primary log does not show the wait and three refusals:\n%s", log)
	}
}

func TestPrimaryWithoutBackup(t *testing.T) {
	r := hvft(t, "", "--log-level", "error", "primary", "--listen", freeAddr(t), "--backup-wait", "300ms", "hello")
	if r.code != exitFailure || !strings.Contains(r.stderr, "no backup connected") || !strings.Contains(r.stderr, "--backup-wait 0") {
		t.Errorf("exit %d stderr %s", r.code, r.stderr)
	}
	r = hvft(t, "", "--log-level", "error", "primary", "--listen", freeAddr(t), "--backup-wait", "0", "hello")
	if r.code != 0 || !strings.Contains(r.stdout, "hello from hvft") {
		t.Errorf("alone: exit %d stdout %q stderr %s", r.code, r.stdout, r.stderr)
	}
	r = hvft(t, "", "--log-level", "error", "backup", "--primary", freeAddr(t), "--connect-timeout", "300ms", "hello")
	if r.code != exitFailure || !strings.Contains(r.stderr, "no primary at") {
		t.Errorf("backup without primary: exit %d stderr %s", r.code, r.stderr)
	}
}

// TestGarbageOnTheLink: a peer that sends garbage or a truncated frame is
// turned away by the primary, which then replicates with a real backup; a
// backup fed garbage closes the link with an error and never crashes.
func TestGarbageOnTheLink(t *testing.T) {
	addr := freeAddr(t)
	primary := startHvft(t, "primary", "--listen", addr, "ticker", "--", "5", "2000")
	for _, junk := range [][]byte{
		bytes.Repeat([]byte{0xff}, 64),             // absurd length
		{10, 0, 0, 0, 1, 1, 2, 3},                  // truncated frame
		[]byte("GET / HTTP/1.0\r\n\r\n"),           // wrong protocol
		{8, 0, 0, 0, 1, 6, 0, 0, 0, 0, 0, 0, 0, 0}, // bad checksum
	} {
		var conn net.Conn
		var err error
		for i := 0; i < 100; i++ {
			if conn, err = net.Dial("tcp", addr); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond) // bounded retry while the primary starts
		}
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(junk)
		conn.(*net.TCPConn).CloseWrite()
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 256)
		for {
			if _, err := conn.Read(buf); err != nil {
				break // the primary closed it
			}
		}
		conn.Close()
	}
	good := hvft(t, "", "--log-level", "error", "backup", "--primary", addr, "ticker", "--", "5", "2000")
	if good.code != 0 {
		t.Errorf("real backup after garbage: exit %d\n%s", good.code, good.stderr)
	}
	if code := primary.wait(t); code != 0 || strings.Count(primary.stdout.String(), "tick ") != 5 {
		t.Fatalf("primary exit %d\n%s\n%s", code, primary.stdout.String(), primary.stderr.String())
	}
	if n := strings.Count(primary.stderr.String(), "failed the handshake"); n != 4 {
		t.Errorf("primary turned away %d garbage peers, want 4:\n%s", n, primary.stderr.String())
	}

	// A fake primary that welcomes the backup, then sends garbage.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		buf := make([]byte, 4096)
		conn.Read(buf) // the hello
		welcome, _ := epoch.AppendFrame(nil, epoch.Message{Type: epoch.TypeWelcome, Welcome: &epoch.Welcome{Accepted: true}})
		conn.Write(welcome)
		conn.Write(bytes.Repeat([]byte{0x42}, 100))
		time.Sleep(100 * time.Millisecond)
	}()
	r := hvft(t, "", "backup", "--primary", ln.Addr().String(), "hello")
	if !strings.Contains(r.stderr, "bad frame") {
		t.Errorf("backup fed garbage: exit %d, stderr does not name the bad frame:\n%s", r.code, r.stderr)
	}
}

// TestSilentPrimaryIsDeclaredDead: a primary that stops (SIGSTOP) without
// closing its link is declared dead after the failure timeout; the backup
// takes over and the merged console is complete.
func TestSilentPrimaryIsDeclaredDead(t *testing.T) {
	addr := freeAddr(t)
	dir := t.TempDir()
	guest := []string{"ticker", "--", "40", "3000"}
	link := []string{"--console-stream", "--failure-timeout", "300ms", "--heartbeat", "50ms"}
	primary := startHvft(t, append(append([]string{"--log-level", "warn", "primary", "--listen", addr}, link...), guest...)...)
	backupReport := filepath.Join(dir, "backup.json")
	backup := startHvft(t, append(append([]string{"--log-level", "warn", "backup", "--primary", addr, "--report", backupReport}, link...), guest...)...)
	primary.waitFor(t, "progress", func() bool { return strings.Count(primary.stdout.String(), "\ne ") >= 10 })
	if err := primary.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	if code := backup.wait(t); code != 0 {
		t.Fatalf("backup exit %d\n%s", code, backup.stderr.String())
	}
	tookOver := time.Since(stopped)
	primary.cmd.Process.Kill()
	primary.wait(t)
	var console bytes.Buffer
	m := replica.NewMerger(&console)
	for _, s := range []string{primary.stdout.String(), backup.stdout.String()} {
		if err := m.Read(strings.NewReader(s), nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := guests.CheckTicker(console.String(), 40); err != nil {
		t.Fatalf("merged console: %v\n%s", err, console.String())
	}
	var rep struct {
		Failover struct {
			Reason          string  `json:"reason"`
			DetectedAfterMS float64 `json:"detected_after_ms"`
		} `json:"failover"`
	}
	data, _ := os.ReadFile(backupReport)
	json.Unmarshal(data, &rep)
	if !strings.Contains(rep.Failover.Reason, "silent") || rep.Failover.DetectedAfterMS < 300 {
		t.Errorf("failover %+v: want a silence of at least the 300 ms timeout", rep.Failover)
	}
	t.Logf("silent primary: detected after %.0f ms; backup finished %v after the stop", rep.Failover.DetectedAfterMS, tookOver.Round(time.Millisecond))
}

// TestLinkOffLoopbackNeedsAKey: off loopback the link must be
// authenticated unless --insecure says otherwise; keygen writes a key.
func TestLinkOffLoopbackNeedsAKey(t *testing.T) {
	r := hvft(t, "", "--log-level", "error", "primary", "--listen", "0.0.0.0:0", "hello")
	if r.code != exitFailure || !strings.Contains(r.stderr, "--key-file") {
		t.Errorf("primary off loopback without a key: exit %d %s", r.code, r.stderr)
	}
	r = hvft(t, "", "--log-level", "error", "backup", "--primary", "192.0.2.1:7", "hello")
	if r.code != exitFailure || !strings.Contains(r.stderr, "not on loopback") {
		t.Errorf("backup off loopback without a key: exit %d %s", r.code, r.stderr)
	}
	// A backup's own listener serves joiners (the guest's whole RAM) once
	// it takes over: it needs the key just the same.
	r = hvft(t, "", "--log-level", "error", "backup", "--primary", "127.0.0.1:7", "--listen", "0.0.0.0:0", "hello")
	if r.code != exitFailure || !strings.Contains(r.stderr, "0.0.0.0:0 is not on loopback") {
		t.Errorf("backup listening off loopback without a key: exit %d %s", r.code, r.stderr)
	}
	key := filepath.Join(t.TempDir(), "link.key")
	if r := hvft(t, "", "keygen", key); r.code != 0 {
		t.Fatalf("keygen: %d %s", r.code, r.stderr)
	}
	if r := hvft(t, "", "keygen", key); r.code != exitFailure {
		t.Errorf("keygen overwrote %s", key)
	}
	r = hvft(t, "", "--log-level", "error", "primary", "--listen", "0.0.0.0:0", "--key-file", key, "--no-arbiter", "--backup-wait", "0", "hello")
	if r.code != 0 || !strings.Contains(r.stdout, "hello from hvft") {
		t.Errorf("primary with a key: exit %d %s", r.code, r.stderr)
	}
}

// TestNoSplitBrainAfterAPause: with --lease (the file arbiter under its
// old name), a primary that stops (SIGSTOP) loses the next generation to
// the backup, which takes over; when the old primary resumes it finds
// itself fenced and releases nothing more. The shared console file holds
// every ticker line exactly once.
func TestNoSplitBrainAfterAPause(t *testing.T) {
	dir := t.TempDir()
	out, lease := filepath.Join(dir, "console.txt"), filepath.Join(dir, "run.lease")
	addr := freeAddr(t)
	guest := []string{"ticker", "--", "60", "3000"}
	link := []string{"--console-out", out, "--lease", lease, "--lease-ttl", "300ms", "--failure-timeout", "300ms"}
	primary := startHvft(t, append(append([]string{"--log-level", "warn", "primary", "--listen", addr}, link...), guest...)...)
	backup := startHvft(t, append(append([]string{"--log-level", "warn", "backup", "--primary", addr}, link...), guest...)...)
	primary.waitFor(t, "10 console lines", func() bool { return fileLines(out) >= 10 })
	primary.cmd.Process.Signal(syscall.SIGSTOP)
	// Resume the old primary once the backup has taken over, while the
	// new primary is still running: it must find itself fenced.
	for !strings.Contains(backup.stderr.String(), "live: this replica is now the primary") {
		select {
		case <-backup.done:
			t.Fatalf("backup ended without taking over\n%s", backup.stderr.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
	primary.cmd.Process.Signal(syscall.SIGCONT)
	if code := primary.wait(t); code != exitFailure || !strings.Contains(primary.stderr.String(), "FENCED") {
		t.Errorf("old primary: exit %d, want %d and FENCED\n%s", code, exitFailure, primary.stderr.String())
	}
	if code := backup.wait(t); code != 0 {
		t.Fatalf("backup exit %d\n%s", code, backup.stderr.String())
	}
	data, _ := os.ReadFile(out)
	if err := guests.CheckTicker(string(data), 60); err != nil {
		t.Fatalf("console file: %v\n%s", err, data)
	}
}

// waitFor polls cond until it holds; the test fails if p exits first or a
// minute passes (a bound, not a synchronisation: cond is what is awaited).
func (p *proc) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited a minute for %s\n%s", what, p.stderr.String())
		}
		select {
		case <-p.done:
			t.Fatalf("process ended before %s\n%s", what, p.stderr.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func fileLines(path string) int {
	data, _ := os.ReadFile(path)
	return strings.Count(string(data), "\n")
}

// TestDemoReportsABackupDivergence: rdtsc diverges when replicated (it
// reads host cycles the hypervisor cannot trap). The demo's summary says
// what the backup found, read from its report: the divergence and how many
// hashes it compared, never "all equal"; and the demo exits 125.
func TestDemoReportsABackupDivergence(t *testing.T) {
	report := filepath.Join(t.TempDir(), "demo.json")
	r := hvft(t, "", "--log-level", "error", "demo", "--kill-after", "never", "--report", report, "rdtsc")
	var rep struct {
		Replicas []demoReplica `json:"replicas"`
	}
	data, _ := os.ReadFile(report)
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatalf("demo report: %v\n%s", err, r.stderr)
	}
	var backup string
	for _, x := range rep.Replicas {
		if x.Report.Role == "backup" {
			backup = x.Report.Divergence
		}
	}
	if backup == "" {
		t.Fatalf("the backup's report names no divergence: %s", data)
	}
	summary := r.stderr[strings.Index(r.stderr, "== hvft demo summary"):]
	if strings.Contains(summary, "all equal") || !strings.Contains(summary, "DIVERGED") || !strings.Contains(summary, "0 state hashes compared equal") {
		t.Errorf("the summary does not report the backup's divergence:\n%s", summary)
	}
	if r.code != exitFailure || !strings.Contains(r.stderr, "hvft: ") || !strings.Contains(r.stderr[strings.LastIndex(r.stderr, "hvft: "):], "diverged") {
		t.Errorf("demo exit %d, want %d with an hvft: error saying the backup diverged\n%s", r.code, exitFailure, r.stderr)
	}
}

// TestPrimaryFailsWhenItsBackupDiverges: rdtsc diverges when replicated.
// The primary runs the guest to its power-off alone, then exits 125 with
// an hvft: error naming the backup's divergence; its report keeps the
// guest's exit code, and its default arbiter is gone (nobody goes on).
func TestPrimaryFailsWhenItsBackupDiverges(t *testing.T) {
	addr := freeAddr(t)
	report := filepath.Join(t.TempDir(), "primary.json")
	primary := startHvft(t, "primary", "--listen", addr, "--report", report, "rdtsc")
	backup := startHvft(t, "--log-level", "error", "backup", "--primary", addr, "rdtsc")
	if code := backup.wait(t); code != exitFailure {
		t.Errorf("backup exit %d, want %d\n%s", code, exitFailure, backup.stderr.String())
	}
	code := primary.wait(t)
	log := primary.stderr.String()
	last := log[max(strings.LastIndex(log, "hvft: "), 0):]
	if code != exitFailure || !strings.HasPrefix(last, "hvft: ") || !strings.Contains(last, "the backup diverged: epoch ") {
		t.Fatalf("primary exit %d, want %d with an hvft: error naming the divergence\n%s", code, exitFailure, log)
	}
	if !strings.Contains(primary.stdout.String(), "rdtsc done") {
		t.Errorf("the primary did not run the guest to its end:\n%s", primary.stdout.String())
	}
	var rep struct {
		ExitCode   *int   `json:"exit_code"`
		Divergence string `json:"divergence"`
		Error      string `json:"error"`
	}
	data, _ := os.ReadFile(report)
	if err := json.Unmarshal(data, &rep); err != nil || rep.ExitCode == nil || *rep.ExitCode != 0 || rep.Divergence == "" || !strings.Contains(rep.Error, rep.Divergence) {
		t.Errorf("primary report (%v): %s", err, data)
	}
	m := regexp.MustCompile(`"arbiter": "file:([^"]+)"`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("the primary names no default arbiter:\n%s", log)
	}
	if _, err := os.Stat(m[1]); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the default arbiter %s outlived the complete run: %v", m[1], err)
	}
}

// TestReplicaBadSetup: a replica refuses, before anything runs, a
// zero lease TTL (the option is ignored now: nothing is renewed; a 1ns
// one panicked when it was), and a --console-out it could never write
// (every output was lost with exit 0). A 1ns TTL runs.
func TestReplicaBadSetup(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"zero lease TTL", []string{"primary", "--listen", "127.0.0.1:0", "--backup-wait", "0", "--lease", filepath.Join(dir, "lease"), "--lease-ttl", "0s"}, "--lease-ttl 0s: must be positive"},
		{"console file in a missing directory", []string{"primary", "--listen", "127.0.0.1:0", "--backup-wait", "0", "--console-out", filepath.Join(dir, "missing", "out.txt")}, "--console-out: the directory of"},
		{"console file is a directory", []string{"backup", "--primary", "127.0.0.1:1", "--console-out", dir}, "is not a regular file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := hvft(t, "", append(append([]string{"--log-level", "error"}, c.args...), "ticker", "--", "3", "1000")...)
			if r.code != exitFailure || !strings.Contains(r.stderr, c.want) || r.stdout != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %d and %q", r.code, r.stdout, r.stderr, exitFailure, c.want)
			}
		})
	}
	r := hvft(t, "", "--log-level", "warn", "primary", "--listen", "127.0.0.1:0", "--backup-wait", "0", "--lease", filepath.Join(dir, "lease"), "--lease-ttl", "1ns", "ticker", "--", "3", "1000")
	if r.code != 0 || strings.Count(r.stdout, "tick") != 3 || !strings.Contains(r.stderr, "--lease-ttl is ignored") {
		t.Fatalf("--lease-ttl 1ns: exit %d, stdout %q\n%s", r.code, r.stdout, r.stderr)
	}
}

// TestConsoleFileStartsEmpty: a primary empties --console-out when it
// starts, not at its first output; before, a primary that died before
// its first output left a previous run's lines for its backup to append
// to (old and new ticks interleaved).
func TestConsoleFileStartsEmpty(t *testing.T) {
	out := filepath.Join(t.TempDir(), "console.txt")
	if err := os.WriteFile(out, []byte("tick 1 from an earlier run\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := hvft(t, "", "--log-level", "error", "primary", "--listen", "127.0.0.1:0", "--backup-wait", "0", "--console-out", out, "--max-epochs", "3", "spin")
	if r.code != exitFailure || !strings.Contains(r.stderr, "epoch budget") {
		t.Fatalf("exit %d %s", r.code, r.stderr)
	}
	if data, err := os.ReadFile(out); err != nil || len(data) != 0 {
		t.Fatalf("console file after a run without output: %q, %v", data, err)
	}
}

// TestConsoleFilesMustBeShared: primary and backup on one host naming two
// different existing --console-out files are refused at the handshake;
// before, the pair ran and a failover lost everything after it with exit
// 0. (A backup's file that does not exist yet proves nothing: a takeover
// onto it fails naming the cause, TestTakeoverOnAnotherConsoleFileFails.)
// A backup started before its primary created the shared file pairs.
func TestConsoleFilesMustBeShared(t *testing.T) {
	dir := t.TempDir()
	shared, other := filepath.Join(dir, "console.txt"), filepath.Join(dir, "other.txt")
	guest := []string{"ticker", "--", "5", "1000"}
	if err := os.WriteFile(other, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	primary := startHvft(t, append([]string{"--log-level", "warn", "primary", "--listen", addr, "--console-out", shared, "--backup-wait", "1m"}, guest...)...)
	b := hvft(t, "", append([]string{"--log-level", "warn", "backup", "--primary", addr, "--console-out", other}, guest...)...)
	if b.code != exitFailure || !strings.Contains(b.stderr, "the console files are different files") {
		t.Fatalf("a backup on another console file: exit %d\n%s", b.code, b.stderr)
	}
	primary.cmd.Process.Kill()
	<-primary.done
	os.Remove(shared)
	addr = freeAddr(t)
	backup := startHvft(t, append([]string{"--log-level", "info", "backup", "--primary", addr, "--console-out", shared}, guest...)...)
	backup.waitFor(t, "the backup's first dial", func() bool { return strings.Contains(backup.stderr.String(), "waiting for the primary") })
	primary = startHvft(t, append([]string{"--log-level", "warn", "primary", "--listen", addr, "--console-out", shared}, guest...)...)
	if code := primary.wait(t); code != 0 {
		t.Fatalf("primary exit %d\n%s", code, primary.stderr.String())
	}
	if code := backup.wait(t); code != 0 {
		t.Fatalf("backup exit %d\n%s", code, backup.stderr.String())
	}
	if data := readFile(t, shared); strings.Count(data, "tick") != 5 {
		t.Fatalf("shared console: %q", data)
	}
}

// TestKilledDemoTakesItsReplicas: a demo that is itself SIGKILLed (as a
// test's bound does) takes its primary and backup with it. Replicas that
// still run epochs die of the broken pipe on their first progress line,
// but blocked ones (two hung demos' backups were found running an hour
// later) wrote nothing and ran on as orphans: here the program blocks
// reading a FIFO nobody writes to, and the backup waits for its log.
func TestKilledDemoTakesItsReplicas(t *testing.T) {
	needBusybox(t)
	fifo := filepath.Join(t.TempDir(), "stdin")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	demo := startHvft(t, "--log-level", "warn", "demo", "--linux", "--stdin", fifo, "--kill-after", "100000", busybox, "--", "cat")
	// Opened for writing only after the demo opened it for reading (an
	// open of a FIFO waits for the other end); it is never written.
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var pids []int
	demo.waitFor(t, "the replicas' pids", func() bool {
		var p, b int
		if _, err := fmt.Sscanf(after(demo.stderr.String(), "[demo] primary pid "), "%d, backup pid %d", &p, &b); err != nil {
			return false
		}
		pids = []int{p, b}
		return true
	})
	t.Cleanup(func() { // should the test fail, no orphan outlives it
		for _, pid := range pids {
			if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); running(pid) && bytes.Contains(cmdline, []byte("hvft")) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	demo.cmd.Process.Kill()
	demo.wait(t)
	deadline := time.Now().Add(time.Minute)
	for _, pid := range pids {
		for running(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("replica %d still runs a minute after its demo was killed", pid)
			}
			<-time.After(5 * time.Millisecond) // a poll interval, bounded by the deadline
		}
	}
}

// after returns what follows the first marker in s ("" without one).
func after(s, marker string) string {
	if i := strings.Index(s, marker); i >= 0 {
		return s[i+len(marker):]
	}
	return ""
}

// running reports whether pid is a live process (not gone, not a zombie).
func running(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name's closing parenthesis.
	s := string(data)
	i := strings.LastIndex(s, ")")
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// TestHandshakeRefusesAnotherWorld: a backup must share the primary's
// world, not only its guest: the arbiter (the same register and the run's
// nonce stored beside it), the disk image (the one file, not a copy), a
// Linux program's root and journal directory, and the console file. Each
// mismatched cell is refused at the handshake, naming what differs, so
// none of them can run, and none can split; the matching backup then
// replicates.
func TestHandshakeRefusesAnotherWorld(t *testing.T) {
	dir := t.TempDir()
	arb, other, leftover := filepath.Join(dir, "arb"), filepath.Join(dir, "other"), filepath.Join(dir, "leftover")
	// A register another run left behind: a run that held generations.
	if r := hvft(t, "", "--log-level", "error", "primary", "--listen", freeAddr(t), "--backup-wait", "0", "--arbiter", "file:"+leftover, "hello"); r.code != 0 {
		t.Fatalf("leaving a register behind: exit %d\n%s", r.code, r.stderr)
	}
	img := filepath.Join(dir, "disk.img")
	cp := filepath.Join(dir, "copy.img")
	console, console2 := filepath.Join(dir, "out"), filepath.Join(dir, "out2")
	addr := freeAddr(t)
	guest := []string{"diskkv", "--", "run", "20"}
	primary := startHvft(t, append([]string{"primary", "--listen", addr, "--backup-wait", "60s", "--arbiter", "file:" + arb,
		"--disk", img, "--console-out", console}, guest...)...)
	primary.waitFor(t, "the wait for a backup", func() bool { return strings.Contains(primary.stderr.String(), "waiting for a backup") })
	// A byte copy of the image and its fence file, made once the primary
	// has both.
	for _, f := range [][2]string{{img, cp}, {img + ".fence", cp + ".fence"}} {
		data, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f[1], data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	base := []string{"--disk", img, "--console-out", console}
	cells := []struct {
		name string
		args []string
		want string
	}{
		{"no arbiter", base, "the primary arbitrates at file:"},
		{"another arbiter", append([]string{"--arbiter", "file:" + other}, base...), "the arbiters differ"},
		{"a leftover arbiter", append([]string{"--arbiter", "file:" + leftover}, base...), "the arbiters differ"},
		{"a copy of the disk", []string{"--arbiter", "file:" + arb, "--disk", cp, "--console-out", console}, "the disk images are different files"},
		{"another disk", []string{"--arbiter", "file:" + arb, "--disk", filepath.Join(dir, "other.img"), "--console-out", console}, "the disk images are different files"},
		{"another console file", []string{"--arbiter", "file:" + arb, "--disk", img, "--console-out", console2}, "the console files are different files"},
	}
	for _, c := range cells {
		os.WriteFile(console2, nil, 0o644)
		args := append(append([]string{"--log-level", "error", "backup", "--primary", addr}, c.args...), guest...)
		r := hvft(t, "", args...)
		if r.code != exitFailure || !strings.Contains(r.stderr, "refused") || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: exit %d, stderr %s", c.name, r.code, r.stderr)
		}
	}
	good := hvft(t, "", append(append([]string{"--log-level", "error", "backup", "--primary", addr}, "--arbiter", "file:"+arb, "--disk", img, "--console-out", console), guest...)...)
	if good.code != 0 {
		t.Errorf("matching backup: exit %d stderr %s", good.code, good.stderr)
	}
	if code := primary.wait(t); code != 0 {
		t.Fatalf("primary exit %d\n%s", code, primary.stderr.String())
	}
	if n := strings.Count(primary.stderr.String(), "refused a backup"); n != len(cells) {
		t.Errorf("the primary refused %d backups, want %d:\n%s", n, len(cells), primary.stderr.String())
	}
}

// TestHandshakeRefusesAnotherRoot: a Linux program's replicas on one host
// must name the same --root and the same journal directory.
func TestHandshakeRefusesAnotherRoot(t *testing.T) {
	needBusybox(t)
	dir := t.TempDir()
	root, root2, journal2 := filepath.Join(dir, "root"), filepath.Join(dir, "root2"), filepath.Join(dir, "journal2")
	for _, d := range []string{root, root2, journal2} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	addr := freeAddr(t)
	prog := []string{"--linux", busybox, "--", "true"}
	primary := startHvft(t, append([]string{"--log-level", "warn", "primary", "--listen", addr, "--backup-wait", "60s", "--root", root}, prog...)...)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--root", root2}, "the roots are different directories"},
		{[]string{"--root", root, "--journal-dir", journal2}, "the journal directories are different"},
	} {
		r := hvft(t, "", append(append([]string{"--log-level", "error", "backup", "--primary", addr}, c.args...), prog...)...)
		if r.code != exitFailure || !strings.Contains(r.stderr, "refused") || !strings.Contains(r.stderr, c.want) {
			t.Errorf("backup %v: exit %d, stderr %s", c.args, r.code, r.stderr)
		}
	}
	good := hvft(t, "", append([]string{"--log-level", "error", "backup", "--primary", addr, "--root", root}, prog...)...)
	if good.code != 0 {
		t.Errorf("matching backup: exit %d stderr %s", good.code, good.stderr)
	}
	if code := primary.wait(t); code != 0 {
		t.Fatalf("primary exit %d\n%s", code, primary.stderr.String())
	}
}
