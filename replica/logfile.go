package replica

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"

	"hvft/epoch"
	"hvft/vm"
	"hvft/vm/uc"
)

// A log file: the records a run's environment produced, as they cross the
// wire, after a header that says what produced them:
//
//	"HVFTLOG1" | u32 header length | header (JSON) | u32 CRC-32C of length and header
//	records: u32 frame length | u32 CRC-32C of that length | the frame's rest ...
//
// Every byte is under a checksum: the frame's own covers its version, type
// and payload, and the one after each length covers the length, so that a
// damaged length is damage, not a record the file seems to end inside.
// The writer appends records and writes them out at every epoch end, so a
// crash leaves whole epochs and at most one torn tail, which can only be
// at the end of the file; the reader cuts it at the last whole epoch and
// says so.
const logMagic = "HVFTLOG1"

// logVersion is the file's layout and the wire frames' meaning.
const logVersion = 3

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// AppendLogRecord appends m as a log record: its wire frame with the
// length's checksum after the length.
func AppendLogRecord(buf []byte, m epoch.Message) ([]byte, error) {
	start := len(buf)
	buf, err := epoch.AppendFrame(buf, m)
	if err != nil {
		return buf[:start], err
	}
	sum := crc32.Checksum(buf[start:start+4], castagnoli)
	buf = append(buf, 0, 0, 0, 0)
	copy(buf[start+8:], buf[start+4:len(buf)-4])
	binary.LittleEndian.PutUint32(buf[start+4:], sum)
	return buf, nil
}

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
	// Clock is the epoch clock; a log without one was recorded with
	// "always".
	Clock string `json:"epoch_clock,omitempty"`
	Role  string `json:"role"`
	// Linux is set for a Linux program (hvft run --linux).
	Linux *LinuxHeader `json:"linux,omitempty"`
}

// LinuxHeader is what a Linux program was started with beyond argv.
type LinuxHeader struct {
	Program string   `json:"program"` // the host path it was loaded from
	Exe     string   `json:"exe"`
	Cwd     string   `json:"cwd"`
	Env     []string `json:"env"`
	UID     uint32   `json:"uid"`
	GID     uint32   `json:"gid"`
}

