package replica

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"hvft/epoch"
	"hvft/vm"
	"hvft/vm/uc"
)

// A log file: the records a run's environment produced, as they cross the
// wire, after a header that says what produced them:
//
//	"HVFTLOG1" | u32 header length | header (JSON) | frames (answer, epoch-end) ...
//
// The writer appends frames and writes them out at every epoch end, so a
// crash leaves whole epochs and at most one torn tail; the reader cuts the
// tail at the last whole epoch and says so.
const logMagic = "HVFTLOG1"

// logVersion is the header's layout and the wire frames' meaning; version 2
// names the emulator library and hashes RAM at every epoch.
const logVersion = 2

// maxLogHeader bounds the header a reader accepts.
const maxLogHeader = 1 << 20

// LogHeader describes the run a log records.
type LogHeader struct {
	Version      int      `json:"version"`
	ImageDigest  string   `json:"image_digest"`
	Args         []string `json:"args"` // argv, argv[0] included
	RAMSize      uint64   `json:"ram_size"`
	EpochBlocks  uint64   `json:"epoch_blocks"`
	BoardVersion uint32   `json:"board_version"`
	Engine       string   `json:"engine"` // libunicorn version
	DiskSectors  uint64   `json:"disk_sectors"`
	Role         string   `json:"role"`
}

// HeaderFor describes a machine.
func HeaderFor(m Machine, role string) LogHeader {
	return LogHeader{Version: logVersion, ImageDigest: fmt.Sprintf("%x", m.Image.Digest), Args: m.Config.Args,
		RAMSize: m.Config.RAMSize, EpochBlocks: m.EpochBlocks,
		BoardVersion: vm.BoardVersion, Engine: uc.Version(), DiskSectors: m.Config.DiskSectors, Role: role}
}

// LogWriter records a run to a file; it is a vm.Recorder.
type LogWriter struct {
	mu   sync.Mutex
	f    *os.File
	buf  []byte
	err  error
	sync bool
}

// CreateLog starts a log file at path (replacing one there). With sync, each
// epoch end is fsync'd, not only written.
func CreateLog(path string, h LogHeader, sync bool) (*LogWriter, error) {
	hdr, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("creating the log: %w", err)
	}
	buf := append([]byte(logMagic), 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(buf[len(logMagic):], uint32(len(hdr)))
	buf = append(buf, hdr...)
	if _, err := f.Write(buf); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing the log header: %w", err)
	}
	return &LogWriter{f: f, sync: sync}, nil
}

func (w *LogWriter) append(m epoch.Message, flush bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	if w.buf, w.err = epoch.AppendFrame(w.buf, m); w.err != nil {
		return w.err
	}
	if !flush {
		return nil
	}
	if _, err := w.f.Write(w.buf); err != nil {
		w.err = fmt.Errorf("writing the log: %w", err)
		return w.err
	}
	w.buf = w.buf[:0]
	if w.sync {
		if err := w.f.Sync(); err != nil {
			w.err = fmt.Errorf("syncing the log: %w", err)
		}
	}
	return w.err
}

// RecordAnswer implements vm.Recorder.
func (w *LogWriter) RecordAnswer(a vm.Answer) error {
	wa := toWireAnswer(a)
	return w.append(epoch.Message{Type: epoch.TypeAnswer, Answer: &wa}, false)
}

// RecordEpochEnd implements vm.Recorder; the epoch reaches the file now.
func (w *LogWriter) RecordEpochEnd(e vm.EpochEnd) error {
	we := toWireEnd(e)
	return w.append(epoch.Message{Type: epoch.TypeEpochEnd, EpochEnd: &we}, true)
}

// Close writes what is buffered (a partial epoch) and closes the file.
func (w *LogWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 && w.err == nil {
		if _, err := w.f.Write(w.buf); err != nil {
			w.err = err
		}
	}
	if err := w.f.Close(); err != nil && w.err == nil {
		w.err = err
	}
	return w.err
}

// recorders fans records out to several recorders.
type recorders []vm.Recorder

func (rs recorders) RecordAnswer(a vm.Answer) error {
	for _, r := range rs {
		if err := r.RecordAnswer(a); err != nil {
			return err
		}
	}
	return nil
}

func (rs recorders) RecordEpochEnd(e vm.EpochEnd) error {
	for _, r := range rs {
		if err := r.RecordEpochEnd(e); err != nil {
			return err
		}
	}
	return nil
}

