package epoch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"hvft/record"
)

// A frame on the wire:
//
//	u32 length of the rest | u8 version | u8 type | payload | u32 CRC-32C
//
// all little-endian; the CRC covers version, type and payload.
const (
	frameHeader = 4
	frameFixed  = 2 + 4 // version, type, CRC
	// MaxFrame bounds a frame's length field, so a corrupt or hostile
	// length never makes a reader allocate without bound.
	MaxFrame   = 1 << 20
	maxEvents  = 64
	maxString  = 4096
	maxEventSz = 64 << 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrFrame wraps every decoding failure: the link carrying it is corrupt.
var ErrFrame = errors.New("bad frame")

func frameErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrFrame, fmt.Sprintf(format, args...))
}

// AppendFrame appends m, framed, to buf.
func AppendFrame(buf []byte, m Message) ([]byte, error) {
	start := len(buf)
	buf = append(buf, 0, 0, 0, 0, Version, byte(m.Type))
	var err error
	if buf, err = appendPayload(buf, m); err != nil {
		return buf[:start], err
	}
	crc := crc32.Checksum(buf[start+frameHeader:], castagnoli)
	buf = binary.LittleEndian.AppendUint32(buf, crc)
	n := len(buf) - start - frameHeader
	if n > MaxFrame {
		return buf[:start], fmt.Errorf("%v message of %d bytes exceeds the %d-byte frame limit", m.Type, n, MaxFrame)
	}
	binary.LittleEndian.PutUint32(buf[start:], uint32(n))
	return buf, nil
}

func appendString(buf []byte, s string) []byte {
	if len(s) > maxString {
		s = s[:maxString]
	}
	buf = binary.LittleEndian.AppendUint16(buf, uint16(len(s)))
	return append(buf, s...)
}

func appendBool(buf []byte, b bool) []byte {
	if b {
		return append(buf, 1)
	}
	return append(buf, 0)
}