// HeaderFor describes a machine.
func HeaderFor(m Machine, role string) LogHeader {
	h := LogHeader{Version: logVersion, ImageDigest: fmt.Sprintf("%x", m.Image.Digest), Args: m.Config.Args,
		RAMSize: m.Config.RAMSize, EpochBlocks: m.EpochBlocks,
		BoardVersion: vm.BoardVersion, Engine: uc.Version(), DiskSectors: m.Config.DiskSectors, Clock: m.Config.Clock.String(), Role: role}
	if l := m.Config.Linux; l != nil {
		h.Linux = &LinuxHeader{Program: m.ProgramPath, Exe: l.Process.Exe, Cwd: l.Process.Cwd, Env: l.Process.Env, UID: l.Process.UID, GID: l.Process.GID}
	}
	return h
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
	buf = binary.LittleEndian.AppendUint32(buf, crc32.Checksum(buf[len(logMagic):], castagnoli))
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
	if w.buf, w.err = AppendLogRecord(w.buf, m); w.err != nil {
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
	return w.append(epoch.Message{Type: epoch.TypeAnswer, Answer: &a}, false)
}

// RecordEpochEnd implements vm.Recorder; the epoch reaches the file now.
func (w *LogWriter) RecordEpochEnd(e vm.EpochEnd) error {
	return w.append(epoch.Message{Type: epoch.TypeEpochEnd, EpochEnd: &e}, true)
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
	// Torn describes a tail that was cut: what a crash leaves (empty when
	// the file ended on a whole epoch).
	Torn string
	// Damage describes a record that is not what the writer wrote (empty
	// when there is none). The log ends, for replay, at the last whole
	// epoch before it, but it claims more: a replay of it cannot pass.
	Damage string
	// Epochs is the last whole epoch.
	Epochs uint64
}

// ReadLog reads a log file, cutting a torn or partial tail at the last
// whole epoch.
func ReadLog(path string) (*LoadedLog, error) {
	// Non-blocking, so that a FIFO or a device is refused instead of
	// blocking the open for ever (no signal ends that wait).
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("reading the log: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return nil, fmt.Errorf("reading the log: %w", err)
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("log %s is not a regular file", path)
	}
	return ReadLogFrom(f, path)
}

// ReadLogFrom reads a log from r; name labels errors.
//
// The writer only appends, so a crash leaves a file that ends inside a
// record (a process that died mid-write), or one whose last records are
// zeros (blocks the file system allocated but a host crash left
// unwritten): a torn tail, cut at the last whole epoch and described in
// Torn. Any other record that fails its checksum or is no record a log
// holds is damage, wherever it is, described in Damage: the log is cut
// before it too, but a replay of it fails.
func ReadLogFrom(src io.Reader, path string) (*LoadedLog, error) {
	r := &countingReader{r: bufio.NewReader(src)}
	magic := make([]byte, len(logMagic)+4)
	if _, err := io.ReadFull(r, magic); err != nil || string(magic[:len(logMagic)]) != logMagic {
		return nil, fmt.Errorf("%s is not an hvft log", path)
	}
	n := binary.LittleEndian.Uint32(magic[len(logMagic):])
	if n > maxLogHeader {
		return nil, fmt.Errorf("%s: log header of %d bytes is implausibly large", path, n)
	}
	hdr := make([]byte, n+4)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, fmt.Errorf("%s: truncated log header", path)
	}
	l := &LoadedLog{}
	sum := crc32.Update(crc32.Checksum(magic[len(logMagic):], castagnoli), castagnoli, hdr[:n])
	if binary.LittleEndian.Uint32(hdr[n:]) != sum {
		// An older log has no checksum there: say its version if it has one.
		if err := json.Unmarshal(hdr[:n], &l.Header); err == nil && l.Header.Version != logVersion {
			return nil, fmt.Errorf("%s: log version %d, this build reads %d", path, l.Header.Version, logVersion)
		}
		return nil, fmt.Errorf("%s: the log header is damaged (its checksum does not match)", path)
	}
	if err := json.Unmarshal(hdr[:n], &l.Header); err != nil {
		return nil, fmt.Errorf("%s: log header: %w", path, err)
	}
	if l.Header.Version != logVersion {
		return nil, fmt.Errorf("%s: log version %d, this build reads %d", path, l.Header.Version, logVersion)
	}
	whole := 0 // records up to the last epoch end
	for {
		at := r.n
		m, err := readRecord(r)
		if errors.Is(err, io.EOF) {
			break
		}
		var torn tornError
		switch {
		case errors.As(err, &torn):
			l.Torn = fmt.Sprintf("%s has a tail torn by a crash after epoch %d: %s", path, l.Epochs, torn.what)
		case errors.Is(err, epoch.ErrFrame):
			l.Damage = fmt.Sprintf("%s is damaged after epoch %d: its record at byte %d: %v", path, l.Epochs, at, err)
		case err != nil:
			return nil, fmt.Errorf("reading %s: %w", path, err)
		case m.Type == epoch.TypeAnswer:
			l.Log.Records = append(l.Log.Records, vm.Record{Answer: m.Answer})
		case m.Type == epoch.TypeEpochEnd:
			l.Log.Records = append(l.Log.Records, vm.Record{End: m.EpochEnd})
			whole, l.Epochs = len(l.Log.Records), m.EpochEnd.Epoch
		default:
			l.Damage = fmt.Sprintf("%s is damaged after epoch %d: its record at byte %d is a %v message, which no log holds", path, l.Epochs, at, m.Type)
		}
		if l.Torn != "" || l.Damage != "" {
			break
		}
	}
	if cut := len(l.Log.Records) - whole; cut > 0 && l.Torn == "" && l.Damage == "" {
		l.Torn = fmt.Sprintf("%s has a tail torn by a crash after epoch %d: %d answers after it belong to an epoch the log does not end", path, l.Epochs, cut)
	}
	l.Log.Records = l.Log.Records[:whole]
	return l, nil
}

// SplitLog splits the bytes of a whole, undamaged log file into its header
// (from the magic to the header's checksum) and its records, each as the
// bytes on disk and the message it holds: for tools and tests that edit a
// log record by record (AppendLogRecord writes one back).
func SplitLog(data []byte) (header []byte, raw [][]byte, msgs []epoch.Message, err error) {
	if len(data) < len(logMagic)+4 || string(data[:len(logMagic)]) != logMagic {
		return nil, nil, nil, errors.New("not an hvft log")
	}
	off := len(logMagic) + 4 + int(binary.LittleEndian.Uint32(data[len(logMagic):])) + 4
	if off > len(data) {
		return nil, nil, nil, errors.New("truncated log header")
	}
	header = data[:off]
	for off < len(data) {
		r := bytes.NewReader(data[off:])
		m, err := readRecord(r)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("record at byte %d: %w", off, err)
		}
		n := len(data[off:]) - r.Len()
		raw, msgs = append(raw, data[off:off+n]), append(msgs, m)
		off += n
	}
	return header, raw, msgs, nil
}

