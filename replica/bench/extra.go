package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"hvft/epoch"
	"hvft/replica"
	"hvft/vm"
)

// epochCost measures the fixed cost of an epoch boundary: compute with
// short epochs against compute with long ones, interleaved, always
// clocked (the adaptive clock would end neither at a block count).
func (e *runner) epochCost(ctx context.Context) (EpochCost, error) {
	c := EpochCost{ShortBlocks: 200, LongBlocks: 1_000_000} // ~6,000 epochs against 2: the difference is well above the noise
	w := workloadNamed("compute")
	var micros []float64
	for i := 0; i < e.opt.Reps; i++ {
		e.opt.Progress("epoch cost: repetition %d of %d", i+1, e.opt.Reps)
		var secs [2]float64
		for k, n := range []uint64{c.ShortBlocks, c.LongBlocks} {
			m, err := e.machine(w, n)
			if err != nil {
				return c, err
			}
			d, st, err := e.solo(ctx, m)
			if err != nil {
				return c, err
			}
			secs[k] = d.Seconds()
			if k == 0 {
				c.ShortEpochs = st.Epochs
			} else {
				c.LongEpochs = st.Epochs
			}
		}
		if c.ShortEpochs <= c.LongEpochs {
			return c, fmt.Errorf("short epochs (%d) are no more than long ones (%d)", c.ShortEpochs, c.LongEpochs)
		}
		micros = append(micros, (secs[0]-secs[1])*1e6/float64(c.ShortEpochs-c.LongEpochs))
	}
	c.Micros = statOf(micros)
	return c, nil
}

// join measures a backup joining a primary whose guest writes RAM without
// pause (ramwriter), against one whose guest is idle (ticker, halted
// between ticks), with the same RAM.
func (e *runner) join(ctx context.Context) (JoinStats, error) {
	js := JoinStats{RAMBytes: 256 << 20}
	if e.opt.Quick {
		js.RAMBytes = 64 << 20
	}
	var pause, idle, precopy, resent []float64
	for i := 0; i < e.opt.Reps; i++ {
		e.opt.Progress("join: repetition %d of %d", i+1, e.opt.Reps)
		for _, g := range []workload{{guest: "ramwriter", args: []string{"4", "1500"}}, {guest: "ticker", args: []string{"300", "5000"}}} {
			j, err := e.joinOnce(ctx, g, js.RAMBytes)
			for tries := 1; errors.Is(err, errFinishedFirst) && tries < 4; tries++ {
				// The guest finished before the join did (a loaded host
				// slows the transfer, not the guest): more work.
				g.args = moreWork(g.guest, g.args)
				j, err = e.joinOnce(ctx, g, js.RAMBytes)
			}
			if err != nil {
				return js, fmt.Errorf("%s: %w", g.guest, err)
			}
			if g.guest == "ticker" {
				idle = append(idle, j.PauseMS)
				continue
			}
			pause, precopy = append(pause, j.PauseMS), append(precopy, j.PrecopyMS)
			resent = append(resent, float64(j.DirtyBytes)/(1<<20))
		}
	}
	js.PauseMS, js.IdlePauseMS, js.PrecopyMS = statOf(pause), statOf(idle), statOf(precopy)
	js.ResentMiB = statOf(resent).Median
	return js, nil
}

// errFinishedFirst is a join the primary's guest outran: its run ended
// before the joiner was in.
var errFinishedFirst = errors.New("the primary's guest finished before the join")

// moreWork multiplies by four the count of work units in the arguments of
// the join's guests (ramwriter's passes, ticker's ticks).
func moreWork(guest string, args []string) []string {
	at := map[string]int{"ramwriter": 1, "ticker": 0}[guest]
	out := append([]string(nil), args...)
	if at < len(out) {
		if n, err := strconv.ParseUint(out[at], 10, 64); err == nil {
			out[at] = strconv.FormatUint(4*n, 10)
		}
	}
	return out
}

// joinFailureTimeout is the failure timeout of the bench's joins: they
// measure the state transfer, and a loaded host can delay a frame of the
// stop-and-copy past the default half second, which would end the
// measurement as a false death.
const joinFailureTimeout = 5 * time.Second

func (e *runner) joinOnce(ctx context.Context, w workload, ram uint64) (replica.Join, error) {
	w.quick = w.args
	m, err := e.machine(w, defaultEpoch)
	if err != nil {
		return replica.Join{}, err
	}
	m.Config.RAMSize = ram
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return replica.Join{}, err
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	started := make(chan struct{})
	var prep *replica.Report
	var perr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		prep, perr = replica.RunPrimary(ctx, replica.PrimaryOptions{Options: replica.Options{Machine: m, Sink: replica.NewPlainSink(io.Discard), CPU: e.cpu,
			FailureTimeout: joinFailureTimeout, OnStart: func() { close(started) }}, Listener: ln, Mode: epoch.Bounded, MaxLag: 4})
	}()
	select {
	case <-started:
	case <-ctx.Done():
		wg.Wait()
		return replica.Join{}, fmt.Errorf("the primary did not start: %v", perr)
	}
	brep, berr := replica.RunBackup(ctx, replica.BackupOptions{Options: replica.Options{Machine: m, Sink: replica.NewPlainSink(io.Discard), CPU: e.cpu,
		FailureTimeout: joinFailureTimeout}, Primary: ln.Addr().String(), Join: true})
	wg.Wait()
	if perr == nil && berr != nil && prep != nil && len(prep.Joins) == 0 {
		return replica.Join{}, fmt.Errorf("%w: %v", errFinishedFirst, berr)
	}
	if err := errors.Join(perr, berr); err != nil {
		return replica.Join{}, err
	}
	if len(prep.Joins) != 1 || len(brep.Joins) != 1 || !brep.Joins[0].Verified || prep.FinalHash != brep.FinalHash {
		return replica.Join{}, fmt.Errorf("joins %+v / %+v, final hashes %s / %s", prep.Joins, brep.Joins, prep.FinalHash, brep.FinalHash)
	}
	return prep.Joins[0], nil
}

