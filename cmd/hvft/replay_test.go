package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"hvft/epoch"
	"hvft/replica"
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

// forgeEnd copies a log file's bytes with the end of epoch e edited
// (re-encoded with a fresh checksum: a forgery, not damage); e 0 edits the
// last one. It returns the copy, the offset of the edited frame in it and
// the number of the log's last epoch.
func forgeEnd(t *testing.T, data []byte, e uint64, edit func(*epoch.EpochEnd)) (out []byte, at int, last uint64) {
	t.Helper()
	header, raws, msgs, err := replica.SplitLog(data)
	if err != nil {
		t.Fatal(err)
	}
	hdrLen := len(header)
	type frame struct {
		raw []byte
		m   epoch.Message
	}
	var frames []frame
	for i, m := range msgs {
		if m.Type == epoch.TypeEpochEnd {
			last = m.EpochEnd.Epoch
		}
		frames = append(frames, frame{raws[i], m})
	}
	if e == 0 {
		e = last
	}
	out = append([]byte(nil), data[:hdrLen]...)
	at = -1
	for _, f := range frames {
		if f.m.Type == epoch.TypeEpochEnd && f.m.EpochEnd.Epoch == e {
			edit(f.m.EpochEnd)
			at = len(out)
			var err error
			if out, err = replica.AppendLogRecord(out, f.m); err != nil {
				t.Fatal(err)
			}
			continue
		}
		out = append(out, f.raw...)
	}
	if at < 0 {
		t.Fatalf("no end of epoch %d in the log", e)
	}
	return out, at, last
}

// TestReplayExitStatus: hvft replay exits 0 only when it checked every
// whole epoch the log holds and every recorded state hash matched. A
// forged hash in any epoch (the power-off epoch included), a record
// without a hash and a damaged record are each exit 125 with an hvft:
// error naming what differed; a tail torn by a crash is reported and is
// not a failure.
func TestReplayExitStatus(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "run.log")
	if r := hvft(t, "", "--log-level", "warn", "run", "--epoch-blocks", "20000", "--record", logPath, "ticker", "--", "12", "1000"); r.code != 0 {
		t.Fatalf("run: exit %d\n%s", r.code, r.stderr)
	}
	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	_, _, last := forgeEnd(t, data, 0, func(*epoch.EpochEnd) {})
	lastLine := func(s string) string {
		lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
		return lines[len(lines)-1]
	}

	report := filepath.Join(dir, "replay.json")
	r := hvft(t, "", "replay", "--report", report, logPath)
	var res struct {
		Epochs  uint64 `json:"epochs"`
		Matched uint64 `json:"hashes_matched"`
	}
	rd, _ := os.ReadFile(report)
	json.Unmarshal(rd, &res)
	if r.code != 0 || res.Epochs != last || res.Matched != last {
		t.Fatalf("intact log of %d epochs: exit %d, report %s\n%s", last, r.code, rd, r.stderr)
	}

	flipHash := func(e *epoch.EpochEnd) { e.Hash[3] ^= 0x10 }
	poweroff, _, _ := forgeEnd(t, data, last, flipHash)
	middle, at, _ := forgeEnd(t, data, 3, flipHash)
	nohash, _, _ := forgeEnd(t, data, 5, func(e *epoch.EpochEnd) { e.Hash = [16]byte{} })
	damaged := append([]byte(nil), data...)
	damaged[at+10] ^= 0x01 // inside the end of epoch 3: its checksum fails
	for _, c := range []struct {
		name string
		data []byte
		want []string
	}{
		{"forged hash in the power-off epoch", poweroff, []string{fmt.Sprintf("epoch %d,", last), "state hash"}},
		{"forged hash in epoch 3", middle, []string{"epoch 3,", "state hash"}},
		{"no hash recorded for epoch 5", nohash, []string{"epoch 5,", "no state hash"}},
		{"damaged record after epoch 2", damaged, []string{"damaged", "after epoch 2", "checksum"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := hvft(t, "", "replay", writeFile(t, "bad.log", c.data))
			line := lastLine(r.stderr)
			if r.code != exitFailure || !strings.HasPrefix(line, "hvft: ") {
				t.Fatalf("exit %d, want %d with an hvft: error last\n%s", r.code, exitFailure, r.stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(line, w) {
					t.Errorf("the error does not say %q:\n%s", w, r.stderr)
				}
			}
		})
	}

	r = hvft(t, "", "replay", writeFile(t, "torn.log", data[:at+7]))
	if r.code != 0 || !strings.Contains(r.stderr, "torn") || !strings.Contains(r.stderr, "replayed 2 epochs") {
		t.Errorf("torn log: exit %d, want 0 with the torn tail reported\n%s", r.code, r.stderr)
	}
}

// TestReplayThenAnywhere: --then is accepted after the log's path too (the
// command-line parser stops at the first argument).
func TestReplayThenAnywhere(t *testing.T) {
	log := filepath.Join(t.TempDir(), "t.log")
	if r := hvft(t, "", "--log-level", "error", "run", "--record", log, "ticker", "--", "3", "1000"); r.code != 0 {
		t.Fatalf("run: exit %d\n%s", r.code, r.stderr)
	}
	for _, args := range [][]string{{"replay", "--then", log, log}, {"replay", log, "--then", log}, {"replay", log, "--then=" + log}} {
		r := hvft(t, "", args...)
		if r.code != 0 || !strings.Contains(r.stderr, "prefix of the first") {
			t.Fatalf("%v: exit %d\n%s", args, r.code, r.stderr)
		}
	}
}
