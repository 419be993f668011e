package linux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
)

// The journal of a replicated program's last unrepeatable call.
//
// A failover may re-execute the old primary's last committing call (rule
// 3b, docs/linux.md). Most calls leave the world as once did when
// repeated; unlink, rmdir, rename, mkdir, symlink, link and an
// O_CREAT|O_EXCL open do not, so the host journals each: an intent before
// performing it, its outcome after. A replica that re-executes the call
// at the same sequence number answers from the journal instead of
// performing it again:
//
//   - an outcome for that number: the call happened, and the outcome is
//     its whole Result, value and bytes (an open's struct stat, which the
//     personality needs to install the descriptor), so the answer is the
//     one the old primary got. Storing it is simpler than recomputing it
//     and exact where a recomputation is not: statting the file again
//     would give other times, or another file if anything changed it.
//   - an intent alone: the old primary died after writing the intent, and
//     performed the call or not. The intent holds whether the call's
//     target existed before it (target); a call that succeeds flips that
//     and one that fails changes nothing, so the world says which
//     (resolve), and the answer is the one the call gives, or gave, in
//     the world it ran in: an unlink of a file that never existed is
//     still ENOENT, an O_EXCL create of a name already taken still EEXIST.
//
// The file (.hvft-journal-RUNID) holds two records at fixed offsets, the
// intent at 0 and the outcome at 64, so that a torn write destroys only
// the record being written: a torn intent means the call was not
// performed (the intent is written first), a torn outcome leaves the
// intent to decide from. A record, little-endian:
//
//	magic "HVJR" | version u16 | kind u8 (1 intent, 2 outcome) |
//	target existed u8 | seq u64 | call u64 (FNV-1a of the request) |
//	value i64 | data length u32 | data | CRC-32C u32 of all before it
//
// An intent carries no value or data. The call's digest makes a record
// found at the right sequence number but for another request an error
// (the replicas diverged), never a wrong answer. A slot of zeros (or
// nothing) holds no record; a slot that does not start with the magic, or
// whose version is not JournalVersion, is refused.

// JournalVersion is the journal's on-disk format. A replica taking over
// refuses a journal of another version: what it cannot read, it cannot
// decide from, and a guess could perform a call twice.
const JournalVersion = 1

