package replica

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"hvft/epoch"
)

// Sink is where released outputs go. A sink drops an output whose
// sequence number it already wrote, so a new primary may re-emit freely
// (exactly once at the sink).
type Sink interface {
	Emit(outs []epoch.Output) error
	// Progress notes that the replica finished an epoch (stream sinks
	// pass it on; the demo uses it to time its kill).
	Progress(epoch uint64) error
	Flush() error
}

// outputBytes returns an output's console bytes and the sequence number
// of the first: a board console output is one byte (Value), a Linux
// program's write a chunk (Data) whose last byte Seq numbers.
func outputBytes(o epoch.Output) (first uint64, b []byte) {
	if o.Data != nil {
		return o.Seq - uint64(len(o.Data)) + 1, o.Data
	}
	return o.Seq, []byte{byte(o.Value)}
}

// writeNew calls write with the bytes of each output past *last, in order,
// advancing *last: the deduplication every sink shares. A chunk that
// straddles *last is cut to its new bytes.
func writeNew(outs []epoch.Output, last *uint64, write func(o epoch.Output, first uint64, b []byte) error) error {
	for _, o := range outs {
		if o.Seq <= *last {
			continue
		}
		first, b := outputBytes(o)
		if first <= *last {
			b, first = b[*last-first+1:], *last+1
		}
		// Only what was written counts as written: after a failed write
		// the output is still to be emitted (by this sink or another).
		if err := write(o, first, b); err != nil {
			return err
		}
		*last = o.Seq
	}
	return nil
}

// PlainSink writes console bytes as they are. A Linux program's standard
// error goes to Err when set (else with the rest).
type PlainSink struct {
	mu   sync.Mutex
	w    *bufio.Writer
	last uint64
	Err  io.Writer
}

// NewPlainSink writes to w.
func NewPlainSink(w io.Writer) *PlainSink { return &PlainSink{w: bufio.NewWriter(w)} }

// Emit writes outputs not yet written.
func (s *PlainSink) Emit(outs []epoch.Output) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return writeNew(outs, &s.last, func(o epoch.Output, _ uint64, b []byte) error {
		if o.Data != nil && o.Port == 2 && s.Err != nil {
			if err := s.w.Flush(); err != nil {
				return fmt.Errorf("writing the console: %w", err)
			}
			if _, err := s.Err.Write(b); err != nil {
				return fmt.Errorf("writing standard error: %w", err)
			}
			return nil
		}
		if _, err := s.w.Write(b); err != nil {
			return fmt.Errorf("writing the console: %w", err)
		}
		return nil
	})
}

// Progress does nothing for a plain console.
func (s *PlainSink) Progress(uint64) error { return nil }

// Flush writes out buffered bytes.
func (s *PlainSink) Flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Flush()
}

// StreamSink writes the sequenced console stream the demo merges: one
// line per output byte, "o SEQ HEX", and one per finished epoch, "e N".
type StreamSink struct {
	mu   sync.Mutex
	w    *bufio.Writer
	last uint64
}

// NewStreamSink writes to w.
func NewStreamSink(w io.Writer) *StreamSink { return &StreamSink{w: bufio.NewWriter(w)} }

// Emit writes outputs not yet written.
func (s *StreamSink) Emit(outs []epoch.Output) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return writeNew(outs, &s.last, func(_ epoch.Output, first uint64, b []byte) error {
		for i, c := range b {
			if _, err := fmt.Fprintf(s.w, "o %d %02x\n", first+uint64(i), c); err != nil {
				return err
			}
		}
		return nil
	})
}

// Joined writes "j EPOCH" when a backup has joined by state transfer, so
// that a merging sink (the demo) knows the pair is whole again.
func (s *StreamSink) Joined(epoch uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.w, "j %d\n", epoch)
	return s.w.Flush()
}

// joinNotifier is a sink that wants to hear of a completed join.
type joinNotifier interface {
	Joined(epoch uint64) error
}

// Progress writes an epoch line and flushes.
func (s *StreamSink) Progress(epoch uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.w, "e %d\n", epoch)
	return s.w.Flush()
}

// Flush writes out buffered lines.
func (s *StreamSink) Flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Flush()
}

// Merger joins the sequenced console streams of several replicas into one
// console: each sequence number is written once, in order.
type Merger struct {
	mu         sync.Mutex
	out        io.Writer
	next       uint64
	Duplicates uint64 // outputs dropped as already written
	Gaps       uint64 // outputs that arrived past a hole: must stay 0
	pending    map[uint64]byte
}

// NewMerger writes the merged console to out.
func NewMerger(out io.Writer) *Merger {
	return &Merger{out: out, next: 1, pending: map[uint64]byte{}}
}

// Written is the number of console bytes written.
func (m *Merger) Written() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.next - 1
}

