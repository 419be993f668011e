package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReplayAfterFailover: a primary and a backup record their logs; the
// primary is SIGKILLed; replaying the old primary's log and then the new
// primary's reproduces the surviving run, ending on the backup's final
// hash, every epoch's hash matched.
func TestReplayAfterFailover(t *testing.T) {
	dir := t.TempDir()
	plog, blog, brep, rrep := filepath.Join(dir, "p.log"), filepath.Join(dir, "b.log"), filepath.Join(dir, "b.json"), filepath.Join(dir, "r.json")
	addr := freeAddr(t)
	guest := []string{"ticker", "--", "30", "3000"}
	primary := startHvft(t, append([]string{"--log-level", "warn", "primary", "--listen", addr, "--record", plog}, guest...)...)
	backup := startHvft(t, append([]string{"--log-level", "warn", "backup", "--primary", addr, "--record", blog, "--report", brep}, guest...)...)
	primary.waitFor(t, "progress", func() bool { return strings.Count(primary.stdout.String(), "tick ") >= 10 })
	primary.cmd.Process.Kill()
	primary.wait(t)
	if code := backup.wait(t); code != 0 {
		t.Fatalf("backup exit %d\n%s", code, backup.stderr.String())
	}
	var b struct {
		BecamePrimary bool   `json:"became_primary"`
		FinalHash     string `json:"final_hash"`
		Epochs        uint64 `json:"epochs"`
	}
	data, _ := os.ReadFile(brep)
	json.Unmarshal(data, &b)
	if !b.BecamePrimary {
		t.Fatalf("backup did not take over: %s", data)
	}
	r := hvft(t, "", "replay", "--then", blog, "--report", rrep, plog)
	if r.code != 0 {
		t.Fatalf("replay: exit %d\n%s", r.code, r.stderr)
	}
	var res struct {
		Epochs    uint64 `json:"epochs"`
		Matched   uint64 `json:"hashes_matched"`
		FinalHash string `json:"final_hash"`
		PowerOff  bool   `json:"powered_off"`
	}
	data, _ = os.ReadFile(rrep)
	json.Unmarshal(data, &res)
	if res.FinalHash != b.FinalHash || res.Epochs != b.Epochs || res.Matched != res.Epochs || !res.PowerOff {
		t.Fatalf("replay %+v, backup final %s after %d epochs\n%s", res, b.FinalHash, b.Epochs, r.stderr)
	}
	if !strings.Contains(r.stderr, "the logs agree on") {
		t.Errorf("replay does not say where the histories split:\n%s", r.stderr)
	}

	// The old primary's log alone is cut where it was killed: it replays
	// whole epochs and says what it dropped.
	r = hvft(t, "", "replay", plog)
	if r.code != 0 || !strings.Contains(r.stderr, "replayed") {
		t.Errorf("old primary's log alone: exit %d\n%s", r.code, r.stderr)
	}
	for _, bad := range [][]string{{"replay"}, {"replay", filepath.Join(dir, "missing.log")}, {"replay", brep}} {
		if r := hvft(t, "", bad...); r.code != exitFailure {
			t.Errorf("%v: exit %d\n%s", bad, r.code, r.stderr)
		}
	}
}
