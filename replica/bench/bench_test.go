package bench

import (
	"context"
	"testing"
	"time"

	"hvft/epoch"
	"hvft/vm"
)

// BenchmarkMatrix is the go test face of hvft bench's matrix: one
// sub-benchmark per guest and mode, so that a change that slows a row
// shows in benchstat. ns/op is the guest's run time.
func BenchmarkMatrix(b *testing.B) {
	cpu, err := vm.ProbeCPUModel()
	if err != nil {
		b.Fatal(err)
	}
	e := &runner{opt: Options{OutDir: b.TempDir(), Quick: true}, cpu: cpu}
	e.opt.defaults()
	ctx := context.Background()
	for _, w := range workloads {
		modes := []string{"run", "replicated", "strict"}
		if w.bare {
			modes = append([]string{"bare"}, modes...)
		}
		for _, mode := range modes {
			b.Run(w.guest+"/"+mode, func(b *testing.B) {
				var total time.Duration
				for i := 0; i < b.N; i++ {
					m, err := e.machine(w, defaultEpoch)
					if err != nil {
						b.Fatal(err)
					}
					var d time.Duration
					switch mode {
					case "bare":
						r, err := vm.RunBare(m.Image, m.Config.RAMSize, m.Config.Args, 0)
						if err != nil {
							b.Fatal(err)
						}
						d = r.Elapsed
					case "run":
						if d, _, err = e.solo(ctx, m); err != nil {
							b.Fatal(err)
						}
					default:
						pm := epoch.Bounded
						if mode == "strict" {
							pm = epoch.Strict
						}
						p, err := e.pair(ctx, m, pm, nil)
						if err != nil {
							b.Fatal(err)
						}
						d = time.Duration(p.seconds * float64(time.Second))
					}
					cleanup(m)
					total += d
				}
				b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "guest-ns/op")
			})
		}
	}
}

func TestStatsAndDistributions(t *testing.T) {
	s := statOf([]float64{3, 1, 2})
	if s != (Stat{Median: 2, Min: 1, Max: 3}) {
		t.Errorf("statOf: %+v", s)
	}
	// A true median of an even count is the mean of the middle two, not
	// the larger of them.
	if s := statOf([]float64{4, 1}); s.Median != 2.5 {
		t.Errorf("median of 1 and 4: %v", s.Median)
	}
	xs := make([]float64, 200)
	for i := range xs {
		xs[i] = float64(200 - i)
	}
	d := distOf(xs)
	if d.Min != 1 || d.Max != 200 || d.Median != 100.5 || d.P99 != 198 {
		t.Errorf("distOf: %+v", d)
	}
	if (distOf(nil) != Dist{}) || (statOf(nil) != Stat{}) {
		t.Error("empty inputs")
	}
}
