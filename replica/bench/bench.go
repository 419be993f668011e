// Package bench measures hvft the way people choose a fault-tolerance
// system: a guest on bare Unicorn against hvft run and against replicated
// pairs (both protocols), the paper's epoch-length sweep, and failover
// timings over many kills. It renders the report as a table, JSON, CSV and
// plots. Every figure is measured in the same run as its baseline.
package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"time"

	"hvft/epoch"
	"hvft/guests"
	"hvft/replica"
	"hvft/vm"
	"hvft/vm/guestelf"
	"hvft/vm/tlb"
)

// Options size a run.
type Options struct {
	Quick  bool
	Reps   int    // repetitions per figure (median taken)
	Kills  int    // failovers per kind
	OutDir string // where plots and disk images go
	// Executable is the hvft binary, run under callgrind for instruction
	// counts ("" skips them).
	Executable string
	// Progress, if set, hears what is being measured.
	Progress func(format string, args ...any)
}

func (o *Options) defaults() {
	if o.Reps <= 0 {
		o.Reps = 5
	}
	if o.Kills <= 0 {
		o.Kills = 20
		if o.Quick {
			o.Kills = 4
		}
	}
	if o.OutDir == "" {
		o.OutDir = "hvft-bench"
	}
	if o.Progress == nil {
		o.Progress = func(string, ...any) {}
	}
}

// Stat is a figure over repetitions.
type Stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

func statOf(xs []float64) Stat {
	d := distOf(xs)
	return Stat{Median: d.Median, Min: d.Min, Max: d.Max}
}

// Row is one guest in one mode.
type Row struct {
	Guest string `json:"guest"`
	Mode  string `json:"mode"` // bare, run, replicated, strict
	// Seconds is the run time; Blocks the guest's translation blocks (the
	// epoch clock's unit, the same in every mode).
	Seconds      Stat    `json:"seconds"`
	Blocks       uint64  `json:"blocks"`
	BlocksPerSec float64 `json:"blocks_per_sec"`
	RatioToBare  float64 `json:"ratio_to_bare,omitempty"` // 0: bare cannot run this guest
	RatioToRun   float64 `json:"ratio_to_run,omitempty"`
	Epochs       uint64  `json:"epochs,omitempty"`
	EpochsPerSec float64 `json:"epochs_per_sec,omitempty"`
	LogBytes     uint64  `json:"log_bytes,omitempty"`
	LogPerEpoch  float64 `json:"log_bytes_per_epoch,omitempty"`
	LogPerSec    float64 `json:"log_bytes_per_sec,omitempty"`
	LagEpochs    float64 `json:"backup_lag_epochs,omitempty"` // median over epochs
	LagMS        float64 `json:"backup_lag_ms,omitempty"`
	TLBMisses    uint64  `json:"tlb_misses,omitempty"`
}

// SweepPoint is one point of the epoch-length sweep: run time divided by
// the guest's baseline (bare Unicorn for compute; unreplicated hvft for
// ticker, which bare Unicorn cannot run).
type SweepPoint struct {
	Guest       string  `json:"guest"`
	Protocol    string  `json:"protocol"`
	EpochBlocks uint64  `json:"epoch_blocks"`
	Normalized  float64 `json:"normalized"`
	Baseline    string  `json:"baseline"`
}

// Dist is a distribution in milliseconds.
type Dist struct {
	Min    float64 `json:"min"`
	Median float64 `json:"median"`
	P99    float64 `json:"p99"`
	Max    float64 `json:"max"`
}

