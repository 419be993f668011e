package bench

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// JSON writes the report as JSON.
func (r *Report) JSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func ratio(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", x)
}

// Table writes the report for people.
func (r *Report) Table(w io.Writer) error {
	fmt.Fprintf(w, "hvft bench, %s, %s; medians of %d repetitions (min-max)\n\n", r.Date, r.Host, r.Reps)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "guest\tmode\tseconds\tblocks/s\tx bare\tx run\tepochs/s\tlog B/epoch\tlog KB/s\tlag epochs\tlag ms\tTLB misses\t")
	for _, row := range r.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%.3f (%.3f-%.3f)\t%.3g\t%s\t%s\t%.0f\t%.0f\t%.1f\t%.0f\t%.2f\t%d\t\n",
			row.Guest, row.Mode, row.Seconds.Median, row.Seconds.Min, row.Seconds.Max, row.BlocksPerSec,
			ratio(row.RatioToBare), ratio(row.RatioToRun), row.EpochsPerSec, row.LogPerEpoch, row.LogPerSec/1000,
			row.LagEpochs, row.LagMS, row.TLBMisses)
	}
	tw.Flush()
	c := r.EpochCost
	fmt.Fprintf(w, "\nper-epoch fixed cost (compute, %d-block epochs against %d-block ones, %d against %d epochs): %.2f us (%.2f-%.2f)\n",
		c.ShortBlocks, c.LongBlocks, c.ShortEpochs, c.LongEpochs, c.Micros.Median, c.Micros.Min, c.Micros.Max)
	j := r.Join
	fmt.Fprintf(w, "join pause, %d MiB, guest writing RAM: %.1f ms (%.1f-%.1f), pre-copy %.0f ms, %.1f MiB re-sent; idle guest (baseline): %.1f ms (%.1f-%.1f)\n",
		j.RAMBytes>>20, j.PauseMS.Median, j.PauseMS.Min, j.PauseMS.Max, j.PrecopyMS.Median, j.ResentMiB, j.IdlePauseMS.Median, j.IdlePauseMS.Min, j.IdlePauseMS.Max)
	if len(r.Instructions) > 0 {
		fmt.Fprintf(w, "\nhost instructions inside Unicorn per guest block (callgrind; one run each, exact):\n")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "guest	mode	instructions	per block	x bare	")
		bare := map[string]uint64{}
		for _, n := range r.Instructions {
			if n.Mode == "bare" {
				bare[n.Guest] = n.Total
			}
		}
		for _, n := range r.Instructions {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%.1f\t%.2fx\t\n", n.Guest, n.Mode, n.Total, n.PerBlock, float64(n.Total)/float64(max(bare[n.Guest], 1)))
		}
		tw.Flush()
	}
	if len(r.Linux) > 0 {
		fmt.Fprintf(w, "\nLinux programs (static), each a process, against qemu-x86_64 and native:\n")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "program\targs\tnative ms\tqemu ms\trun ms\tx qemu\tadaptive ms\tx qemu\t")
		for _, l := range r.Linux {
			if l.Skipped != "" {
				fmt.Fprintf(tw, "%s\t%v\tskipped: %s\t\t\t\t\t\t\n", l.Name, l.Args, l.Skipped)
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%.0f\t%.2fx\t%.0f\t%.2fx\t\n", l.Name, strings.Join(shortArgs(l.Args), " "),
				l.NativeMS.Median, l.QemuMS.Median, l.RunMS.Median, l.RunOverQemu, l.AdaptiveMS.Median, l.AdaptOverQemu)
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "\nepoch-length sweep (run time / baseline):\n")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "guest\tprotocol\tepoch blocks\tnormalized\tbaseline\t")
	for _, p := range r.Sweep {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.2f\t%s\t\n", p.Guest, p.Protocol, p.EpochBlocks, p.Normalized, p.Baseline)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nfailover of a replicated ticker, ms (min / median / p99 / max):\n")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "death\tkills\tdetection\treplay\tkill to live\t")
	for _, f := range r.Failover {
		d := func(x Dist) string { return fmt.Sprintf("%.1f / %.1f / %.1f / %.1f", x.Min, x.Median, x.P99, x.Max) }
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t\n", f.Kind, f.Kills, d(f.Detect), d(f.Replay), d(f.KillToLive))
	}
	tw.Flush()
	if len(r.Plots) > 0 {
		fmt.Fprintf(w, "\nplots: %v\n", r.Plots)
	}
	return nil
}

// CSV writes the matrix rows as CSV.
func (r *Report) CSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	cw.Write([]string{"guest", "mode", "seconds_median", "seconds_min", "seconds_max", "blocks", "blocks_per_sec",
		"ratio_to_bare", "ratio_to_run", "epochs", "epochs_per_sec", "log_bytes_per_epoch", "log_bytes_per_sec",
		"backup_lag_epochs", "backup_lag_ms", "tlb_misses"})
	f := func(x float64) string { return strconv.FormatFloat(x, 'g', 6, 64) }
	for _, row := range r.Rows {
		cw.Write([]string{row.Guest, row.Mode, f(row.Seconds.Median), f(row.Seconds.Min), f(row.Seconds.Max),
			strconv.FormatUint(row.Blocks, 10), f(row.BlocksPerSec), f(row.RatioToBare), f(row.RatioToRun),
			strconv.FormatUint(row.Epochs, 10), f(row.EpochsPerSec), f(row.LogPerEpoch), f(row.LogPerSec),
			f(row.LagEpochs), f(row.LagMS), strconv.FormatUint(row.TLBMisses, 10)})
	}
	cw.Flush()
	return cw.Error()
}

// plotSweep draws the paper's figure, re-measured: normalized run time
// against epoch length, one line per guest and protocol, as SVG and PNG.
func plotSweep(pts []SweepPoint, dir string) ([]string, error) {
	p := plot.New()
	p.Title.Text = "hvft: replicated run time against epoch length"
	p.X.Label.Text = "epoch length (translation blocks, log scale)"
	p.Y.Label.Text = "run time / baseline (compute: bare Unicorn; ticker: unreplicated)"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	colors := []color.Color{color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 255}, color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 255},
		color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 255}, color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 255}}
	series := map[string]plotter.XYs{}
	var order []string
	for _, pt := range pts {
		key := pt.Guest + " " + pt.Protocol
		if _, ok := series[key]; !ok {
			order = append(order, key)
		}
		series[key] = append(series[key], plotter.XY{X: float64(pt.EpochBlocks), Y: pt.Normalized})
	}
	for i, key := range order {
		line, points, err := plotter.NewLinePoints(series[key])
		if err != nil {
			return nil, err
		}
		line.Color = colors[i%len(colors)]
		points.Color = colors[i%len(colors)]
		p.Add(line, points)
		p.Legend.Add(key, line, points)
	}
	p.Legend.Left = true // the lines run above 0.5; the lower left is free
	p.Y.Min = 0          // ratios read honestly only from zero
	var files []string
	for _, ext := range []string{"svg", "png"} {
		path := filepath.Join(dir, "epoch-sweep."+ext)
		if err := p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
			return nil, err
		}
		files = append(files, path)
	}
	return files, nil
}

// shortArgs drops the directories of path arguments, which name the
// bench's scratch folder.
func shortArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = filepath.Base(a)
	}
	return out
}
