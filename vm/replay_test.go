package vm

import (
	"context"

	"errors"
	"hvft/guests"
	"testing"
	"time"

	"hvft/vm/tlb"
)

// recordTicker runs ticker live with jittered ticks and returns its log.
func recordTicker(t *testing.T, ticks string) (*Log, runResult) {
	t.Helper()
	log := &Log{}
	var out consoleBuffer
	live, err := NewLive(LiveConfig{Console: &out, Recorder: log, CPU: sharedCPU(t), TimerJitter: 300 * time.Microsecond})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{TLB: tlbConfig(64<<10, 32, tlb.Random, 11)}
	r := runGuest(t, "ticker", []string{ticks, "1000"}, cfg, live, nil, 20_000)
	r.out = out.b
	if r.err != nil || r.res.ExitCode != 0 {
		t.Fatalf("live ticker: exit %d, %v\n%s", r.res.ExitCode, r.err, r.out)
	}
	return log, r
}

func replayLog(t *testing.T, log *Log, ticks string, cfg Config) runResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	return runGuest(t, "ticker", []string{ticks, "1000"}, cfg, NewReplay(ctx, NewLogSource(log)), nil, 20_000)
}

// TestRecordReplayTicker: ticker's answers and interrupt points recorded
// live, then replayed under another TLB size, policy and seed, give the same
// per-epoch hash trail (RAM included) and final hash, with a different miss
// count.
func TestRecordReplayTicker(t *testing.T) {
	log, live := recordTicker(t, "12")
	if len(live.ends) < 12 || live.stats.Interrupts != 12 || live.stats.Answers == 0 {
		t.Fatalf("live run too small to mean anything: %d epochs, %d interrupts, %d answers", len(live.ends), live.stats.Interrupts, live.stats.Answers)
	}
	if err := guests.CheckTicker(string(live.out), 12); err != nil {
		t.Fatalf("live console: %v\n%s", err, live.out)
	}
	rep := replayLog(t, log, "12", Config{TLB: tlbConfig(16<<10, 4, tlb.FIFO, 99)})
	if rep.err != nil {
		t.Fatalf("replay: %v", rep.err)
	}
	if len(rep.out) != 0 {
		t.Errorf("replay wrote %d console bytes; a replica's outputs must be discarded", len(rep.out))
	}
	if len(rep.ends) != len(live.ends) {
		t.Fatalf("replay ran %d epochs, live %d", len(rep.ends), len(live.ends))
	}
	for i := range live.ends {
		if rep.ends[i].Hash != live.ends[i].Hash || rep.ends[i].Clock != live.ends[i].Clock {
			t.Fatalf("epoch %d: replay hash %v clock %d, live %v clock %d", i+1, rep.ends[i].Hash, rep.ends[i].Clock, live.ends[i].Hash, live.ends[i].Clock)
		}
	}
	if rep.final != live.final {
		t.Errorf("final hash: replay %v, live %v", rep.final, live.final)
	}
	if rep.stats.TLBMisses == live.stats.TLBMisses {
		t.Errorf("miss counts equal (%d): the replay's TLB did not differ", rep.stats.TLBMisses)
	}
	t.Logf("%d epochs, %d answers, misses live %d replay %d, final %v", len(live.ends), live.stats.Answers, live.stats.TLBMisses, rep.stats.TLBMisses, live.final)
}

// TestReplayCatchesAlteredAnswer is the negative control: one altered
// answer from the clock or random source is caught at the end of the epoch
// that used it; one altered deterministic answer (the clock's latched high
// half, which the board itself knows) is caught at the IN.
func TestReplayCatchesAlteredAnswer(t *testing.T) {
	log, _ := recordTicker(t, "8")
	epochOf := func(idx int) uint64 {
		for _, r := range log.Records[idx:] {
			if r.End != nil {
				return r.End.Epoch
			}
		}
		t.Fatal("answer after the last epoch end")
		return 0
	}
	find := func(port uint32, nth int) int {
		for i, r := range log.Records {
			if r.Answer != nil && r.Answer.Kind == KindIn && r.Answer.Port == port {
				if nth == 0 {
					return i
				}
				nth--
			}
		}
		t.Fatalf("no IN from port %#x in the log", port)
		return 0
	}
	for _, c := range []struct {
		name string
		port uint32
	}{{"random", PortRandom}, {"clock", PortClockLo}, {"clock-high-latch", PortClockHi}} {
		t.Run(c.name, func(t *testing.T) {
			altered := &Log{Records: append([]Record(nil), log.Records...)}
			idx := find(c.port, 3)
			a := *altered.Records[idx].Answer
			a.Value ^= 0x10
			altered.Records[idx] = Record{Answer: &a}
			rep := replayLog(t, altered, "8", Config{TLB: tlbConfig(64<<10, 8, tlb.Random, 5)})
			var div *DivergenceError
			if !errors.As(rep.err, &div) {
				t.Fatalf("altered answer %d not caught: err %v", a.Seq, rep.err)
			}
			if want := epochOf(idx); div.At.Epoch != want {
				t.Errorf("caught at epoch %d, want %d (the epoch of answer %d): %v", div.At.Epoch, want, a.Seq, div)
			}
			t.Logf("caught: %v", div)
		})
	}
}

// TestReplayRefusesExhaustedLog: a log cut short is reported, not invented.
func TestReplayRefusesExhaustedLog(t *testing.T) {
	log, _ := recordTicker(t, "4")
	short := &Log{Records: log.Records[:len(log.Records)/2]}
	rep := replayLog(t, short, "4", Config{TLB: tlbConfig(64<<10, 32, tlb.Random, 5)})
	if !errors.Is(rep.err, ErrLogExhausted) {
		t.Fatalf("err %v, want ErrLogExhausted", rep.err)
	}
}