func appendPayload(buf []byte, m Message) ([]byte, error) {
	le := binary.LittleEndian
	missing := fmt.Errorf("%v message without its body", m.Type)
	switch m.Type {
	case TypeHello:
		if m.Hello == nil {
			return buf, missing
		}
		c := m.Hello.Config
		buf = append(buf, c.ImageDigest[:]...)
		buf = append(buf, c.ArgsDigest[:]...)
		buf = le.AppendUint64(buf, c.RAMSize)
		buf = le.AppendUint64(buf, c.EpochBlocks)
		buf = le.AppendUint32(buf, c.BoardVersion)
		buf = le.AppendUint64(buf, c.DiskSectors)
		buf = append(buf, c.DiskID[:]...)
		buf = appendString(buf, c.Console)
		buf = appendString(buf, c.Engine)
		buf = appendString(buf, c.Clock)
		buf = appendString(buf, c.Arbiter)
		buf = appendString(buf, c.DiskFile)
		buf = appendString(buf, c.Root)
		buf = appendString(buf, c.Journal)
		buf = le.AppendUint32(buf, c.JournalVersion)
		buf = appendBool(buf, m.Hello.Join)
	case TypeWelcome:
		if m.Welcome == nil {
			return buf, missing
		}
		buf = appendBool(buf, m.Welcome.Accepted)
		buf = appendString(buf, m.Welcome.Reason)
		buf = appendString(buf, m.Welcome.Arbiter)
		buf = appendString(buf, m.Welcome.Proof)
	case TypeAnswer:
		a := m.Answer
		if a == nil {
			return buf, missing
		}
		buf = le.AppendUint64(buf, a.Seq)
		buf = append(buf, byte(a.Kind), a.Size)
		buf = le.AppendUint32(buf, a.Port)
		buf = le.AppendUint32(buf, a.Sub)
		buf = le.AppendUint64(buf, a.Value)
		for _, r := range a.Regs {
			buf = le.AppendUint32(buf, r)
		}
		if a.Kind == KindHost {
			buf = le.AppendUint32(buf, uint32(len(a.Data)))
			buf = append(buf, a.Data...)
		}
	case TypeEpochEnd:
		e := m.EpochEnd
		if e == nil {
			return buf, missing
		}
		if len(e.Events) > maxEvents {
			return buf, fmt.Errorf("epoch %d carries %d events, more than %d", e.Epoch, len(e.Events), maxEvents)
		}
		buf = le.AppendUint64(buf, e.Epoch)
		buf = le.AppendUint64(buf, e.Clock)
		buf = le.AppendUint64(buf, e.RIP)
		buf = append(buf, byte(e.Reason))
		buf = le.AppendUint64(buf, e.Answers)
		buf = append(buf, e.Hash[:]...)
		buf = appendBool(buf, e.RAMHashed)
		buf = append(buf, byte(len(e.Events)))
		for _, ev := range e.Events {
			if len(ev.Data) > maxEventSz {
				return buf, fmt.Errorf("event data of %d bytes exceeds %d", len(ev.Data), maxEventSz)
			}
			buf = append(buf, ev.IRQ)
			buf = le.AppendUint64(buf, ev.Arg)
			buf = le.AppendUint32(buf, uint32(len(ev.Data)))
			buf = append(buf, ev.Data...)
		}
	case TypeAck:
		if m.Ack == nil {
			return buf, missing
		}
		buf = le.AppendUint64(buf, m.Ack.Epoch)
		buf = le.AppendUint64(buf, m.Ack.Answers)
		buf = le.AppendUint64(buf, m.Ack.Executed)
	case TypeHeartbeat:
	case TypeRelease:
		if m.Release == nil {
			return buf, missing
		}
		buf = le.AppendUint64(buf, m.Release.Output)
	case TypeDivergence:
		d := m.Divergence
		if d == nil {
			return buf, missing
		}
		buf = le.AppendUint64(buf, d.Epoch)
		buf = le.AppendUint64(buf, d.Clock)
		buf = le.AppendUint64(buf, d.RIP)
		buf = appendString(buf, d.Detail)
	case TypeGoodbye:
		if m.Goodbye == nil {
			return buf, missing
		}
		buf = le.AppendUint32(buf, m.Goodbye.ExitCode)
		buf = append(buf, m.Goodbye.Hash[:]...)
		buf = appendString(buf, m.Goodbye.Stopped)
	case TypeJoinRAM:
		if m.JoinRAM == nil {
			return buf, missing
		}
		buf = le.AppendUint64(buf, m.JoinRAM.Offset)
		buf = le.AppendUint32(buf, uint32(len(m.JoinRAM.Data)))
		buf = append(buf, m.JoinRAM.Data...)
	case TypeJoinState:
		j := m.JoinState
		if j == nil {
			return buf, missing
		}
		buf = le.AppendUint64(buf, j.Epoch)
		buf = le.AppendUint64(buf, j.Answers)
		buf = append(buf, j.Hash[:]...)
		buf = le.AppendUint64(buf, j.Clock)
		buf = le.AppendUint32(buf, uint32(len(j.State)))
		buf = append(buf, j.State...)
	default:
		return buf, fmt.Errorf("cannot encode message type %d", m.Type)
	}
	return buf, nil
}

// ReadFrame reads one frame from r. Any malformed frame yields an error
// wrapping ErrFrame; it never panics and never allocates more than
// MaxFrame bytes.
func ReadFrame(r io.Reader) (Message, error) {
	var hdr [frameHeader]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Message{}, err
	}
	n := binary.LittleEndian.Uint32(hdr[:])
	if n < frameFixed || n > MaxFrame {
		return Message{}, frameErr("length %d outside %d..%d", n, frameFixed, MaxFrame)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Message{}, fmt.Errorf("%w: truncated: %v", ErrFrame, err)
	}
	return DecodeFrame(body)
}