func distOf(xs []float64) Dist {
	if len(xs) == 0 {
		return Dist{}
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	p99 := s[(len(s)*99+99)/100-1]
	med := s[len(s)/2]
	if len(s)%2 == 0 { // a true median: the mean of the middle two
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Dist{Min: s[0], Median: med, P99: p99, Max: s[len(s)-1]}
}

// FailoverStats summarises the failovers of one kind.
type FailoverStats struct {
	Kind       string `json:"kind"` // "closed link" (a SIGKILL) or "silent" (a stopped primary)
	Kills      int    `json:"kills"`
	Detect     Dist   `json:"detect_ms"`
	Replay     Dist   `json:"replay_ms"`
	KillToLive Dist   `json:"kill_to_live_ms"`
}

// Report is everything one run measured.
type Report struct {
	Date     string          `json:"date"`
	Host     string          `json:"host"`
	Quick    bool            `json:"quick"`
	Reps     int             `json:"reps"`
	Rows     []Row           `json:"rows"`
	Sweep    []SweepPoint    `json:"sweep"`
	Failover []FailoverStats `json:"failover"`
	// EpochCost is the fixed cost of one epoch boundary.
	EpochCost EpochCost `json:"epoch_cost"`
	// Join is a backup joining a primary whose guest writes RAM.
	Join JoinStats `json:"join"`
	// Instructions are host-instruction counts under callgrind (absent
	// where valgrind is not installed).
	Instructions []InstructionCount `json:"instructions,omitempty"`
	// Linux are real programs under hvft run --linux, against
	// qemu-x86_64 and native runs.
	Linux []LinuxBench `json:"linux"`
	Plots []string     `json:"plots"`
}

// EpochCost is the per-epoch fixed cost (stop, hash, record, restart):
// compute run unreplicated with short epochs against the same run with
// long ones, in one run, the difference divided by the extra epochs.
type EpochCost struct {
	ShortBlocks, LongBlocks uint64
	ShortEpochs, LongEpochs uint64
	// Micros is the cost of one epoch in microseconds, per repetition.
	Micros Stat `json:"micros"`
}

// JoinStats is the guest's pause for the stop-and-copy of a join, writing
// RAM without pause, beside the pause of an idle guest of the same RAM
// size (the baseline).
type JoinStats struct {
	RAMBytes    uint64  `json:"ram_bytes"`
	PauseMS     Stat    `json:"pause_ms"`
	IdlePauseMS Stat    `json:"idle_pause_ms"`
	PrecopyMS   Stat    `json:"precopy_ms"`
	ResentMiB   float64 `json:"resent_mib"` // median bytes re-sent at the stop
}

// InstructionCount is the host instructions spent inside Unicorn's run
// calls (hooks included) per guest translation block, counted by callgrind:
// a figure that does not move with the machine's load.
type InstructionCount struct {
	Guest    string  `json:"guest"`
	Mode     string  `json:"mode"` // bare, clock (bare + the block hook), run, run-adaptive
	Total    uint64  `json:"instructions"`
	PerBlock float64 `json:"per_block"`
}

// workload is a guest and its arguments, full and quick.
type workload struct {
	guest       string
	args, quick []string
	disk        bool
	bare        bool // bare Unicorn can run it (it waits for no device)
}

var workloads = []workload{
	{guest: "compute", args: []string{"4", "1"}, quick: []string{"1", "1"}, bare: true},
	{guest: "branchy", args: []string{"64", "3000"}, quick: []string{"64", "300"}, bare: true},
	{guest: "ticker", args: []string{"100", "1000"}, quick: []string{"20", "1000"}},
	{guest: "tlbstress", args: []string{"8", "2"}, quick: []string{"4", "1"}, bare: true},
	{guest: "diskkv", args: []string{"run", "100", "1", "8"}, quick: []string{"run", "30", "1", "8"}, disk: true},
}

// workloadNamed returns the workload of a guest in workloads.
func workloadNamed(guest string) workload {
	for _, w := range workloads {
		if w.guest == guest {
			return w
		}
	}
	panic("bench: no workload " + guest)
}

// defaultEpoch is hvft's default epoch length.
const defaultEpoch = 100_000

// Run measures everything.
func Run(ctx context.Context, opt Options) (*Report, error) {
	opt.defaults()
	if err := os.MkdirAll(opt.OutDir, 0o755); err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	r := &Report{Date: time.Now().UTC().Format(time.RFC3339), Host: fmt.Sprintf("%s, %d cores, %s/%s", host, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH),
		Quick: opt.Quick, Reps: opt.Reps}
	cpu, err := vm.ProbeCPUModel()
	if err != nil {
		return nil, err
	}
	env := &runner{opt: opt, cpu: cpu}
	for _, w := range workloads {
		rows, err := env.matrix(ctx, w)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", w.guest, err)
		}
		r.Rows = append(r.Rows, rows...)
	}
	if r.EpochCost, err = env.epochCost(ctx); err != nil {
		return nil, fmt.Errorf("epoch cost: %w", err)
	}
	if r.Join, err = env.join(ctx); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	if r.Instructions, err = instructionCounts(ctx, opt); err != nil {
		return nil, fmt.Errorf("callgrind: %w", err)
	}
	if r.Linux, err = env.linux(ctx); err != nil {
		return nil, fmt.Errorf("linux branchy: %w", err)
	}
	if r.Sweep, err = env.sweep(ctx); err != nil {
		return nil, fmt.Errorf("epoch sweep: %w", err)
	}
	if r.Failover, err = env.failovers(ctx); err != nil {
		return nil, fmt.Errorf("failover: %w", err)
	}
	if r.Plots, err = plotSweep(r.Sweep, opt.OutDir); err != nil {
		return nil, fmt.Errorf("plotting: %w", err)
	}
	return r, nil
}

type runner struct {
	opt Options
	cpu *vm.CPUModel
}

func (e *runner) machine(w workload, epochBlocks uint64) (replica.Machine, error) {
	return e.clocked(w, epochBlocks, vm.ClockAlways)
}

func (e *runner) clocked(w workload, epochBlocks uint64, clock vm.EpochClock) (replica.Machine, error) {
	data, ok := guests.Builtin(w.guest)
	if !ok {
		return replica.Machine{}, fmt.Errorf("no built-in guest %s", w.guest)
	}
	img, err := guestelf.Parse(data, vm.DefaultRAMSize, vm.ImageMinAddr)
	if err != nil {
		return replica.Machine{}, err
	}
	args := w.args
	if e.opt.Quick {
		args = w.quick
	}
	m := replica.Machine{Image: img, EpochBlocks: epochBlocks, Config: vm.Config{RAMSize: vm.DefaultRAMSize,
		TLB: tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}, Args: append([]string{w.guest}, args...), Clock: clock}}
	if w.disk {
		m.DiskPath = filepath.Join(e.opt.OutDir, fmt.Sprintf("disk-%d.img", time.Now().UnixNano()))
		if m.Config.DiskSectors, err = vm.DiskSectorsOf(m.DiskPath, 1<<20); err != nil {
			return m, err
		}
	}
	return m, nil
}

