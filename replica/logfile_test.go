package replica

import (
	"bytes"
	"context"
	"errors"
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
			if l.Torn != "" || res.Epochs != uint64(len(trail)) || res.Matched != uint64(len(trail)) {
				t.Fatalf("replayed %d epochs, %d hashes matched, torn %q; the live run had %d", res.Epochs, res.Matched, l.Torn, len(trail))
			}
			if res.FinalHash != final || !res.PowerOff || *res.ExitCode != 0 {
				t.Fatalf("final %s (live %s), powered off %v", res.FinalHash, final, res.PowerOff)
			}
		})
	}
}

// TestReplayCatchesDamage: a flipped byte fails its frame's checksum and
// the replay stops after the last whole epoch before it, saying so; a
// forged answer (checksum recomputed) is caught at its epoch by the state
// hash; a torn file replays up to its last whole epoch.
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
	frame, _ := epoch.AppendFrame(nil, epoch.Message{Type: epoch.TypeAnswer, Answer: ptr(toWireAnswer(*l.Log.Records[idx].Answer))})
	at := bytes.Index(data, frame)
	if at < 0 {
		t.Fatal("answer frame not found in the file")
	}

	flipped := append([]byte(nil), data...)
	flipped[at+20] ^= 0x01
	p1 := filepath.Join(t.TempDir(), "flipped.log")
	os.WriteFile(p1, flipped, 0o644)
	res, fl, err := replayFile(t, p1, 0)
	if err != nil || !strings.Contains(fl.Torn, "damaged or torn after epoch") || res.Epochs != answerEpoch-1 {
		t.Fatalf("flipped byte: err %v, torn %q, replayed %d epochs, want %d", err, fl.Torn, res.Epochs, answerEpoch-1)
	}

	forged := *l.Log.Records[idx].Answer
	forged.Value ^= 0x40
	forgedFrame, _ := epoch.AppendFrame(nil, epoch.Message{Type: epoch.TypeAnswer, Answer: ptr(toWireAnswer(forged))})
	p2 := filepath.Join(t.TempDir(), "forged.log")
	os.WriteFile(p2, append(append(append([]byte(nil), data[:at]...), forgedFrame...), data[at+len(frame):]...), 0o644)
	_, _, err = replayFile(t, p2, 0)
	var div *vm.DivergenceError
	if !errors.As(err, &div) || div.At.Epoch != answerEpoch {
		t.Fatalf("forged answer in epoch %d: %v", answerEpoch, err)
	}

	p3 := filepath.Join(t.TempDir(), "torn.log")
	os.WriteFile(p3, data[:at+len(frame)/2], 0o644)
	res, tl, err := replayFile(t, p3, 0)
	if err != nil || tl.Torn == "" || res.Epochs != answerEpoch-1 || res.PowerOff {
		t.Fatalf("torn log: err %v, torn %q, %d epochs (want %d)", err, tl.Torn, res.Epochs, answerEpoch-1)
	}
	res, _, err = replayFile(t, path, 4)
	if err != nil || res.Epochs != 4 || res.Matched != 4 || res.FinalHash == trail[len(trail)-1].Hash.String() {
		t.Fatalf("--until-epoch 4: %v, %+v", err, res)
	}
}

func ptr[T any](v T) *T { return &v }
