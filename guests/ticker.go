package guests

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// CheckTicker verifies the console of the ticker guest: exactly want lines
// "tick N clock=C rand=R sum=S", N = 1..want in order, each S the FNV-1a
// 64 checksum of every value read so far (per tick: the clock's 8 bytes,
// then rand's 4, little-endian; docs/board.md). It is how tests prove that
// a console survived failovers complete, in order and once.
func CheckTicker(out string, want int) error {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if out == "" {
		lines = nil
	}
	if len(lines) != want {
		return fmt.Errorf("%d tick lines, want %d", len(lines), want)
	}
	sum := uint64(0xcbf29ce484222325)
	feed := func(b []byte) {
		for _, c := range b {
			sum ^= uint64(c)
			sum *= 0x100000001b3
		}
	}
	var lastClock uint64
	for i, line := range lines {
		var n int
		var clock, got uint64
		var rnd uint32
		if _, err := fmt.Sscanf(line, "tick %d clock=%d rand=%x sum=%x", &n, &clock, &rnd, &got); err != nil {
			return fmt.Errorf("line %d %q: %v", i+1, line, err)
		}
		if n != i+1 {
			return fmt.Errorf("line %d is tick %d", i+1, n)
		}
		if clock < lastClock {
			return fmt.Errorf("tick %d: clock went backwards (%d after %d)", n, clock, lastClock)
		}
		lastClock = clock
		feed(binary.LittleEndian.AppendUint64(nil, clock))
		feed(binary.LittleEndian.AppendUint32(nil, rnd))
		if got != sum {
			return fmt.Errorf("tick %d: sum %016x, recomputed %016x", n, got, sum)
		}
	}
	return nil
}