const (
	journalMagic     = "HVJR"
	journalIntentAt  = 0
	journalOutcomeAt = 64
	journalHeader    = 4 + 2 + 1 + 1 + 8 + 8 + 8 + 4
	// maxJournalData bounds an outcome's bytes (an open's are statSize),
	// keeping every record inside the file's first page.
	maxJournalData = 1024

	recIntent  = 1
	recOutcome = 2
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// journalRecord is one of the journal's two records.
type journalRecord struct {
	kind    byte
	existed bool // the call's target existed when the intent was written
	seq     uint64
	call    uint64 // the request's digest
	r       Result // an outcome's; zero in an intent
}

func (j journalRecord) encode() []byte {
	le := binary.LittleEndian
	b := []byte(journalMagic)
	b = le.AppendUint16(b, JournalVersion)
	b = append(b, j.kind, 0)
	if j.existed {
		b[len(b)-1] = 1
	}
	b = le.AppendUint64(b, j.seq)
	b = le.AppendUint64(b, j.call)
	b = le.AppendUint64(b, uint64(j.r.Value))
	b = le.AppendUint32(b, uint32(len(j.r.Data)))
	b = append(b, j.r.Data...)
	return le.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// errTorn is a record cut short or damaged: a write that did not finish.
var errTorn = errors.New("torn record")

// decodeRecord reads the record at the start of b: nil when b holds
// none, errTorn when it is incomplete or its checksum fails, another
// error for a record this build does not read.
func decodeRecord(b []byte) (*journalRecord, error) {
	if len(bytes.Trim(b, "\x00")) == 0 {
		return nil, nil
	}
	if len(b) < len(journalMagic) {
		if bytes.HasPrefix([]byte(journalMagic), b) {
			return nil, errTorn
		}
		return nil, errors.New("not a journal: no magic")
	}
	if string(b[:len(journalMagic)]) != journalMagic {
		return nil, fmt.Errorf("not a journal of version %d: no magic (a journal of an older build, or another file)", JournalVersion)
	}
	if len(b) < 6 {
		return nil, errTorn
	}
	le := binary.LittleEndian
	if v := le.Uint16(b[4:]); v != JournalVersion {
		return nil, fmt.Errorf("journal version %d, this build reads version %d", v, JournalVersion)
	}
	if len(b) < journalHeader {
		return nil, errTorn
	}
	n := int(le.Uint32(b[journalHeader-4:]))
	if n > maxJournalData || len(b) < journalHeader+n+4 {
		return nil, errTorn
	}
	if crc32.Checksum(b[:journalHeader+n], castagnoli) != le.Uint32(b[journalHeader+n:]) {
		return nil, errTorn
	}
	j := &journalRecord{kind: b[6], existed: b[7] == 1, seq: le.Uint64(b[8:]), call: le.Uint64(b[16:])}
	j.r.Value = int64(le.Uint64(b[24:]))
	if n > 0 {
		j.r.Data = b[journalHeader : journalHeader+n : journalHeader+n]
	}
	return j, nil
}

// digest names a request: a record found at the right sequence number is
// for this call only if the digests agree.
func (c Call) digest() uint64 {
	h := fnv.New64a()
	le := binary.LittleEndian
	b := []byte{byte(c.Op)}
	b = append(append(b, c.Path...), 0)
	b = append(append(b, c.Path2...), 0)
	b = le.AppendUint64(b, c.Flags)
	b = le.AppendUint32(b, c.Mode)
	b = le.AppendUint64(b, uint64(c.Off))
	b = le.AppendUint64(b, c.Size)
	h.Write(append(b, c.Data...))
	return h.Sum64()
}

// target is the path whose existence an unrepeatable call changes when
// it succeeds: the one it removes (unlink, rmdir, rename's source) or
// creates (mkdir, symlink, an O_EXCL open, link's new name).
func (c Call) target() string {
	if c.Op == OpLink {
		return c.Path2
	}
	return c.Path
}

// EnableJournal makes the host journal every call that is not repeatable
// in a file in JournalDir (the root by default), named after the run (the
// first answer's random bytes, AT_RANDOM, which every replica of the run
// holds): a replica that takes over and re-executes the old primary's last
// call finds there whether it happened. It fails when the directory
// takes no file, before the program runs rather than at its first unlink.
func (h *Host) EnableJournal() error {
	probe, err := os.CreateTemp(h.journalDir(), ".hvft-journal-probe-*")
	if err != nil {
		return fmt.Errorf("the journal of a replicated Linux program needs a directory both replicas can write (--journal-dir, by default --root): %w", err)
	}
	probe.Close()
	os.Remove(probe.Name())
	h.journaled = true
	return nil
}

func (h *Host) journalDir() string {
	if h.JournalDir != "" {
		return h.JournalDir
	}
	return h.Root
}

// SetRunID names the run whose journal this host keeps (a backup taking
// over, from the logged AT_RANDOM).
func (h *Host) SetRunID(random []byte) {
	if len(random) >= 8 && h.runID == "" {
		h.runID = fmt.Sprintf("%x", random[:8])
	}
}

// JournalPath is the journal's file, or "" when none is kept yet.
func (h *Host) JournalPath() string {
	if !h.journaled || h.runID == "" {
		return ""
	}
	return filepath.Join(h.journalDir(), ".hvft-journal-"+h.runID)
}

// RemoveJournal deletes the journal at the end of a run.
func (h *Host) RemoveJournal() error {
	p := h.JournalPath()
	if p == "" {
		return nil
	}
	h.mu.Lock()
	if h.journal != nil {
		h.journal.Close()
		h.journal = nil
	}
	h.mu.Unlock()
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the journal: %w", err)
	}
	return nil
}

// CheckJournal reads the journal a replica taking over inherits and
// refuses one it cannot read (another version, another file) before the
// program runs on, rather than at its next unrepeatable call.
func (h *Host) CheckJournal() error {
	if h.JournalPath() == "" {
		return nil
	}
	_, _, err := h.readJournal()
	return err
}

// DoAt performs c, the answer with sequence number seq. A call that is not
// repeatable goes through the journal: an intent before, the outcome
// after; found again at the same seq, it is answered from there and not
// performed twice. The error is the journal's, which a replica cannot
// answer around: the run stops rather than guess.
func (h *Host) DoAt(seq uint64, c Call) (Result, error) {
	if c.Op == OpRandom && seq == 1 {
		r := h.Do(c)
		h.SetRunID(r.Data)
		return r, nil
	}
	if c.repeatable() || h.JournalPath() == "" {
		return h.Do(c), nil
	}
	intent, outcome, err := h.readJournal()
	if err != nil {
		return Result{}, err
	}
	id := c.digest()
	if outcome != nil && outcome.seq == seq {
		if outcome.call != id {
			return Result{}, h.otherCall(seq, c)
		}
		return outcome.r, nil
	}
	if intent != nil && intent.seq == seq {
		if intent.call != id {
			return Result{}, h.otherCall(seq, c)
		}
		r := h.resolve(c, intent.existed)
		// Recorded, a later takeover at this seq answers the same bytes
		// (an open's times) without deciding again; unrecorded, it decides
		// again, from a world this answer did not change.
		_ = h.writeRecord(journalOutcomeAt, journalRecord{kind: recOutcome, existed: intent.existed, seq: seq, call: id, r: r})
		return r, nil
	}
	existed := h.exists(c.target())
	if err := h.writeRecord(journalIntentAt, journalRecord{kind: recIntent, existed: existed, seq: seq, call: id}); err != nil {
		return Result{Value: -EIO}, nil // not performed, as the program is told
	}
	r := h.Do(c)
	// A failed outcome write leaves the intent, from which a takeover
	// decides as when the primary dies before writing it: the call
	// happened, and its answer stands.
	_ = h.writeRecord(journalOutcomeAt, journalRecord{kind: recOutcome, existed: existed, seq: seq, call: id, r: r})
	return r, nil
}

func (h *Host) otherCall(seq uint64, c Call) error {
	return fmt.Errorf("journal %s: answer %d is a %v of %q, but the journal's record for it is of another call: the replicas diverged", h.JournalPath(), seq, c.Op, c.Path)
}

func (h *Host) exists(p string) bool {
	_, err := os.Lstat(h.hostPath(p))
	return err == nil
}

func (h *Host) journalFile() (*os.File, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.journal != nil {
		return h.journal, nil
	}
	f, err := os.OpenFile(h.JournalPath(), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	h.journal = f
	return f, nil
}

// readJournal returns the journal's intent and outcome, nil where there
// is none or it is torn (see the format above).
func (h *Host) readJournal() (intent, outcome *journalRecord, err error) {
	f, err := h.journalFile()
	if err != nil {
		return nil, nil, fmt.Errorf("journal: %w", err)
	}
	slot := func(off int64, size int, kind byte) (*journalRecord, error) {
		b := make([]byte, size)
		n, err := f.ReadAt(b, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		j, err := decodeRecord(b[:n])
		if errors.Is(err, errTorn) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if j != nil && j.kind != kind {
			return nil, fmt.Errorf("a record of kind %d where kind %d belongs", j.kind, kind)
		}
		return j, nil
	}
	if intent, err = slot(journalIntentAt, journalOutcomeAt-journalIntentAt, recIntent); err != nil {
		return nil, nil, fmt.Errorf("journal %s, the intent at offset %d: %w", h.JournalPath(), journalIntentAt, err)
	}
	if outcome, err = slot(journalOutcomeAt, journalHeader+maxJournalData+4, recOutcome); err != nil {
		return nil, nil, fmt.Errorf("journal %s, the outcome at offset %d: %w", h.JournalPath(), journalOutcomeAt, err)
	}
	return intent, outcome, nil
}

// writeRecord writes rec whole at off, in one write: a process killed
// around it made it or not; anything that tears it (a machine's crash)
// fails its checksum, and the format above says what a torn record means.
func (h *Host) writeRecord(off int64, rec journalRecord) error {
	if len(rec.r.Data) > maxJournalData {
		return fmt.Errorf("journal: a %d-byte outcome, the most a record holds is %d", len(rec.r.Data), maxJournalData)
	}
	f, err := h.journalFile()
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if _, err := f.WriteAt(rec.encode(), off); err != nil {
		return fmt.Errorf("journal %s: %w", h.JournalPath(), err)
	}
	return nil
}

// resolve answers a call whose intent the journal holds without an
// outcome: the old primary died after writing the intent, before or
// after performing the call. A call that succeeds flips whether its
// target exists; one that fails changes nothing. So a target as the
// intent found it means the call has not happened, and performing it now
// answers as the first time would have, in the same world (ENOENT,
// EEXIST included); a flipped one means it happened and succeeded.
func (h *Host) resolve(c Call, existed bool) Result {
	if h.exists(c.target()) == existed {
		return h.Do(c)
	}
	if c.Op == OpOpen {
		// The file the old primary created, untouched since (a write to it
		// would commit, so wait for the backup to hold this answer):
		// opened without O_EXCL, it gives the stat the open gave.
		c.Flags &^= oExcl
		return h.Do(c)
	}
	return Result{}
}
