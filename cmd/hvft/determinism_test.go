package main

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDeterminismGuestsSurvivePrimaryKill: each guest of the machine's
// determinism classes (self-modifying code, code loaded by DMA, nested
// exceptions under a timer, the STI shadow with short epochs, CPU state
// beyond the general registers) runs under `hvft demo` with its primary
// SIGKILLed at a random epoch of the first half of its run (seed logged):
// the survivor must finish with exit 0, the guest's own verdict "NAME ok"
// must be on the merged console exactly once, and the backup must have
// compared hashes with no divergence.
func TestDeterminismGuestsSurvivePrimaryKill(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("HVFT_TEST_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("seed %d (HVFT_TEST_SEED replays it)", seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	for _, g := range []struct {
		name        string
		args        []string
		disk        bool
		epochBlocks string
		clock       string
	}{
		{"smc", []string{"all", "4000"}, false, "5000", "always"},
		{"dmacode", []string{"200"}, true, "5000", "always"},
		{"nestexc", []string{"6000"}, false, "1000", "always"},
		{"stishadow", []string{"1500"}, false, "50", "always"},
		{"cpustate", []string{"20000"}, false, "5000", "always"},
		{"envstop", []string{"20000"}, false, "5000", "always"},
		// quiet epochs end inside its blocks: 58 of them
		{"envstop", []string{"20000"}, false, "5000", "adaptive"},
		{"smcdata", []string{"20000"}, false, "5000", "always"},
		// dmamask is not here: how many epochs it takes depends on when its
		// transfer lands, so a kill point drawn from one run can miss the
		// next (the replay matrix covers it).
	} {
		t.Run(g.name+"/"+g.clock, func(t *testing.T) {
			dir := t.TempDir()
			machineArgs := []string{"--epoch-blocks", g.epochBlocks, "--epoch-clock", g.clock}
			if g.disk {
				machineArgs = append(machineArgs, "--disk", filepath.Join(dir, "disk.img"))
			}
			guestArgs := append([]string{g.name, "--"}, g.args...)
			// An unreplicated run first: how many epochs the guest takes.
			runRep := filepath.Join(dir, "run.json")
			args := append(append([]string{"--log-level", "error", "run", "--report", runRep}, machineArgs...), guestArgs...)
			if r := hvft(t, "", args...); r.code != 0 || !strings.Contains(r.stdout, g.name+" ok") {
				t.Fatalf("unreplicated run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			var run struct {
				Epochs uint64 `json:"epochs"`
			}
			data, _ := os.ReadFile(runRep)
			if err := json.Unmarshal(data, &run); err != nil || run.Epochs < 8 {
				t.Fatalf("run report %s: %v (need at least 8 epochs to kill in)", data, err)
			}
			if g.disk {
				os.Remove(filepath.Join(dir, "disk.img"))
			}
			killAt := 2 + rng.Uint64N(run.Epochs/2-1)
			report := filepath.Join(dir, "demo.json")
			args = append(append([]string{"--log-level", "warn", "demo", "--kill-after", strconv.FormatUint(killAt, 10), "--report", report}, machineArgs...), guestArgs...)
			r := hvft(t, "", args...)
			if r.code != 0 {
				t.Fatalf("demo (kill after epoch %d of %d): exit %d\n%s%s", killAt, run.Epochs, r.code, r.stdout, r.stderr)
			}
			if n := strings.Count(r.stdout, g.name+" ok\n"); n != 1 || strings.Contains(r.stdout, "FAILED") {
				t.Fatalf("merged console has the verdict %d times (kill after epoch %d):\n%s", n, killAt, r.stdout)
			}
			var rep demoReport
			data, _ = os.ReadFile(report)
			if err := json.Unmarshal(data, &rep); err != nil {
				t.Fatal(err)
			}
			if !rep.Killed || !rep.Backup.BecamePrimary || rep.Gaps != 0 || rep.Backup.HashesCompared == 0 {
				t.Fatalf("report %s", data)
			}
			t.Logf("killed after epoch %d of about %d; backup compared %d hashes", killAt, run.Epochs, rep.Backup.HashesCompared)
		})
	}
}
