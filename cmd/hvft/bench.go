package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"hvft/replica/bench"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "measure hvft against bare Unicorn, the epoch-length sweep and failover times",
		Description: "Runs a fixed matrix in this process, each figure beside its baseline measured in the same run:\n" +
			"compute, ticker, tlbstress and diskkv on bare Unicorn (where a guest can run without devices),\n" +
			"under hvft run, and replicated over loopback with the bounded and the strict protocol; then the\n" +
			"paper's figure re-measured (normalized run time against epoch length, written as SVG and PNG);\n" +
			"then failover timings over many kills of the primary, with a closed link and with a silent one.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "quick", Usage: "smaller workloads, fewer repetitions and kills (about two minutes on an idle 2-core machine)"},
			&cli.IntFlag{Name: "reps", Usage: "repetitions per figure (default 5, or 2 with --quick)"},
			&cli.IntFlag{Name: "kills", Usage: "failovers per kind of death (default 20, or 4 with --quick)"},
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON"},
			&cli.BoolFlag{Name: "csv", Usage: "print the matrix as CSV"},
			&cli.StringFlag{Name: "out", Value: "hvft-bench", Usage: "folder for the plots (epoch-sweep.svg, epoch-sweep.png)"},
			&cli.StringFlag{Name: "instructions-of", Hidden: true, Usage: "MODE:GUEST: run one guest once (the child bench runs under callgrind)"},
		},
		Action: func(c *cli.Context) error {
			if spec := c.String("instructions-of"); spec != "" {
				return bench.RunOne(c.Context, spec, c.App.Writer)
			}
			if c.Bool("json") && c.Bool("csv") {
				return fmt.Errorf("--json and --csv exclude each other")
			}
			if c.Int("reps") < 0 || c.Int("kills") < 0 {
				return fmt.Errorf("--reps and --kills must not be negative")
			}
			log, err := newLogger(c)
			if err != nil {
				return err
			}
			sugar := log.Sugar()
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("finding the hvft executable for callgrind: %w", err)
			}
			r, err := bench.Run(c.Context, bench.Options{Quick: c.Bool("quick"), Reps: c.Int("reps"), Kills: c.Int("kills"),
				OutDir: c.String("out"), Executable: exe, Progress: sugar.Infof})
			if err != nil {
				return err
			}
			switch {
			case c.Bool("json"):
				return r.JSON(c.App.Writer)
			case c.Bool("csv"):
				return r.CSV(c.App.Writer)
			}
			return r.Table(c.App.Writer)
		},
	}
}
