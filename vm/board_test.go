package vm

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func TestPICDeliversLowestUnmaskedNotInService(t *testing.T) {
	b := NewBoard(16<<20, 0)
	if _, ok := b.deliverable(); ok {
		t.Fatal("deliverable at reset")
	}
	for _, irq := range []uint8{IRQConsoleRX, IRQTimer} {
		if err := b.raise(Event{IRQ: irq}); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := b.deliverable(); ok {
		t.Fatal("masked IRQs deliverable")
	}
	b.out(PortPICMask, ^uint32(1<<IRQConsoleRX|1<<IRQTimer))
	irq, ok := b.deliverable()
	if !ok || irq != IRQTimer {
		t.Fatalf("deliverable %d %v, want timer", irq, ok)
	}
	b.accept(irq)
	if b.inLocal(PortPICInService) != 1<<IRQTimer || b.inLocal(PortPICPending) != 1<<IRQConsoleRX {
		t.Fatalf("after accept: in service %#x pending %#x", b.PICInService, b.PICPending)
	}
	b.raise(Event{IRQ: IRQTimer})
	if irq, _ := b.deliverable(); irq != IRQConsoleRX {
		t.Fatalf("timer in service, but %d deliverable", irq)
	}
	b.out(PortPICEOI, IRQTimer)
	if irq, _ := b.deliverable(); irq != IRQTimer {
		t.Fatalf("after EOI, %d deliverable, want timer", irq)
	}
	if err := b.raise(Event{IRQ: NumIRQs}); err == nil {
		t.Error("event for a missing IRQ line accepted")
	}
}

func TestConsoleFIFOAndClockLatch(t *testing.T) {
	b := NewBoard(16<<20, 0)
	if b.inLocal(PortConsoleRX) != rxEmpty {
		t.Fatal("empty FIFO does not read empty")
	}
	b.raise(Event{IRQ: IRQConsoleRX, Data: []byte("hi")})
	if b.inLocal(PortConsoleRXAvail) != 2 {
		t.Fatal("avail != 2")
	}
	var got []byte
	for b.inLocal(PortConsoleRX) != rxEmpty {
		got = append(got, byte(b.completeIn(PortConsoleRX, b.inLocal(PortConsoleRX))))
	}
	if string(got) != "hi" {
		t.Fatalf("read %q", got)
	}
	if err := b.raise(Event{IRQ: IRQConsoleRX, Data: make([]byte, RXCapacity+1)}); err == nil {
		t.Error("FIFO overflow accepted")
	}
	if v := b.completeIn(PortClockLo, 0x1234_0000_5678); v != 0x5678 || b.inLocal(PortClockHi) != 0x1234 {
		t.Fatalf("clock lo %#x latch %#x", v, b.ClockLatch)
	}
	enc := b.encode(nil)
	back, rest, err := decodeBoard(enc)
	if err != nil || len(rest) != 0 || !bytes.Equal(back.encode(nil), enc) {
		t.Fatalf("board round trip: %v rest %d", err, len(rest))
	}
	for i := range enc {
		if _, _, err := decodeBoard(enc[:i]); err == nil {
			t.Fatalf("truncated board state (%d of %d bytes) accepted", i, len(enc))
		}
	}
}

// TestLiveHaltThatCannotWake: a guest halted with nothing that could raise
// an interrupt it accepts is an error, not a hang.
func TestLiveHaltThatCannotWake(t *testing.T) {
	live, err := NewLive(LiveConfig{CPU: sharedCPU(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, w := range []Wake{
		{Halted: true, Mask: 0, Room: RXCapacity},             // interrupts off
		{Halted: true, Mask: 1 << IRQTimer, Room: RXCapacity}, // timer never programmed
		{Halted: true, Mask: 1 << IRQConsoleRX, Room: RXCapacity},
	} {
		_, err := live.EndEpoch(ctx, &EpochEnd{Epoch: 1, RIP: 0x1234}, w)
		if err == nil || !strings.Contains(err.Error(), "can never wake") {
			t.Errorf("wake %+v: err %v", w, err)
		}
	}
}

// TestLiveDeliversInputAndTicks: console input and timer ticks arrive as
// boundary events; a halt waits for them, bounded by its context.
func TestLiveDeliversInputAndTicks(t *testing.T) {
	live, err := NewLive(LiveConfig{CPU: sharedCPU(t), Input: strings.NewReader("abc")})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	evs, err := live.EndEpoch(ctx, &EpochEnd{Epoch: 1}, Wake{Halted: true, Mask: 1 << IRQConsoleRX, Room: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].IRQ != IRQConsoleRX || string(evs[0].Data) != "ab" {
		t.Fatalf("events %+v, want 2 bytes of input (the room left)", evs)
	}
	b := NewBoard(16<<20, 0)
	b.out(PortTimerPeriod, 100)
	live.Out(Output{}, EffectTimer, b)
	evs, err = live.EndEpoch(ctx, &EpochEnd{Epoch: 2}, Wake{Halted: true, Mask: 1 << IRQTimer, Room: 0})
	if err != nil || !hasIRQ(evs, IRQTimer) {
		t.Fatalf("events %+v err %v, want a timer tick", evs, err)
	}
	short, cancelShort := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancelShort()
	b.out(PortTimerPeriod, 0)
	live.Out(Output{}, EffectTimer, b)
	live.mu.Lock()
	live.timerOn = true // pretend a device could still wake it, so it waits
	live.mu.Unlock()
	if _, err := live.EndEpoch(short, &EpochEnd{Epoch: 3}, Wake{Halted: true, Mask: 1 << IRQTimer}); err == nil {
		t.Error("halt with no event returned without error before its context ended")
	}
}
