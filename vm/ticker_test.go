package vm

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// checkTickerLines verifies ticker's console: lines "tick N clock=C
// rand=R sum=S" for N = 1..want, in order, each S the FNV-1a 64 checksum
// of every clock (8 bytes LE) and rand (4 bytes LE) so far (docs/board.md).
func checkTickerLines(out string, want int) error {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != want {
		return fmt.Errorf("%d lines, want %d", len(lines), want)
	}
	sum := uint64(0xcbf29ce484222325)
	feed := func(b []byte) {
		for _, c := range b {
			sum ^= uint64(c)
			sum *= 0x100000001b3
		}
	}
	for i, line := range lines {
		var n int
		var clock uint64
		var rnd uint32
		var got uint64
		if _, err := fmt.Sscanf(line, "tick %d clock=%d rand=%x sum=%x", &n, &clock, &rnd, &got); err != nil {
			return fmt.Errorf("line %d %q: %v", i+1, line, err)
		}
		if n != i+1 {
			return fmt.Errorf("line %d is tick %s", i+1, strconv.Itoa(n))
		}
		feed(binary.LittleEndian.AppendUint64(nil, clock))
		feed(binary.LittleEndian.AppendUint32(nil, rnd))
		if got != sum {
			return fmt.Errorf("tick %d: sum %016x, recomputed %016x", n, got, sum)
		}
	}
	return nil
}