func cleanup(m replica.Machine) {
	if m.DiskPath != "" {
		os.Remove(m.DiskPath)
		os.Remove(vm.FencePath(m.DiskPath)) // the replicas' handshake made it
		os.Remove(replica.ProofPath(m.DiskPath))
	}
}

// solo runs the machine unreplicated and returns its time and stats.
func (e *runner) solo(ctx context.Context, m replica.Machine) (time.Duration, vm.Stats, error) {
	r, err := replica.RunAlone(ctx, m, vm.LiveConfig{CPU: e.cpu}, vm.RunOptions{}, nil)
	return r.Elapsed, r.Stats, err
}

// matrix measures one workload in every mode.
func (e *runner) matrix(ctx context.Context, w workload) ([]Row, error) {
	var bare, run, bounded, strict, arun, abounded []float64
	var runStats vm.Stats
	var pb, ps, pa pairResult
	for rep := 0; rep < e.opt.Reps; rep++ {
		e.opt.Progress("%s: repetition %d of %d", w.guest, rep+1, e.opt.Reps)
		m, err := e.machine(w, defaultEpoch)
		if err != nil {
			return nil, err
		}
		if w.bare {
			b, err := vm.RunBare(m.Image, m.Config.RAMSize, m.Config.Args, 0)
			if err != nil {
				return nil, err
			}
			bare = append(bare, b.Elapsed.Seconds())
		}
		d, st, err := e.solo(ctx, m)
		cleanup(m)
		if err != nil {
			return nil, err
		}
		run, runStats = append(run, d.Seconds()), st
		am, err := e.clocked(w, defaultEpoch, vm.ClockAdaptive)
		if err != nil {
			return nil, err
		}
		d, _, err = e.solo(ctx, am)
		cleanup(am)
		if err != nil {
			return nil, err
		}
		arun = append(arun, d.Seconds())
		if am, err = e.clocked(w, defaultEpoch, vm.ClockAdaptive); err != nil {
			return nil, err
		}
		p, err := e.pair(ctx, am, epoch.Bounded, nil)
		cleanup(am)
		if err != nil {
			return nil, err
		}
		abounded, pa = append(abounded, p.seconds), p
		for _, mode := range []epoch.Mode{epoch.Bounded, epoch.Strict} {
			m, err := e.machine(w, defaultEpoch)
			if err != nil {
				return nil, err
			}
			p, err := e.pair(ctx, m, mode, nil)
			cleanup(m)
			if err != nil {
				return nil, err
			}
			if mode == epoch.Bounded {
				bounded, pb = append(bounded, p.seconds), p
			} else {
				strict, ps = append(strict, p.seconds), p
			}
		}
	}
	row := func(mode string, secs []float64) Row {
		st := statOf(secs)
		r := Row{Guest: w.guest, Mode: mode, Seconds: st, Blocks: runStats.Blocks, BlocksPerSec: float64(runStats.Blocks) / st.Median}
		if len(bare) > 0 {
			r.RatioToBare = st.Median / statOf(bare).Median
		}
		if mode != "bare" {
			// Replication's cost is against hvft run with the same clock.
			base := run
			if mode == "run-adaptive" || mode == "repl-adaptive" {
				base = arun
			}
			r.RatioToRun = st.Median / statOf(base).Median
			r.Epochs, r.EpochsPerSec, r.TLBMisses = runStats.Epochs, float64(runStats.Epochs)/st.Median, runStats.TLBMisses
		}
		return r
	}
	var rows []Row
	if len(bare) > 0 {
		rows = append(rows, row("bare", bare))
	}
	rows = append(rows, row("run", run))
	ar := row("run-adaptive", arun)
	ar.Epochs, ar.EpochsPerSec = pa.epochs, float64(pa.epochs)/ar.Seconds.Median
	rows = append(rows, ar)
	for _, c := range []struct {
		mode string
		secs []float64
		p    pairResult
	}{{"replicated", bounded, pb}, {"strict", strict, ps}, {"repl-adaptive", abounded, pa}} {
		r := row(c.mode, c.secs)
		r.Epochs, r.TLBMisses = c.p.epochs, c.p.misses
		r.EpochsPerSec = float64(c.p.epochs) / r.Seconds.Median
		r.LogBytes = c.p.logBytes
		if c.p.epochs > 0 {
			r.LogPerEpoch = float64(c.p.logBytes) / float64(c.p.epochs)
		}
		r.LogPerSec = float64(c.p.logBytes) / c.p.seconds
		r.LagEpochs, r.LagMS = c.p.lagEpochs, c.p.lagMS
		rows = append(rows, r)
	}
	return rows, nil
}

