package guestelf

import (
	"encoding/binary"
	"strings"
	"testing"

	"hvft/guests"
)

const ram = 16 << 20

func hello(t testing.TB) []byte {
	data, ok := guests.Builtin("hello")
	if !ok {
		t.Fatal("no hello image")
	}
	return append([]byte(nil), data...)
}

func TestParseBuiltins(t *testing.T) {
	for _, g := range guests.List() {
		data, _ := guests.Builtin(g.Name)
		img, err := Parse(data, ram, 0x2000)
		if err != nil {
			t.Fatalf("%s: %v", g.Name, err)
		}
		if img.Entry != 0x100000 || len(img.Segments) == 0 {
			t.Errorf("%s: entry %#x, %d segments", g.Name, img.Entry, len(img.Segments))
		}
	}
}

// phdr returns the offset of program header i.
func phdr(data []byte, i int) int {
	off := binary.LittleEndian.Uint64(data[32:])
	size := binary.LittleEndian.Uint16(data[54:])
	return int(off) + i*int(size)
}

func TestParseRejectsBadImages(t *testing.T) {
	good := hello(t)
	cases := map[string]struct {
		data []byte
		want string
	}{
		"empty":     {nil, "not an ELF"},
		"garbage":   {[]byte(strings.Repeat("garbage!", 100)), "not an ELF"},
		"truncated": {good[:100], ""},
		"class32": {func() []byte {
			d := hello(t)
			d[4] = 1
			return d
		}(), ""},
		"machine": {func() []byte {
			d := hello(t)
			binary.LittleEndian.PutUint16(d[18:], 3) // EM_386
			return d
		}(), "machine"},
		"dynamic type": {func() []byte {
			d := hello(t)
			binary.LittleEndian.PutUint16(d[16:], 3) // ET_DYN
			return d
		}(), "static executable"},
		"segment outside RAM": {func() []byte {
			d := hello(t)
			p := phdr(d, 0)
			binary.LittleEndian.PutUint64(d[p+24:], ram-0x100) // p_paddr
			return d
		}(), "outside RAM"},
		"segment in boot area": {func() []byte {
			d := hello(t)
			binary.LittleEndian.PutUint64(d[phdr(d, 0)+24:], 0x1000)
			return d
		}(), "outside RAM"},
		"file range beyond file": {func() []byte {
			d := hello(t)
			binary.LittleEndian.PutUint64(d[phdr(d, 0)+8:], 1<<40) // p_offset
			return d
		}(), ""},
		"entry outside code": {func() []byte {
			d := hello(t)
			binary.LittleEndian.PutUint64(d[24:], 0x5000)
			return d
		}(), "entry point"},
	}
	for name, c := range cases {
		_, err := Parse(c.data, ram, 0x2000)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if c.want != "" && !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not mention %q", name, err, c.want)
		}
	}
}

// FuzzParse: no input makes the loader panic or accept a segment outside RAM.
func FuzzParse(f *testing.F) {
	f.Add(hello(f))
	f.Add([]byte("\x7fELF"))
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := Parse(data, ram, 0x2000)
		if err != nil {
			return
		}
		for _, s := range img.Segments {
			if s.Addr < 0x2000 || s.Addr+s.MemSize > ram || uint64(len(s.Data)) > s.MemSize {
				t.Fatalf("accepted segment %#x+%#x outside RAM", s.Addr, s.MemSize)
			}
		}
	})
}
