package replica

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"go.uber.org/zap"

	"hvft/epoch"
	"hvft/vm"
	"hvft/vm/tlb"
)

// FuzzReadLog: no log file makes the reader panic, what it returns always
// ends on a whole epoch, and a tail is either torn or damaged, never both.
func FuzzReadLog(f *testing.F) {
	path, _, _ := recordRunF(f)
	data, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add(data[:len(data)/2])
	f.Add([]byte(logMagic + "\x02\x00\x00\x00{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := ReadLogFrom(bytes.NewReader(data), "fuzz")
		if err != nil {
			return
		}
		if n := len(l.Log.Records); n > 0 && l.Log.Records[n-1].End == nil {
			t.Fatal("log does not end on an epoch end")
		}
		if l.Torn != "" && l.Damage != "" {
			t.Fatalf("torn (%s) and damaged (%s)", l.Torn, l.Damage)
		}
	})
}

// recordRunF records a short ticker run for seeding.
func recordRunF(f *testing.F) (string, int, string) {
	dir := f.TempDir()
	m := machineF(f)
	path := dir + "/seed.log"
	w, err := CreateLog(path, HeaderFor(m, "run"), false)
	if err != nil {
		f.Fatal(err)
	}
	ends := []uint64{1, 2}
	for _, e := range ends {
		w.RecordAnswer(vm.Answer{Seq: e, Kind: vm.KindIn, Port: 0x520, Size: 4, Value: e * 7})
		w.RecordEpochEnd(vm.EpochEnd{Epoch: e, Clock: e * 100, RIP: 0x100000, Reason: vm.StopLimit, Answers: e})
	}
	w.Close()
	return path, len(ends), ""
}

func machineF(f *testing.F) Machine { return machine(f, "ticker", nil, tlb.Config{}) }

// FuzzHandshake: whatever a peer sends first, the primary's side of the
// handshake answers with an error or a reason, never a panic, and never
// accepts anything but a matching hello.
func FuzzHandshake(f *testing.F) {
	m := machineF(f)
	want := m.wireConfig()
	good, _ := epoch.AppendFrame(nil, epoch.Message{Type: epoch.TypeHello, Hello: &epoch.Hello{Config: want}})
	other := want
	other.RAMSize *= 2
	bad, _ := epoch.AppendFrame(nil, epoch.Message{Type: epoch.TypeHello, Hello: &epoch.Hello{Config: other}})
	confirm, _ := epoch.AppendFrame(nil, epoch.Message{Type: epoch.TypeHeartbeat})
	f.Add(good)
	f.Add(append(append([]byte{}, good...), confirm...))
	f.Add(bad)
	f.Add([]byte("GET / HTTP/1.0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		go func() {
			// The peer says its piece and hangs up: the handshake sees the
			// bytes, then the end of the stream, never a wait.
			b.SetDeadline(time.Now().Add(100 * time.Millisecond))
			b.Write(data)
			b.Close()
		}()
		go io.Copy(io.Discard, b) // the peer reads the welcome, if it comes
		p := newPrimary(PrimaryOptions{Options: Options{Machine: m, Log: zap.NewNop()}})
		p.awaiting = true
		// Every input ends in milliseconds: a slow one past -fuzztime
		// made the fuzzer report "context deadline exceeded" under load.
		p.handshake = 100 * time.Millisecond
		p.admit(context.Background(), a, want)
		var l *Link
		select {
		case l = <-p.first:
		default:
		}
		if l != nil {
			defer l.Close()
			if !bytes.HasPrefix(data, append(append([]byte{}, good...), confirm...)) {
				t.Fatalf("accepted a peer that did not send the matching hello and its confirmation: %q", data)
			}
		}
	})
}