// DecodeFrame decodes a frame's body (everything after the length).
func DecodeFrame(body []byte) (Message, error) {
	if len(body) < frameFixed {
		return Message{}, frameErr("%d bytes is too short", len(body))
	}
	payload, sum := body[:len(body)-4], binary.LittleEndian.Uint32(body[len(body)-4:])
	if crc32.Checksum(payload, castagnoli) != sum {
		return Message{}, frameErr("checksum mismatch")
	}
	if payload[0] != Version {
		return Message{}, frameErr("protocol version %d, this build speaks %d", payload[0], Version)
	}
	m := Message{Type: Type(payload[1])}
	d := decoder{buf: payload[2:]}
	switch m.Type {
	case TypeHello:
		var c MachineConfig
		copy(c.ImageDigest[:], d.bytes(32))
		copy(c.ArgsDigest[:], d.bytes(32))
		c.RAMSize, c.EpochBlocks = d.u64(), d.u64()
		c.BoardVersion = d.u32()
		c.DiskSectors = d.u64()
		copy(c.DiskID[:], d.bytes(16))
		c.Console = d.string()
		c.Engine = d.string()
		c.Clock = d.string()
		c.Arbiter = d.string()
		c.DiskFile, c.Root, c.Journal = d.string(), d.string(), d.string()
		c.JournalVersion = d.u32()
		m.Hello = &Hello{Config: c, Join: d.bool()}
	case TypeWelcome:
		m.Welcome = &Welcome{Accepted: d.bool(), Reason: d.string(), Arbiter: d.string(), Proof: d.string()}
	case TypeAnswer:
		a := &Answer{Seq: d.u64(), Kind: record.AnswerKind(d.u8()), Size: d.u8(), Port: d.u32(), Sub: d.u32(), Value: d.u64()}
		for i := range a.Regs {
			a.Regs[i] = d.u32()
		}
		if a.Kind == KindHost {
			n := d.u32()
			if n > MaxFrame {
				return Message{}, frameErr("answer with %d bytes of data", n)
			}
			a.Data = d.bytes(int(n))
		}
		m.Answer = a
	case TypeEpochEnd:
		e := &EpochEnd{Epoch: d.u64(), Clock: d.u64(), RIP: d.u64(), Reason: record.StopReason(d.u8()), Answers: d.u64()}
		copy(e.Hash[:], d.bytes(16))
		e.RAMHashed = d.bool()
		n := int(d.u8())
		if n > maxEvents {
			return Message{}, frameErr("epoch end with %d events, more than %d", n, maxEvents)
		}
		for i := 0; i < n && d.err == nil; i++ {
			ev := Event{IRQ: d.u8(), Arg: d.u64()}
			size := d.u32()
			if size > maxEventSz {
				return Message{}, frameErr("event data of %d bytes exceeds %d", size, maxEventSz)
			}
			ev.Data = append([]byte(nil), d.bytes(int(size))...)
			e.Events = append(e.Events, ev)
		}
		m.EpochEnd = e
	case TypeAck:
		m.Ack = &Ack{Epoch: d.u64(), Answers: d.u64(), Executed: d.u64()}
	case TypeHeartbeat:
	case TypeRelease:
		m.Release = &Release{Output: d.u64()}
	case TypeDivergence:
		m.Divergence = &Divergence{Epoch: d.u64(), Clock: d.u64(), RIP: d.u64(), Detail: d.string()}
	case TypeGoodbye:
		g := &Goodbye{ExitCode: d.u32()}
		copy(g.Hash[:], d.bytes(16))
		g.Stopped = d.string()
		m.Goodbye = g
	case TypeJoinRAM:
		j := &JoinRAM{Offset: d.u64()}
		j.Data = append([]byte(nil), d.bytes(int(d.u32()))...)
		m.JoinRAM = j
	case TypeJoinState:
		j := &JoinState{Epoch: d.u64(), Answers: d.u64()}
		copy(j.Hash[:], d.bytes(16))
		j.Clock = d.u64()
		j.State = append([]byte(nil), d.bytes(int(d.u32()))...)
		m.JoinState = j
	default:
		return Message{}, frameErr("unknown message type %d", m.Type)
	}
	if d.err != nil {
		return Message{}, frameErr("%v message truncated", m.Type)
	}
	if len(d.buf) != 0 {
		return Message{}, frameErr("%v message has %d trailing bytes", m.Type, len(d.buf))
	}
	return m, nil
}

type decoder struct {
	buf []byte
	err error
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil || n < 0 || n > len(d.buf) {
		d.err = io.ErrUnexpectedEOF
		return nil
	}
	b := d.buf[:n]
	d.buf = d.buf[n:]
	return b
}

func (d *decoder) u8() uint8 {
	if b := d.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (d *decoder) bool() bool { return d.u8() != 0 }

func (d *decoder) u16() uint16 {
	if b := d.bytes(2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if b := d.bytes(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if b := d.bytes(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

func (d *decoder) string() string { return string(d.bytes(int(d.u16()))) }