// sweep measures normalized run time against epoch length.
func (e *runner) sweep(ctx context.Context) ([]SweepPoint, error) {
	lengths := []uint64{1_000, 4_000, 16_000, 64_000, 256_000, 1_000_000}
	if e.opt.Quick {
		lengths = []uint64{4_000, 64_000, 1_000_000}
	}
	var pts []SweepPoint
	for _, w := range []workload{workloadNamed("compute"), workloadNamed("ticker")} {
		base, label := 0.0, "bare Unicorn"
		m, err := e.machine(w, defaultEpoch)
		if err != nil {
			return nil, err
		}
		if w.bare {
			var xs []float64
			for i := 0; i < e.opt.Reps; i++ {
				b, err := vm.RunBare(m.Image, m.Config.RAMSize, m.Config.Args, 0)
				if err != nil {
					return nil, err
				}
				xs = append(xs, b.Elapsed.Seconds())
			}
			base = statOf(xs).Median
		} else {
			label = "unreplicated hvft"
			var xs []float64
			for i := 0; i < e.opt.Reps; i++ {
				d, _, err := e.solo(ctx, m)
				if err != nil {
					return nil, err
				}
				xs = append(xs, d.Seconds())
			}
			base = statOf(xs).Median
		}
		for _, n := range lengths {
			for _, mode := range []epoch.Mode{epoch.Bounded, epoch.Strict} {
				e.opt.Progress("sweep: %s, %d-block epochs, %v", w.guest, n, mode)
				var xs []float64
				for i := 0; i < e.opt.Reps; i++ {
					m, err := e.machine(w, n)
					if err != nil {
						return nil, err
					}
					p, err := e.pair(ctx, m, mode, nil)
					if err != nil {
						return nil, err
					}
					xs = append(xs, p.seconds)
				}
				pts = append(pts, SweepPoint{Guest: w.guest, Protocol: mode.String(), EpochBlocks: n, Normalized: statOf(xs).Median / base, Baseline: label})
			}
		}
	}
	return pts, nil
}
