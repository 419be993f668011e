package vm

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"hvft/vm/tlb"
)

// TestSnapshotRestoreContinuesTheRun: ticker replayed to the middle of its
// log, snapshotted, and restored into a fresh machine with another TLB,
// finishes the log with the live run's hash trail and final hash. Ticker is
// used because its state includes devices (timer, PIC in service, the
// clock latch, the halt) as well as CPU and RAM.
func TestSnapshotRestoreContinuesTheRun(t *testing.T) {
	log, live := recordTicker(t, "10")
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	const cut = 6
	src := NewLogSource(log)
	cfg := Config{RAMSize: DefaultRAMSize, TLB: tlbConfig(64<<10, 8, tlb.Random, 3), Args: []string{"ticker", "10", "1000"}}
	a, err := New(cfg, image(t, "ticker"), NewReplay(ctx, src), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for i := 0; i < cut; i++ {
		if _, err := a.RunEpoch(ctx, 20_000); err != nil {
			t.Fatal(err)
		}
	}
	var snap bytes.Buffer
	if err := a.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	want, _ := a.Hash()

	cfg.TLB = tlbConfig(16<<10, 5, tlb.LRU, 4)
	b, err := New(cfg, image(t, "ticker"), NewReplay(ctx, src), nil) // src continues after epoch `cut`
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Restore(bytes.NewReader(snap.Bytes())); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.Hash(); got != want {
		t.Fatalf("restored hash %v, snapshotted %v", got, want)
	}
	var ends []Stop
	res, err := b.Run(ctx, RunOptions{EpochLength: 20_000, MaxEpochs: 1000, OnEpoch: func(s Stop) error { ends = append(ends, s); return nil }})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("restored machine: exit %d, %v", res.ExitCode, err)
	}
	if len(ends) != len(live.ends)-cut {
		t.Fatalf("restored machine ran %d epochs, want %d", len(ends), len(live.ends)-cut)
	}
	for i, s := range ends {
		if w := live.ends[cut+i]; s.Hash != w.Hash || s.Epoch != w.Epoch {
			t.Fatalf("epoch %d: hash %v, live %v", s.Epoch, s.Hash, w.Hash)
		}
	}
	if final, _ := b.Hash(); final != live.final {
		t.Errorf("final hash %v, live %v", final, live.final)
	}
}

func TestRestoreRejectsBadSnapshots(t *testing.T) {
	cfg := Config{TLB: tlbConfig(64<<10, 8, tlb.Random, 3), Args: []string{"hello"}}
	m, err := New(cfg, image(t, "hello"), NewReplay(context.Background(), NewLogSource(&Log{})), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var snap bytes.Buffer
	if err := m.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	good := snap.Bytes()
	bad := map[string][]byte{
		"empty":     nil,
		"magic":     append([]byte("NOTASNAP"), good[8:]...),
		"truncated": good[:len(good)/2],
		"version":   append(append(append([]byte{}, good[:8]...), 9, 0, 0, 0), good[12:]...),
	}
	small := Config{RAMSize: 8 << 20, TLB: cfg.TLB, Args: cfg.Args}
	other, err := New(small, image(t, "hello"), NewReplay(context.Background(), NewLogSource(&Log{})), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Restore(bytes.NewReader(good)); err == nil || !strings.Contains(err.Error(), "RAM") {
		t.Errorf("restore into a machine with other RAM: %v", err)
	}
	for name, data := range bad {
		if err := m.Restore(bytes.NewReader(data)); err == nil {
			t.Errorf("%s snapshot accepted", name)
		}
	}
}