// instructionModes are the configurations callgrind counts.
var instructionModes = []string{"bare", "clock", "run", "run-adaptive"}

var collected = regexp.MustCompile(`Collected : (\d+)`)

// instructionCounts runs each bare-capable guest once per mode in a child
// process under callgrind, counting host instructions inside uc_emu_start
// only (guest code, hooks and fills; not the per-epoch work in Go). It
// needs valgrind and the hvft executable (Options.Executable), and is
// left out of --quick.
func instructionCounts(ctx context.Context, opt Options) ([]InstructionCount, error) {
	valgrind, err := exec.LookPath("valgrind")
	if err != nil || opt.Executable == "" || opt.Quick {
		return nil, nil
	}
	var out []InstructionCount
	for _, w := range workloads {
		if !w.bare || (opt.Quick && w.guest != "branchy") {
			continue
		}
		blocks := uint64(0)
		for _, mode := range instructionModes {
			opt.Progress("callgrind: %s, %s", w.guest, mode)
			var b []byte
			// Go's preemption signals can trip callgrind's signal
			// bookkeeping (an assertion in threads.c): they are turned
			// off, and a crashed count is retried.
			for try := 0; ; try++ {
				cmd := exec.CommandContext(ctx, valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", "--toggle-collect=uc_emu_start",
					opt.Executable, "--log-level", "error", "bench", "--instructions-of", mode+":"+w.guest)
				cmd.Env = append(os.Environ(), "GODEBUG=asyncpreemptoff=1")
				if b, err = cmd.CombinedOutput(); err == nil {
					break
				}
				if try == 2 || ctx.Err() != nil {
					return nil, fmt.Errorf("%s %s: %w\n%s", w.guest, mode, err, b)
				}
			}
			m := collected.FindSubmatch(b)
			if m == nil {
				return nil, fmt.Errorf("%s %s: no instruction count in callgrind's output:\n%s", w.guest, mode, b)
			}
			n, _ := strconv.ParseUint(string(m[1]), 10, 64)
			if mode == "run" {
				if blocks, err = blocksOf(b); err != nil {
					return nil, fmt.Errorf("%s: %w", w.guest, err)
				}
			}
			out = append(out, InstructionCount{Guest: w.guest, Mode: mode, Total: n})
		}
		for i := range out {
			if out[i].Guest == w.guest && blocks > 0 {
				out[i].PerBlock = float64(out[i].Total) / float64(blocks)
			}
		}
	}
	return out, nil
}

var blocksLine = regexp.MustCompile(`hvft-blocks (\d+)`)

func blocksOf(out []byte) (uint64, error) {
	m := blocksLine.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("the worker printed no block count")
	}
	return strconv.ParseUint(string(m[1]), 10, 64)
}

// RunOne runs one guest once in one mode ("bare:branchy", "run:compute",
// ...), with the quick arguments, and prints "hvft-blocks N" (the block
// clock's count, for the run modes): the child that instructionCounts
// runs under callgrind.
func RunOne(ctx context.Context, spec string, w io.Writer) error {
	mode, guest, ok := strings.Cut(spec, ":")
	if !ok {
		return fmt.Errorf("%q: want MODE:GUEST", spec)
	}
	var wl workload
	for _, x := range workloads {
		if x.guest == guest && x.bare {
			wl = x
		}
	}
	if wl.guest == "" {
		return fmt.Errorf("%q: no bare-capable workload %s", spec, guest)
	}
	cpu, err := vm.ProbeCPUModel()
	if err != nil {
		return err
	}
	e := &runner{opt: Options{Quick: true}, cpu: cpu}
	clock := vm.ClockAlways
	switch mode {
	case "bare", "clock":
		m, err := e.machine(wl, defaultEpoch)
		if err != nil {
			return err
		}
		if mode == "bare" {
			_, err = vm.RunBare(m.Image, m.Config.RAMSize, m.Config.Args, 0)
		} else {
			_, err = vm.RunBareWithClock(m.Image, m.Config.RAMSize, m.Config.Args)
		}
		return err
	case "run":
	case "run-adaptive":
		clock = vm.ClockAdaptive
	default:
		return fmt.Errorf("%q: mode %s is none of %v", spec, mode, instructionModes)
	}
	m, err := e.clocked(wl, defaultEpoch, clock)
	if err != nil {
		return err
	}
	_, st, err := e.solo(ctx, m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "hvft-blocks %d\n", st.Blocks)
	return err
}
