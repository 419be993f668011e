package vm

import (
	"context"
	"strings"
	"testing"

	"hvft/vm/tlb"
)

// TestInt1IsADebugTrap: INT1 (f1) raises #DB as a trap, as on x86-64:
// vector 1, the saved RIP past the byte, no error code. Unicorn reports it
// as #UD at the byte, so without the hypervisor's correction the int1
// guest sees vector 6 at insn+0. Under both epoch clocks, live and
// replayed (a backup must deliver the same vector at the same place).
func TestInt1IsADebugTrap(t *testing.T) {
	want := strings.Repeat("int1: vector=1 rip=insn+1 cs=0x8 rsp=same\n", 3) +
		"int1: db=3 ud=0\nint1 ok\n"
	for _, clock := range []EpochClock{ClockAlways, ClockAdaptive} {
		t.Run(clock.String(), func(t *testing.T) {
			cfg := Config{TLB: tlbConfig(64<<10, 32, tlb.Random, 3), Clock: clock}
			log := &Log{}
			live := runGuest(t, "int1", nil, cfg, nil, log, 5_000)
			if live.err != nil || live.res.ExitCode != 0 || string(live.out) != want {
				t.Fatalf("exit %d, %v; console:\n%s\nwant:\n%s", live.res.ExitCode, live.err, live.out, want)
			}
			if live.stats.Exceptions != 3 {
				t.Errorf("%d exceptions delivered, want the 3 INT1s", live.stats.Exceptions)
			}
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			rcfg := Config{TLB: tlbConfig(4<<10, tlb.MinEntries, tlb.FIFO, 7), Clock: clock}
			rep := runGuest(t, "int1", nil, rcfg, NewReplay(ctx, NewLogSource(log)), nil, 5_000)
			if rep.err != nil || rep.res.ExitCode != 0 {
				t.Fatalf("replay: exit %d, %v", rep.res.ExitCode, rep.err)
			}
			if err := sameTrail(live, rep); err != nil {
				t.Fatalf("replay: %v", err)
			}
		})
	}
}