// tornError is a record a crash cut short.
type tornError struct{ what string }

func (e tornError) Error() string { return e.what }

// readRecord reads one record. It returns io.EOF at the end of the file, a
// tornError for a record the file ends inside or one that is the start of
// unwritten zeros, and an error wrapping epoch.ErrFrame for a damaged one.
func readRecord(r io.Reader) (epoch.Message, error) {
	var hdr [8]byte
	if k, err := io.ReadFull(r, hdr[:]); errors.Is(err, io.ErrUnexpectedEOF) {
		return epoch.Message{}, tornError{fmt.Sprintf("the file ends %d bytes into a record's length", k)}
	} else if err != nil {
		return epoch.Message{}, err
	}
	n := binary.LittleEndian.Uint32(hdr[:4])
	if sum := binary.LittleEndian.Uint32(hdr[4:]); sum != crc32.Checksum(hdr[:4], castagnoli) {
		// Unwritten blocks read as zeros: a record whose length and its
		// checksum are zeros, followed by nothing but zeros, was never
		// written.
		if allZero(hdr[:]) {
			zeros, rerr := restIsZero(r)
			if rerr != nil {
				return epoch.Message{}, rerr
			}
			if zeros {
				return epoch.Message{}, tornError{"the file ends in zeros where a record should be (blocks a crash left unwritten)"}
			}
		}
		return epoch.Message{}, fmt.Errorf("%w: its length %d does not match its checksum", epoch.ErrFrame, n)
	}
	if n > epoch.MaxFrame {
		return epoch.Message{}, fmt.Errorf("%w: length %d exceeds %d", epoch.ErrFrame, n, epoch.MaxFrame)
	}
	body := make([]byte, n)
	if k, err := io.ReadFull(r, body); errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return epoch.Message{}, tornError{fmt.Sprintf("the file ends inside a record (%d of its %d bytes)", 8+k, 8+n)}
	} else if err != nil {
		return epoch.Message{}, err
	}
	m, err := epoch.DecodeFrame(body)
	if err == nil {
		return m, nil
	}
	// A record written up to its length, the rest of its blocks left
	// unwritten: its checksum reads as zeros, and nothing but zeros
	// follows.
	if len(body) < 4 || !allZero(body[len(body)-4:]) {
		return epoch.Message{}, err
	}
	zeros, rerr := restIsZero(r)
	if rerr != nil {
		return epoch.Message{}, rerr
	}
	if !zeros {
		return epoch.Message{}, err
	}
	return epoch.Message{}, tornError{"the file ends in zeros where a record should be (blocks a crash left unwritten)"}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// restIsZero reads r to its end and reports whether all of it is zeros.
func restIsZero(r io.Reader) (bool, error) {
	buf := make([]byte, 32<<10)
	for {
		k, err := r.Read(buf)
		if !allZero(buf[:k]) {
			return false, nil
		}
		if errors.Is(err, io.EOF) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n += int64(k)
	return k, err
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
	// Damage in either file stays with the merge: a replay of it fails.
	damage := func(l *LoadedLog) *LoadedLog {
		out := *l
		out.Damage = strings.Join(slices.DeleteFunc([]string{first.Damage, second.Damage}, func(s string) bool { return s == "" }), "; ")
		return &out
	}
	if i == len(b) {
		return damage(first), fmt.Sprintf("the second log is a prefix of the first (%d records)", i), nil
	}
	return damage(second), fmt.Sprintf("the logs agree on %d records; the old primary's last %d were never acknowledged, the new primary's %d after them were its own",
		i, len(a)-i, len(b)-i), nil
}

func sameRecord(x, y vm.Record) bool {
	switch {
	case x.Answer != nil && y.Answer != nil:
		a, b := x.Answer, y.Answer
		return a.Seq == b.Seq && a.Kind == b.Kind && a.Port == b.Port && a.Sub == b.Sub && a.Size == b.Size &&
			a.Value == b.Value && a.Regs == b.Regs && bytes.Equal(a.Data, b.Data)
	case x.End != nil && y.End != nil:
		return vm.CompareEnds(x.End, y.End) == nil && fmt.Sprint(x.End.Events) == fmt.Sprint(y.End.Events)
	}
	return false
}