// Read consumes one replica's stream until EOF, calling onEpoch for each
// progress line and onJoin for a completed join (either may be nil).
// Lines it cannot parse are an error.
func (m *Merger) Read(r io.Reader, onEpoch, onJoin func(uint64)) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && (f[0] == "e" || f[0] == "j"):
			n, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return fmt.Errorf("console stream: bad line %q", sc.Text())
			}
			if cb := map[string]func(uint64){"e": onEpoch, "j": onJoin}[f[0]]; cb != nil {
				cb(n)
			}
		case len(f) == 3 && f[0] == "o":
			seq, err1 := strconv.ParseUint(f[1], 10, 64)
			b, err2 := strconv.ParseUint(f[2], 16, 8)
			if err1 != nil || err2 != nil {
				return fmt.Errorf("console stream: bad line %q", sc.Text())
			}
			if err := m.put(seq, byte(b)); err != nil {
				return err
			}
		default:
			return fmt.Errorf("console stream: bad line %q", sc.Text())
		}
	}
	return sc.Err()
}

func (m *Merger) put(seq uint64, b byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case seq < m.next:
		m.Duplicates++
		return nil
	case seq > m.next:
		// A hole: hold it; a correct run fills it from the other stream.
		if _, ok := m.pending[seq]; ok {
			m.Duplicates++
		}
		m.pending[seq] = b
		return nil
	}
	if _, err := m.out.Write([]byte{b}); err != nil {
		return err
	}
	m.next++
	for {
		b, ok := m.pending[m.next]
		if !ok {
			return nil
		}
		delete(m.pending, m.next)
		if _, err := m.out.Write([]byte{b}); err != nil {
			return err
		}
		m.next++
	}
}

// Close reports outputs still waiting behind a hole: with both streams
// ended they are a gap, which a correct run never has.
func (m *Merger) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.pending) > 0 {
		m.Gaps = uint64(len(m.pending))
		return fmt.Errorf("console has a gap: output %d never arrived, %d later ones held", m.next, len(m.pending))
	}
	return nil
}

// FileSink writes console bytes to a file shared by the replicas (exactly
// once at the sink: --console-out). Console sequence numbers count bytes
// from 1, so a file of n bytes holds outputs 1..n: a new primary that opens
// it after a failover drops every output the file already holds.
type FileSink struct {
	mu     sync.Mutex
	path   string
	fresh  bool
	f      *os.File
	last   uint64
	opened bool
	wrote  bool // this sink has written: a gap is its own, not a foreign file
}

// CheckConsoleFile reports why path cannot be a console file: a directory,
// or a file whose directory does not exist.
func CheckConsoleFile(path string) error {
	st, err := os.Stat(path)
	switch {
	case err == nil && st.Mode().IsRegular():
		return nil
	case err == nil:
		return fmt.Errorf("%s is not a regular file", path)
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	dir, err := os.Stat(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("the directory of %s: %w", path, err)
	}
	if !dir.IsDir() {
		return fmt.Errorf("the directory of %s is not a directory", path)
	}
	return nil
}

// ResetConsoleFile empties (or creates) the console file at the start of
// a run, durably, so that no output of an earlier run survives it.
func ResetConsoleFile(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// NewFileSink writes to path. A fresh sink (the primary's, at the start of
// a run) truncates the file when it first writes; otherwise (a backup's) it
// appends after what the file holds then.
func NewFileSink(path string, fresh bool) *FileSink { return &FileSink{path: path, fresh: fresh} }

func (s *FileSink) open() error {
	// Not O_APPEND: output n is written at offset n-1, so a stale
	// replica's late write of outputs the file holds rewrites the same
	// bytes in place instead of adding them again (issue 12: a paused old
	// primary's write that lands after the new primary's).
	flags := os.O_WRONLY | os.O_CREATE
	if s.fresh {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(s.path, flags, 0o644)
	if err != nil {
		return fmt.Errorf("console file: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("console file: %w", err)
	}
	s.f, s.last, s.opened = f, uint64(st.Size()), true
	return nil
}

// Emit writes the outputs the file does not hold yet, each at its place.
func (s *FileSink) Emit(outs []epoch.Output) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(outs) == 0 {
		return nil
	}
	if !s.opened {
		if err := s.open(); err != nil {
			return err
		}
	}
	var buf []byte
	last := s.last
	for _, o := range outs {
		first, b := outputBytes(o)
		switch {
		case o.Seq <= last:
			continue
		case first > last+1 && !s.fresh && !s.wrote:
			return fmt.Errorf("console file %s holds %d bytes, but this replica goes on from output %d: it is not the file the primary wrote (both replicas must name the same shared --console-out)", s.path, last, first)
		case first > last+1:
			return fmt.Errorf("console file %s holds %d bytes; output %d would leave a gap", s.path, last, first)
		}
		buf = append(buf, b[last+1-first:]...)
		last = o.Seq
	}
	if len(buf) == 0 {
		return nil
	}
	n, err := s.f.WriteAt(buf, int64(s.last))
	s.last += uint64(n) // a short write leaves the rest to emit
	s.wrote = s.wrote || n > 0
	if err != nil {
		return fmt.Errorf("console file: %w", err)
	}
	return nil
}

// Progress does nothing for a file.
func (s *FileSink) Progress(uint64) error { return nil }

// Flush does nothing: Emit writes through to the file.
func (s *FileSink) Flush() error { return nil }