// LoadedLog is a log file read back.
type LoadedLog struct {
	Header LogHeader
	Log    vm.Log
	// Torn describes a tail that was cut (empty when the file ended on a
	// whole epoch).
	Torn string
	// Epochs is the last whole epoch.
	Epochs uint64
}

// ReadLog reads a log file, cutting a torn or partial tail at the last
// whole epoch.
func ReadLog(path string) (*LoadedLog, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading the log: %w", err)
	}
	defer f.Close()
	return ReadLogFrom(f, path)
}

// ReadLogFrom reads a log from r; name labels errors.
func ReadLogFrom(src io.Reader, path string) (*LoadedLog, error) {
	r := bufio.NewReader(src)
	magic := make([]byte, len(logMagic)+4)
	if _, err := io.ReadFull(r, magic); err != nil || string(magic[:len(logMagic)]) != logMagic {
		return nil, fmt.Errorf("%s is not an hvft log", path)
	}
	n := binary.LittleEndian.Uint32(magic[len(logMagic):])
	if n > maxLogHeader {
		return nil, fmt.Errorf("%s: log header of %d bytes is implausibly large", path, n)
	}
	hdr := make([]byte, n)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, fmt.Errorf("%s: truncated log header", path)
	}
	l := &LoadedLog{}
	if err := json.Unmarshal(hdr, &l.Header); err != nil {
		return nil, fmt.Errorf("%s: log header: %w", path, err)
	}
	if l.Header.Version != logVersion {
		return nil, fmt.Errorf("%s: log version %d, this build reads %d", path, l.Header.Version, logVersion)
	}
	whole := 0 // records up to the last epoch end
	for {
		m, err := epoch.ReadFrame(r)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			l.Torn = fmt.Sprintf("log damaged or torn after epoch %d: %v", l.Epochs, err)
			break
		}
		switch m.Type {
		case epoch.TypeAnswer:
			a := fromWireAnswer(m.Answer)
			l.Log.Records = append(l.Log.Records, vm.Record{Answer: &a})
		case epoch.TypeEpochEnd:
			e := fromWireEnd(m.EpochEnd)
			l.Log.Records = append(l.Log.Records, vm.Record{End: &e})
			whole, l.Epochs = len(l.Log.Records), e.Epoch
		default:
			l.Torn = fmt.Sprintf("unexpected %v record after epoch %d", m.Type, l.Epochs)
		}
		if l.Torn != "" {
			break
		}
	}
	if cut := len(l.Log.Records) - whole; cut > 0 && l.Torn == "" {
		l.Torn = fmt.Sprintf("%d answers after epoch %d belong to an epoch the log does not end", cut, l.Epochs)
	}
	l.Log.Records = l.Log.Records[:whole]
	return l, nil
}

// MergeLogs joins the logs of a run that failed over: the old primary's
// and the new primary's (which records every record it replayed from the
// old one, then its own). They must agree on their common prefix; where
// they split, the new primary's history is the one that went on: the old
// primary's records past that point were never acknowledged, so nothing
// that depended on them left it. Note says where the split was.
func MergeLogs(first, second *LoadedLog) (merged *LoadedLog, note string, err error) {
	if first.Header.ImageDigest != second.Header.ImageDigest || fmt.Sprint(first.Header.Args) != fmt.Sprint(second.Header.Args) {
		return nil, "", errors.New("the logs record different guests")
	}
	a, b := first.Log.Records, second.Log.Records
	i := 0
	for i < len(a) && i < len(b) && sameRecord(a[i], b[i]) {
		i++
	}
	if i == 0 && len(a) > 0 && len(b) > 0 {
		return nil, "", errors.New("the logs disagree from their first record: not the same run")
	}
	if i == len(b) {
		return first, fmt.Sprintf("the second log is a prefix of the first (%d records)", i), nil
	}
	return second, fmt.Sprintf("the logs agree on %d records; the old primary's last %d were never acknowledged, the new primary's %d after them were its own",
		i, len(a)-i, len(b)-i), nil
}

func sameRecord(x, y vm.Record) bool {
	switch {
	case x.Answer != nil && y.Answer != nil:
		return *x.Answer == *y.Answer
	case x.End != nil && y.End != nil:
		return vm.CompareEnds(x.End, y.End) == nil && fmt.Sprint(x.End.Events) == fmt.Sprint(y.End.Events)
	}
	return false
}
