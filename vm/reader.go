package vm

import (
	"encoding/binary"
	"errors"
)

var errShort = errors.New("truncated")

// reader decodes little-endian fields, remembering the first error so that
// decoders read straight through and check once.
type reader struct {
	buf []byte
	err error
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil || n < 0 || n > len(r.buf) {
		r.err = errShort
		return nil
	}
	out := r.buf[:n]
	r.buf = r.buf[n:]
	return out
}

func (r *reader) u8() uint8 {
	if b := r.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) u32() uint32 {
	if b := r.bytes(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if b := r.bytes(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

func (r *reader) u16() uint16 {
	if b := r.bytes(2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

// count reads a count of records of size bytes each, refusing (as zero)
// one the remaining bytes cannot hold: a peer's count never sizes an
// allocation beyond what it sent.
func (r *reader) count(size int) uint64 {
	n := r.u64()
	if r.err == nil && n > uint64(len(r.buf)/size) {
		r.err = errShort
		return 0
	}
	return n
}
