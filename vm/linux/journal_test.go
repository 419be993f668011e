package linux

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// journalWorld is one replicated run's outside world: a root, a journal
// directory, and the run's AT_RANDOM, which names its journal.
type journalWorld struct {
	root, dir string
	random    []byte
}

func newJournalWorld(t *testing.T) *journalWorld {
	t.Helper()
	return &journalWorld{root: t.TempDir(), dir: t.TempDir(), random: bytes.Repeat([]byte{9}, 16)}
}

// host is a replica's host in w: the primary's, or, made again, that of
// the backup that takes over from it, over the same root and journal.
func (w *journalWorld) host(t *testing.T) *Host {
	t.Helper()
	h, err := NewHost(w.root, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.JournalDir = w.dir
	if err := h.EnableJournal(); err != nil {
		t.Fatal(err)
	}
	h.SetRunID(w.random)
	t.Cleanup(func() { h.Close() })
	return h
}

func (w *journalWorld) path(name string) string { return filepath.Join(w.root, name) }

func (w *journalWorld) write(t *testing.T, name, data string) {
	t.Helper()
	if err := os.WriteFile(w.path(name), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (w *journalWorld) read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(w.path(name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (w *journalWorld) mkdir(t *testing.T, name string) {
	t.Helper()
	if err := os.Mkdir(w.path(name), 0o755); err != nil {
		t.Fatal(err)
	}
}

// list is the names in a directory under the root, sorted.
func (w *journalWorld) list(t *testing.T, name string) []string {
	t.Helper()
	ents, err := os.ReadDir(w.path(name))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func (w *journalWorld) wantList(t *testing.T, dir string, want ...string) {
	t.Helper()
	if got := w.list(t, dir); !slices.Equal(got, want) {
		t.Fatalf("%s holds %q, want %q", dir, got, want)
	}
}

// journaledCase is one unrepeatable call: the world before it, the call,
// its answer, and the world after it happened once.
type journaledCase struct {
	name  string
	setup func(t *testing.T, w *journalWorld)
	call  Call
	want  int64
	after func(t *testing.T, w *journalWorld)
}

func journaledCases() []journaledCase {
	create := uint64(oCreat | oExcl)
	return []journaledCase{
		{"open O_CREAT|O_EXCL", nil, Call{Op: OpOpen, Path: "/excl", Flags: create | oWronly, Mode: 0o644}, 0,
			func(t *testing.T, w *journalWorld) { w.wantList(t, "/", "excl") }},
		{"mkstemp", func(t *testing.T, w *journalWorld) { w.mkdir(t, "tmp") },
			Call{Op: OpOpen, Path: "/tmp/f.a1B2c3", Flags: create | oRdwr, Mode: 0o600}, 0,
			func(t *testing.T, w *journalWorld) {
				w.wantList(t, "/tmp", "f.a1B2c3")
				if st, err := os.Stat(w.path("tmp/f.a1B2c3")); err != nil || st.Mode().Perm() != 0o600 {
					t.Fatalf("the temporary file: %v %v", st, err)
				}
			}},
		{"lock file taken", func(t *testing.T, w *journalWorld) { w.write(t, "lock", "held") },
			Call{Op: OpOpen, Path: "/lock", Flags: create | oWronly, Mode: 0o644}, -EEXIST,
			func(t *testing.T, w *journalWorld) {
				if w.read(t, "lock") != "held" {
					t.Fatal("the lock file changed")
				}
			}},
		{"rename over an existing file", func(t *testing.T, w *journalWorld) { w.write(t, "new", "new"); w.write(t, "current", "old") },
			Call{Op: OpRename, Path: "/new", Path2: "/current"}, 0,
			func(t *testing.T, w *journalWorld) {
				w.wantList(t, "/", "current")
				if got := w.read(t, "current"); got != "new" {
					t.Fatalf("the target holds %q, want the renamed file's %q", got, "new")
				}
			}},
		{"rename of a missing file", func(t *testing.T, w *journalWorld) { w.write(t, "current", "old") },
			Call{Op: OpRename, Path: "/gone", Path2: "/current"}, -ENOENT,
			func(t *testing.T, w *journalWorld) {
				if w.read(t, "current") != "old" {
					t.Fatal("the target changed")
				}
			}},
		{"unlink", func(t *testing.T, w *journalWorld) { w.write(t, "victim", "") },
			Call{Op: OpUnlink, Path: "/victim"}, 0, func(t *testing.T, w *journalWorld) { w.wantList(t, "/") }},
		{"unlink of a missing file", nil, Call{Op: OpUnlink, Path: "/never"}, -ENOENT,
			func(t *testing.T, w *journalWorld) { w.wantList(t, "/") }},
		{"rmdir", func(t *testing.T, w *journalWorld) { w.mkdir(t, "d") },
			Call{Op: OpUnlink, Path: "/d", Flags: atRemoveDir}, 0, func(t *testing.T, w *journalWorld) { w.wantList(t, "/") }},
		{"rmdir of a full directory", func(t *testing.T, w *journalWorld) { w.mkdir(t, "d"); w.write(t, "d/x", "") },
			Call{Op: OpUnlink, Path: "/d", Flags: atRemoveDir}, -ENOTEMPTY, func(t *testing.T, w *journalWorld) { w.wantList(t, "/d", "x") }},
		{"mkdir", nil, Call{Op: OpMkdir, Path: "/d", Mode: 0o755}, 0,
			func(t *testing.T, w *journalWorld) {
				w.wantList(t, "/", "d")
				if st, err := os.Stat(w.path("d")); err != nil || !st.IsDir() {
					t.Fatalf("/d: %v %v", st, err)
				}
			}},
		{"mkdir of an existing directory", func(t *testing.T, w *journalWorld) { w.mkdir(t, "d") },
			Call{Op: OpMkdir, Path: "/d", Mode: 0o755}, -EEXIST, func(t *testing.T, w *journalWorld) { w.wantList(t, "/", "d") }},
		{"symlink", nil, Call{Op: OpSymlink, Path: "/s", Path2: "target"}, 0,
			func(t *testing.T, w *journalWorld) {
				if got, err := os.Readlink(w.path("s")); err != nil || got != "target" {
					t.Fatalf("/s: %q %v", got, err)
				}
			}},
		{"symlink at a taken name", func(t *testing.T, w *journalWorld) { w.write(t, "s", "file") },
			Call{Op: OpSymlink, Path: "/s", Path2: "target"}, -EEXIST,
			func(t *testing.T, w *journalWorld) {
				if w.read(t, "s") != "file" {
					t.Fatal("/s changed")
				}
			}},
		{"link", func(t *testing.T, w *journalWorld) { w.write(t, "a", "a") },
			Call{Op: OpLink, Path: "/a", Path2: "/b"}, 0,
			func(t *testing.T, w *journalWorld) {
				a, errA := os.Stat(w.path("a"))
				b, errB := os.Stat(w.path("b"))
				if errA != nil || errB != nil || !os.SameFile(a, b) {
					t.Fatalf("/b is not /a: %v %v", errA, errB)
				}
			}},
		{"link at a taken name", func(t *testing.T, w *journalWorld) { w.write(t, "a", "a"); w.write(t, "b", "b") },
			Call{Op: OpLink, Path: "/a", Path2: "/b"}, -EEXIST,
			func(t *testing.T, w *journalWorld) {
				if w.read(t, "b") != "b" {
					t.Fatal("/b changed")
				}
			}},
	}
}

// failoverWindows are the ways a primary dies around a journaled call at
// seq: each leaves the world and the journal as the dying primary did,
// and returns the answer it performed (ok false when it performed none).
var failoverWindows = []struct {
	name string
	die  func(t *testing.T, w *journalWorld, seq uint64, c Call) (first Result, ok bool)
}{
	// The call and its outcome made it; the answer did not reach the
	// backup.
	{"after the outcome", func(t *testing.T, w *journalWorld, seq uint64, c Call) (Result, bool) {
		r, err := w.host(t).DoAt(seq, c)
		if err != nil {
			t.Fatal(err)
		}
		return r, true
	}},
	// The call happened; its outcome was never written.
	{"before the outcome", func(t *testing.T, w *journalWorld, seq uint64, c Call) (Result, bool) {
		h := w.host(t)
		r, err := h.DoAt(seq, c)
		if err != nil {
			t.Fatal(err)
		}
		tearAt(t, h, journalOutcomeAt)
		return r, true
	}},
	// The outcome's write was cut short: its checksum fails.
	{"during the outcome's write", func(t *testing.T, w *journalWorld, seq uint64, c Call) (Result, bool) {
		h := w.host(t)
		r, err := h.DoAt(seq, c)
		if err != nil {
			t.Fatal(err)
		}
		flipByte(t, h, journalOutcomeAt+journalHeader-2)
		return r, true
	}},
	// Only the intent: the call was not performed.
	{"after the intent", func(t *testing.T, w *journalWorld, seq uint64, c Call) (Result, bool) {
		h := w.host(t)
		if err := h.writeRecord(journalIntentAt, journalRecord{kind: recIntent, existed: h.exists(c.target()), seq: seq, call: c.digest()}); err != nil {
			t.Fatal(err)
		}
		return Result{}, false
	}},
	// The intent's write was cut short, over an earlier call's record.
	{"during the intent's write", func(t *testing.T, w *journalWorld, seq uint64, c Call) (Result, bool) {
		h := w.host(t)
		if _, err := h.DoAt(seq-3, Call{Op: OpMkdir, Path: "/earlier/x"}); err != nil {
			t.Fatal(err)
		}
		b := journalRecord{kind: recIntent, existed: h.exists(c.target()), seq: seq, call: c.digest()}.encode()
		f, err := os.OpenFile(h.JournalPath(), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(b[:20], journalIntentAt); err != nil {
			t.Fatal(err)
		}
		return Result{}, false
	}},
}

// tearAt zeroes the journal from off on: nothing was written there.
func tearAt(t *testing.T, h *Host, off int64) {
	t.Helper()
	if err := os.Truncate(h.JournalPath(), off); err != nil {
		t.Fatal(err)
	}
}

func flipByte(t *testing.T, h *Host, off int64) {
	t.Helper()
	f, err := os.OpenFile(h.JournalPath(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x10
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestJournaledCallsAcrossAFailover: each kind of journaled call, made at
// seq N by a primary that dies at each point around it, is re-issued at
// N by the backup that takes over, on a fresh Host over the same root and
// journal: the answer, value and bytes, is the one the first call gave
// (or, when it was never performed, the one it would have given), and
// the world holds its effect once.
func TestJournaledCallsAcrossAFailover(t *testing.T) {
	const seq = 42
	for _, win := range failoverWindows {
		for _, k := range journaledCases() {
			t.Run(win.name+"/"+k.name, func(t *testing.T) {
				w := newJournalWorld(t)
				if k.setup != nil {
					k.setup(t, w)
				}
				first, performed := win.die(t, w, seq, k.call)
				if performed && first.Value != k.want {
					t.Fatalf("the first call = %d, want %d", first.Value, k.want)
				}
				again, err := w.host(t).DoAt(seq, k.call)
				if err != nil {
					t.Fatalf("re-issued after the failover: %v", err)
				}
				if again.Value != k.want {
					t.Fatalf("re-issued after the failover: %d, want %d", again.Value, k.want)
				}
				if k.call.Op == OpOpen && k.want == 0 && len(again.Data) != statSize {
					t.Fatalf("re-issued open: %d bytes of stat, want %d", len(again.Data), statSize)
				}
				if performed && !bytes.Equal(again.Data, first.Data) {
					t.Fatalf("re-issued after the failover: data %x, the first call's %x", again.Data, first.Data)
				}
				k.after(t, w)
				// A third replica taking over at the same answer gets it too.
				third, err := w.host(t).DoAt(seq, k.call)
				if err != nil || third.Value != again.Value || !bytes.Equal(third.Data, again.Data) {
					t.Fatalf("a second takeover: %d %x %v, the first takeover's %d %x", third.Value, third.Data, err, again.Value, again.Data)
				}
				k.after(t, w)
			})
		}
	}
}

// TestOpenExclAnsweredThroughTheProcess: the reported failure, through
// the personality: an O_CREAT|O_EXCL openat whose outcome the journal
// holds, re-executed by a new primary, installs a descriptor rather than
// answering EIO (the stat an open needs is in the journal).
func TestOpenExclAnsweredThroughTheProcess(t *testing.T) {
	w := newJournalWorld(t)
	c := Call{Op: OpOpen, Path: "/lock", Flags: oCreat | oExcl | oWronly, Mode: 0o644}
	if _, err := w.host(t).DoAt(7, c); err != nil {
		t.Fatal(err)
	}
	f := newFake(t)
	f.host = w.host(t)
	p, err := NewProcess(Config{Args: []string{"prog"}})
	if err != nil {
		t.Fatal(err)
	}
	buf := scratch(t, p, f)
	f.Write(buf, []byte("/lock\x00"))
	f.seq = 6 // the re-executed openat asks answer 7
	if got := call(t, p, f, sysOpenat, uint64(atFDCWD&0xFFFFFFFF), buf, oCreat|oExcl|oWronly, 0o644); got != 3 {
		t.Fatalf("openat re-executed after the failover = %d, want descriptor 3", got)
	}
	w.wantList(t, "/", "lock")
}

// TestJournalFormat: the records are laid out as journal.go documents,
// inside their slots, and what this build cannot read is refused with an
// error that says why, never answered around.
func TestJournalFormat(t *testing.T) {
	stat := bytes.Repeat([]byte{5}, statSize)
	out := journalRecord{kind: recOutcome, seq: 3, call: 4, r: Result{Value: 0, Data: stat}}.encode()
	in := journalRecord{kind: recIntent, existed: true, seq: 3, call: 4}.encode()
	if len(in) > journalOutcomeAt-journalIntentAt || journalOutcomeAt+len(out) > 4096 {
		t.Fatalf("an intent of %d bytes, an outcome of %d: they overlap or leave the first page", len(in), len(out))
	}
	le := binary.LittleEndian
	if string(out[:4]) != "HVJR" || le.Uint16(out[4:]) != JournalVersion || out[6] != recOutcome || in[7] != 1 ||
		le.Uint64(out[8:]) != 3 || le.Uint64(out[16:]) != 4 || le.Uint32(out[32:]) != statSize {
		t.Fatalf("outcome record %x does not follow the documented layout", out[:journalHeader])
	}
	if j, err := decodeRecord(out); err != nil || !bytes.Equal(j.r.Data, stat) || j.seq != 3 {
		t.Fatalf("decoding an outcome: %+v %v", j, err)
	}
	for cut := 1; cut < len(out); cut++ {
		if _, err := decodeRecord(out[:cut]); err != errTorn {
			t.Fatalf("an outcome cut at %d: %v, want it torn", cut, err)
		}
	}
	for i := 6; i < len(out); i++ { // every byte after the magic and version
		b := slices.Clone(out)
		b[i] ^= 1
		if _, err := decodeRecord(b); err != errTorn {
			t.Fatalf("an outcome with byte %d flipped: %v, want it torn", i, err)
		}
	}

	c := Call{Op: OpUnlink, Path: "/x"}
	refused := func(name string, journal []byte, want string) {
		t.Helper()
		w := newJournalWorld(t)
		h := w.host(t)
		if err := os.WriteFile(h.JournalPath(), journal, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := h.CheckJournal(); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), h.JournalPath()) {
			t.Fatalf("%s: CheckJournal: %v, want an error naming the file and %q", name, err, want)
		}
		if _, err := h.DoAt(5, c); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: DoAt: %v, want %q", name, err, want)
		}
	}
	other := journalRecord{kind: recIntent, seq: 5, call: c.digest()}.encode()
	le.PutUint16(other[4:], JournalVersion+1)
	refused("a newer version", other, "journal version 2, this build reads version 1")
	legacy := binary.LittleEndian.AppendUint64(nil, 5)
	legacy = binary.LittleEndian.AppendUint64(append(legacy, 1), 0)
	refused("the unversioned format", legacy, "not a journal of version 1")
	diverged := journalRecord{kind: recIntent, seq: 5, call: Call{Op: OpUnlink, Path: "/y"}.digest()}.encode()
	refusedCall := func() {
		w := newJournalWorld(t)
		h := w.host(t)
		os.WriteFile(h.JournalPath(), diverged, 0o600)
		if err := h.CheckJournal(); err != nil {
			t.Fatalf("a readable journal: %v", err)
		}
		if _, err := h.DoAt(5, c); err == nil || !strings.Contains(err.Error(), "another call") {
			t.Fatalf("a record of another call at the same answer: %v", err)
		}
	}
	refusedCall()

	// An empty or absent journal holds nothing: the call is performed.
	w := newJournalWorld(t)
	w.write(t, "x", "")
	h := w.host(t)
	if err := h.CheckJournal(); err != nil {
		t.Fatal(err)
	}
	if r, err := h.DoAt(5, c); err != nil || r.Value != 0 {
		t.Fatalf("unlink with an empty journal: %d %v", r.Value, err)
	}
}

// TestOExclWithoutOCreatIsNotJournaled: Linux ignores O_EXCL without
// O_CREAT, and such an open does not commit, so it must not be journaled.
func TestOExclWithoutOCreatIsNotJournaled(t *testing.T) {
	if !(Call{Op: OpOpen, Flags: oExcl}).repeatable() || (Call{Op: OpOpen, Flags: oExcl | oCreat}).repeatable() {
		t.Fatal("only an O_CREAT|O_EXCL open is unrepeatable")
	}
	w := newJournalWorld(t)
	w.write(t, "f", "")
	h := w.host(t)
	if r, err := h.DoAt(5, Call{Op: OpOpen, Path: "/f", Flags: oExcl}); err != nil || r.Value != 0 {
		t.Fatalf("open O_EXCL of an existing file: %d %v", r.Value, err)
	}
	if st, err := os.Stat(h.JournalPath()); err == nil && st.Size() > 0 {
		t.Fatal("an open without O_CREAT was journaled")
	}
}
