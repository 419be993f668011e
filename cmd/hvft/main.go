// Command hvft runs a guest program on hvft's emulated x86-64 machine, whose
// every source of nondeterminism passes through one hypervisor interface so
// that a second copy can replay it (see README.md and docs/).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// exitFailure is hvft's own exit code when it cannot run or finish a guest,
// kept apart from the small codes guests power off with.
const exitFailure = 125

func main() {
	os.Exit(run(os.Args))
}

func run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp()
	err := app.RunContext(ctx, args)
	var code exitCode
	switch {
	case err == nil:
		return 0
	case errors.As(err, &code):
		return int(code)
	default:
		fmt.Fprintf(os.Stderr, "hvft: %v\n", err)
		return exitFailure
	}
}

// exitCode carries a guest's exit code out of a command without printing.
type exitCode int

func (c exitCode) Error() string { return fmt.Sprintf("exit code %d", int(c)) }

func newApp() *cli.App {
	app := &cli.App{
		Name:  "hvft",
		Usage: "hypervisor-based fault tolerance on an emulated x86-64 machine",
		Description: "hvft runs a static x86-64 guest on a machine emulated by Unicorn. A hypervisor layer\n" +
			"traps every environment instruction (IN, CPUID), every miss of its software-managed TLB\n" +
			"and every interrupt, and cuts execution into epochs that a replica can reach again.\n\n" +
			"Exit status: the guest's power-off code (0-255), or 125 when hvft itself fails\n" +
			"(bad input, a guest fault, a timeout, a divergence).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-format", Value: "console", Usage: "log format: console (for people) or json"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "log level: debug, info, warn or error"},
		},
		Commands: []*cli.Command{
			runCommand(),
			primaryCommand(),
			backupCommand(),
			demoCommand(),
			benchCommand(),
			replayCommand(),
			keygenCommand(),
			guestsCommand(),
			versionCommand(),
		},
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {}, // run() reports errors once
	}
	refuseNegativeDurations(app.Commands)
	return app
}

// newLogger builds the logger the global flags ask for; logs go to stderr,
// the guest's console to stdout.
func newLogger(c *cli.Context) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(c.String("log-level"))
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	var enc zapcore.Encoder
	switch c.String("log-format") {
	case "console":
		cfg := zap.NewDevelopmentEncoderConfig()
		cfg.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
		enc = zapcore.NewConsoleEncoder(cfg)
	case "json":
		enc = zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	default:
		return nil, fmt.Errorf("--log-format %q: want console or json", c.String("log-format"))
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(os.Stderr), level)), nil
}
