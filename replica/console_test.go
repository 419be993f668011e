package replica

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"hvft/epoch"
)

func consoleBytes(text string, from uint64) []epoch.Output {
	var outs []epoch.Output
	for i := 0; i < len(text); i++ {
		outs = append(outs, epoch.Output{Kind: epoch.Console, Seq: from + uint64(i), Value: uint32(text[i])})
	}
	return outs
}

// TestStaleConsoleWriteRewritesInPlace: a console file is written by
// position (output n at offset n-1), so a stale replica's late write of
// outputs the file already holds rewrites the same bytes instead of adding
// them again, and a chunk (a Linux program's write) lands the same way.
func TestStaleConsoleWriteRewritesInPlace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.txt")
	old := NewFileSink(path, true)
	if err := old.Emit(consoleBytes("tick 1\n", 1)); err != nil {
		t.Fatal(err)
	}
	// The new primary opens the file after a failover and goes on.
	cur := NewFileSink(path, false)
	text := "tick 1\ntick 2\ntick 3\n"
	if err := cur.Emit(consoleBytes(text, 1)); err != nil {
		t.Fatal(err)
	}
	// The old primary, resumed, writes what it had released before it
	// was fenced: bytes 8..14, which the file holds.
	if err := old.Emit(consoleBytes(text[7:14], 8)); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != text {
		t.Fatalf("console %q, want %q", got, text)
	}
	chunk := "tick 4\n"
	if err := cur.Emit([]epoch.Output{{Kind: epoch.Console, Seq: uint64(len(text) + len(chunk)), Data: []byte(chunk)}}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != text+chunk {
		t.Fatalf("console %q after a chunk", got)
	}
}

// TestTakeoverOnAnotherConsoleFileFails: a backup whose --console-out is
// not the primary's file (another host's, so the handshake could not
// tell) finds it shorter than the output it goes on from. That is an
// error naming the cause, not a silent loss of everything after the
// failover; its own later gap is reported as a gap.
func TestTakeoverOnAnotherConsoleFileFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.txt")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s := NewFileSink(path, false)
	err := s.Emit(consoleBytes("tick 9\n", 200))
	if err == nil || !strings.Contains(err.Error(), "not the file the primary wrote") {
		t.Fatalf("a takeover 199 bytes past the file's end: %v", err)
	}
	if err := s.Emit(consoleBytes("tick 1\n", 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Emit(consoleBytes("x", 20)); err == nil || !strings.Contains(err.Error(), "would leave a gap") {
		t.Fatalf("a gap after writing: %v", err)
	}
}
