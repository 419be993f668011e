package replica

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"hvft/epoch"
	"hvft/vm"
	"hvft/vm/tlb"
)

// recordRun runs a guest live, recording to a log file, and returns the
// path, the run's epoch hashes and its final hash.
func recordRun(t *testing.T, guest string, args []string, disk bool) (string, []vm.Stop, string) {
	t.Helper()
	dir := t.TempDir()
	m := machine(t, guest, args, tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1})
	if disk {
		m.DiskPath = filepath.Join(dir, "disk.img")
		var err error
		if m.Config.DiskSectors, err = vm.DiskSectorsOf(m.DiskPath, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, guest+".log")
	w, err := CreateLog(path, HeaderFor(m, "run"), false)
	if err != nil {
		t.Fatal(err)
	}
	cpu, _ := cpuModel()
	var trail []vm.Stop
	r, err := RunAlone(context.Background(), m, vm.LiveConfig{Recorder: w, CPU: cpu, TimerJitter: 200e3},
		vm.RunOptions{OnEpoch: func(s vm.Stop) error { trail = append(trail, s); return nil }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return path, trail, r.Final.String()
}

func replayFile(t *testing.T, path string, until uint64) (*ReplayResult, *LoadedLog, error) {
	t.Helper()
	l, err := ReadLog(path)
	if err != nil {
		t.Fatal(err)
	}
	guest := strings.TrimSuffix(filepath.Base(path), ".log")
	if !strings.Contains("ticker tlbstress diskkv", guest) {
		guest = "ticker"
	}
	img := machine(t, guest, nil, tlb.Config{}).Image
	res, err := Replay(context.Background(), ReplayOptions{Log: l, Image: img, UntilEpoch: until,
		TLB: tlb.Config{PageSize: 16 << 10, Entries: 5, Policy: tlb.FIFO, Seed: 9}})
	return res, l, err
}

// TestRecordThenReplay: ticker, tlbstress and diskkv recorded live to a
// file, then replayed under another TLB: every epoch's hash matches (RAM
// included every other epoch) and the final hash is the live run's.
func TestRecordThenReplay(t *testing.T) {
	for _, c := range []struct {
		guest string
		args  []string
		disk  bool
	}{
		{"ticker", []string{"12", "1000"}, false},
		{"tlbstress", []string{"4", "1"}, false},
		{"diskkv", []string{"run", "20", "3", "4"}, true},
	} {
		t.Run(c.guest, func(t *testing.T) {
			path, trail, final := recordRun(t, c.guest, c.args, c.disk)
			res, l, err := replayFile(t, path, 0)
			if err != nil {
				t.Fatal(err)
			}
			// Matched counts comparisons with the log's hashes (see
			// TestReplayCountsOnlyComparedHashes): every epoch's here.
			if l.Torn != "" || res.Epochs != uint64(len(trail)) || res.Matched != uint64(len(trail)) {
				t.Fatalf("replayed %d epochs, %d hashes matched, torn %q; the live run had %d", res.Epochs, res.Matched, l.Torn, len(trail))
			}
			if res.FinalHash != final || !res.PowerOff || *res.ExitCode != 0 {
				t.Fatalf("final %s (live %s), powered off %v", res.FinalHash, final, res.PowerOff)
			}
		})
	}
}

// TestReplayCatchesDamage: a forged answer (checksum recomputed) is caught
// at its epoch by the state hash. A damaged record (one that fails its
// checksum, or is no record a log holds) is an error wherever it is: the
// replay checks the whole epochs before it and then fails, for the log
// claims more than it could check. A tail torn by a crash (the file ends
// inside a record, or in blocks a crash left as zeros) is no damage: the
// replay goes up to the last whole epoch and says so.
func TestReplayCatchesDamage(t *testing.T) {
	path, trail, _ := recordRun(t, "ticker", []string{"12", "1000"}, false)
	data, _ := os.ReadFile(path)
	l, _ := ReadLog(path)
	// Find the 6th random answer and the epoch it belongs to.
	n, idx := 0, 0
	for i, r := range l.Log.Records {
		if r.Answer != nil && r.Answer.Port == vm.PortRandom {
			if n++; n == 6 {
				idx = i
				break
			}
		}
	}
	var answerEpoch uint64
	for _, r := range l.Log.Records[idx:] {
		if r.End != nil {
			answerEpoch = r.End.Epoch
			break
		}
	}
	frame, _ := AppendLogRecord(nil, epoch.Message{Type: epoch.TypeAnswer, Answer: l.Log.Records[idx].Answer})
	at := bytes.Index(data, frame)
	if at < 0 {
		t.Fatal("answer frame not found in the file")
	}
	write := func(name string, parts ...[]byte) string {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, bytes.Join(parts, nil), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flip := func(off int) []byte {
		b := append([]byte(nil), data...)
		b[off] ^= 0x01
		return b
	}
	heartbeat, _ := AppendLogRecord(nil, epoch.Message{Type: epoch.TypeHeartbeat})
	zeros := make([]byte, 4096)

	damaged := []struct {
		name   string
		path   string
		epochs uint64 // whole epochs before the damage
	}{
		{"flipped byte in the middle", write("flipped.log", flip(at+20)), answerEpoch - 1},
		{"flipped byte in the last record", write("flipped-last.log", flip(len(data)-10)), uint64(len(trail)) - 1},
		{"a record no log holds", write("heartbeat.log", data[:at], heartbeat, data[at:]), answerEpoch - 1},
		{"zeros in the middle", write("zeros-middle.log", data[:at], zeros, data[at:]), answerEpoch - 1},
	}
	for _, c := range damaged {
		res, dl, err := replayFile(t, c.path, 0)
		if err == nil || !strings.Contains(err.Error(), "damaged") {
			t.Errorf("%s: replay error %v (torn %q), want one saying the log is damaged", c.name, err, dl.Torn)
			continue
		}
		if res == nil || res.Epochs != c.epochs || res.Matched != c.epochs {
			t.Errorf("%s: result %+v, want the %d whole epochs before the damage replayed and matched", c.name, res, c.epochs)
		}
		t.Logf("%s: %v", c.name, err)
	}
	// Damage stays with a merge, though the other log covers the epochs.
	dl, _ := ReadLog(damaged[0].path)
	if merged, _, err := MergeLogs(dl, l); err != nil || merged.Damage == "" || merged.Epochs != l.Epochs {
		t.Errorf("merge of a damaged log with an intact one: %v, damage %q", err, merged.Damage)
	}

	forged := *l.Log.Records[idx].Answer
	forged.Value ^= 0x40
	forgedFrame, _ := AppendLogRecord(nil, epoch.Message{Type: epoch.TypeAnswer, Answer: &forged})
	_, _, err := replayFile(t, write("forged.log", data[:at], forgedFrame, data[at+len(frame):]), 0)
	var div *vm.DivergenceError
	if !errors.As(err, &div) || div.At.Epoch != answerEpoch {
		t.Fatalf("forged answer in epoch %d: %v", answerEpoch, err)
	}

	torn := []struct {
		name string
		path string
	}{
		{"cut inside a record", write("torn.log", data[:at+len(frame)/2])},
		{"cut inside a record's length", write("torn-length.log", data[:at+2])},
		{"unwritten blocks after a crash", write("zero-tail.log", data[:at], zeros)},
		{"a record half written, then unwritten blocks", write("half-zero-tail.log", data[:at+len(frame)/2], zeros)},
	}
	for _, c := range torn {
		res, tl, err := replayFile(t, c.path, 0)
		if err != nil || tl.Torn == "" || res.Epochs != answerEpoch-1 || res.Matched != answerEpoch-1 || res.PowerOff {
			t.Errorf("%s: err %v, torn %q, result %+v (want %d epochs)", c.name, err, tl.Torn, res, answerEpoch-1)
		}
		t.Logf("%s: %s", c.name, tl.Torn)
	}
	res, _, err := replayFile(t, path, 4)
	if err != nil || res.Epochs != 4 || res.Matched != 4 || res.FinalHash == trail[len(trail)-1].Hash.String() {
		t.Fatalf("--until-epoch 4: %v, %+v", err, res)
	}
}

// logFrames splits a log file into its header and its frames, each frame
// as the bytes on disk and the message it decodes to.
func logFrames(t *testing.T, data []byte) (header []byte, raw [][]byte, msgs []epoch.Message) {
	t.Helper()
	header, raw, msgs, err := SplitLog(data)
	if err != nil {
		t.Fatal(err)
	}
	return header, raw, msgs
}

// editEnd copies the log at path with the end of epoch e changed by edit
// (its checksum recomputed: a forgery, not damage) and returns the copy.
func editEnd(t *testing.T, path string, e uint64, edit func(*epoch.EpochEnd)) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	header, raw, msgs := logFrames(t, data)
	out := append([]byte(nil), header...)
	found := false
	for i, m := range msgs {
		if m.Type == epoch.TypeEpochEnd && m.EpochEnd.Epoch == e {
			edit(m.EpochEnd)
			if out, err = AppendLogRecord(out, m); err != nil {
				t.Fatal(err)
			}
			found = true
			continue
		}
		out = append(out, raw[i]...)
	}
	if !found {
		t.Fatalf("the log has no end of epoch %d", e)
	}
	p := filepath.Join(t.TempDir(), "edited.log")
	if err := os.WriteFile(p, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestReplayCatchesAForgedHashInAnyEpoch: a forged state hash is a
// divergence at its epoch wherever it is, the power-off epoch included
// (whose divergence a powered-off guest once excused), and the epochs
// before it are the ones that matched.
func TestReplayCatchesAForgedHashInAnyEpoch(t *testing.T) {
	path, trail, _ := recordRun(t, "ticker", []string{"12", "1000"}, false)
	last := uint64(len(trail))
	for _, e := range []uint64{1, 3, 4, last} {
		p := editEnd(t, path, e, func(w *epoch.EpochEnd) { w.Hash[0] ^= 1 })
		res, _, err := replayFile(t, p, 0)
		var div *vm.DivergenceError
		if !errors.As(err, &div) || div.At.Epoch != e || !strings.Contains(div.Detail, "state hash") {
			t.Errorf("hash of epoch %d of %d forged: replay error %v, want a state-hash divergence at epoch %d", e, last, err, e)
			continue
		}
		if res == nil || res.Matched != e-1 {
			t.Errorf("hash of epoch %d forged: result %+v, want %d hashes matched", e, res, e-1)
		}
	}
}

// TestReplayCountsOnlyComparedHashes: Matched counts recorded state hashes
// compared with the replay's and found equal, not the replay's own. An
// epoch end recorded without a hash, or hashed over other things than the
// replay's (RAM or not), cannot be compared: that is a divergence at its
// epoch, never a match.
func TestReplayCountsOnlyComparedHashes(t *testing.T) {
	path, trail, _ := recordRun(t, "ticker", []string{"12", "1000"}, false)
	for _, c := range []struct {
		name  string
		epoch uint64
		edit  func(*epoch.EpochEnd)
	}{
		{"no hash", 3, func(w *epoch.EpochEnd) { w.Hash = [16]byte{} }},
		{"RAM hashed flag flipped", 3, func(w *epoch.EpochEnd) { w.RAMHashed = !w.RAMHashed }},
		{"power-off epoch without a hash", uint64(len(trail)), func(w *epoch.EpochEnd) { w.Hash = [16]byte{} }},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, _, err := replayFile(t, editEnd(t, path, c.epoch, c.edit), 0)
			var div *vm.DivergenceError
			if !errors.As(err, &div) || div.At.Epoch != c.epoch {
				t.Fatalf("replay error %v (result %+v), want a divergence at epoch %d of %d", err, res, c.epoch, len(trail))
			}
			if res.Matched != c.epoch-1 {
				t.Errorf("%d hashes matched, want %d: the uncompared epoch was counted", res.Matched, c.epoch-1)
			}
		})
	}
}

// TestEveryBitFlipIsRefusedAndEveryTruncationReplays: every byte of a log
// is under a checksum, so 1,000 single-bit flips at random offsets (seeded)
// are each refused: the reader fails or reports damage, never a torn tail
// and never a clean log; and 100 truncations at random offsets after the
// header each replay their whole epochs with no error, noting a torn tail
// unless the cut falls exactly after an epoch's end.
func TestEveryBitFlipIsRefusedAndEveryTruncationReplays(t *testing.T) {
	path, _, _ := recordRun(t, "ticker", []string{"12", "1000"}, false)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	header, _, _, err := SplitLog(data)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(20, 26))
	flips := 1000
	if testing.Short() {
		flips = 200
	}
	for i := range flips {
		off, bit := rng.IntN(len(data)), byte(1)<<rng.IntN(8)
		b := append([]byte(nil), data...)
		b[off] ^= bit
		l, err := ReadLogFrom(bytes.NewReader(b), "flipped")
		switch {
		case err != nil:
		case l.Damage != "" && l.Torn == "":
		default:
			t.Fatalf("flip %d, byte %d bit %#x: accepted (torn %q, %d epochs)", i, off, bit, l.Torn, l.Epochs)
		}
	}
	whole, err := ReadLogFrom(bytes.NewReader(data), "whole")
	if err != nil || whole.Torn != "" || whole.Damage != "" {
		t.Fatalf("the intact log: %v, torn %q, damage %q", err, whole.Torn, whole.Damage)
	}
	img := machine(t, "ticker", nil, tlb.Config{}).Image
	cuts := 100
	if testing.Short() {
		cuts = 20
	}
	for i := range cuts {
		cut := len(header) + rng.IntN(len(data)-len(header))
		l, err := ReadLogFrom(bytes.NewReader(data[:cut]), "truncated")
		if err != nil || l.Damage != "" {
			t.Fatalf("cut %d at byte %d: %v, damage %q", i, cut, err, l.Damage)
		}
		res, err := Replay(context.Background(), ReplayOptions{Log: l, Image: img, TLB: tlb.Config{PageSize: 16 << 10, Entries: 5, Policy: tlb.FIFO, Seed: 9}})
		if err != nil || res.Epochs != l.Epochs || res.Matched != l.Epochs {
			t.Fatalf("cut %d at byte %d: replay %v, %+v, want its %d whole epochs matched", i, cut, err, res, l.Epochs)
		}
		if l.Torn == "" && len(l.Log.Records) > 0 && cut != len(data) {
			if end := l.Log.Records[len(l.Log.Records)-1].End; end == nil {
				t.Fatalf("cut %d at byte %d: no torn tail noted, and the log does not end on an epoch's end", i, cut)
			}
		}
	}
}
