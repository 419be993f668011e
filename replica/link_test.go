package replica

import (
	"net"
	"testing"
	"time"

	"hvft/epoch"
)

// TestLinkReadsWhatThePeerSentBeforeItsReset: the peer sends a frame
// (a backup's divergence report) and closes with our frames unread, so
// its kernel resets the connection; our next write fails. The frame it
// sent before is still read. The link's writer used to close the
// connection on a failed write, and the report was lost ("use of closed
// network connection"): the primary then said nothing of the divergence.
func TestLinkReadsWhatThePeerSentBeforeItsReset(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialed := make(chan net.Conn, 1)
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Error(err)
		}
		dialed <- c
	}()
	ours, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	peer := <-dialed
	if peer == nil {
		t.FailNow()
	}
	l := newLink(ours)
	defer l.Close()
	// Our heartbeat reaches the peer, which never reads it.
	if err := l.Send(epoch.Message{Type: epoch.TypeHeartbeat}); err != nil {
		t.Fatal(err)
	}
	if err := l.Drain(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	report := epoch.Message{Type: epoch.TypeDivergence, Divergence: &epoch.Divergence{Epoch: 8, Detail: "state hash differs"}}
	frame, err := epoch.AppendFrame(nil, report)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := peer.Write(frame); err != nil {
		t.Fatal(err)
	}
	peer.(*net.TCPConn).SetLinger(0) // close with unread data: a reset
	peer.Close()
	// Write until our side has seen the reset (bounded by the count).
	failed := false
	for i := 0; i < 1000 && !failed; i++ {
		if err := l.Send(epoch.Message{Type: epoch.TypeHeartbeat}); err != nil {
			failed = true
			break
		}
		failed = l.Drain(10*time.Second) != nil
	}
	if !failed {
		t.Fatal("no write failed after the peer reset the connection")
	}
	m, err := l.Recv()
	if err != nil {
		t.Fatalf("the peer's report before its reset: %v", err)
	}
	if m.Type != epoch.TypeDivergence || m.Divergence.Epoch != 8 {
		t.Fatalf("read %v, want the divergence report", m.Type)
	}
}
