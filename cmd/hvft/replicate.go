package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"hvft/epoch"
	"hvft/replica"
)

// runFlags bound a run and report on it; shared by run, primary and backup.
func runFlags() []cli.Flag {
	return []cli.Flag{
		&cli.Uint64Flag{Name: "max-epochs", Usage: "stop with an error after this many epochs (0: no bound)"},
		&cli.DurationFlag{Name: "timeout", Usage: "stop with an error after this long (0: no bound)"},
		&cli.StringFlag{Name: "report", Usage: "write a JSON report of the run to this file"},
	}
}

// linkFlags configure the replication link on both sides.
func linkFlags() []cli.Flag {
	return []cli.Flag{
		&cli.DurationFlag{Name: "heartbeat", Value: 50 * time.Millisecond, Usage: "interval between heartbeats on the replication link"},
		&cli.DurationFlag{Name: "failure-timeout", Value: 500 * time.Millisecond, Usage: "declare the peer dead after this much silence (a closed link counts at once)"},
		&cli.BoolFlag{Name: "console-stream", Usage: "write the console as a sequenced stream (\"o SEQ HEX\" and \"e EPOCH\" lines) for a merging sink such as hvft demo"},
		&cli.StringFlag{Name: "key-file", Usage: "pre-shared link key (hvft keygen): authenticate and encrypt the replication link with TLS 1.3; both replicas need the same one"},
		&cli.StringFlag{Name: "arbiter", Usage: "etcd://HOST:PORT[,HOST:PORT...]/PREFIX (across machines) or file:DIR (one machine): the run's generation; a replica acts alone (a backup taking over, a primary going on without its backup) only once it has won the next generation there by compare-and-swap, and the loser stops (no lease, no clocks: docs/protocol.md, rule 7). PREFIX or DIR names the run; both replicas give the same one"},
		&cli.StringFlag{Name: "lease", Usage: "DIR: the same as --arbiter file:DIR (the older, renewed lease is gone; kept so that scripts naming it keep working)"},
		&cli.DurationFlag{Name: "lease-ttl", Usage: "ignored: the arbiter renews nothing (accepted for old scripts)"},
		&cli.BoolFlag{Name: "insecure", Usage: "allow the replication link in the clear off loopback (it carries guest RAM, input and disk data)"},
		&cli.BoolFlag{Name: "no-arbiter", Usage: "allow a pair across hosts without --arbiter, accepting that a partition can leave two primaries"},
		&cli.StringFlag{Name: "console-out", Usage: "write the console to this file instead, shared by primary and backup: each output lands once (a new primary appends after what the file holds)"},
	}
}

func primaryCommand() *cli.Command {
	return &cli.Command{
		Name:      "primary",
		Usage:     "run a guest as the primary of a replicated pair",
		ArgsUsage: "[GUEST] [-- GUEST-ARGS...]",
		Description: "Waits for a backup on --listen, then runs the guest, streaming every environment answer\n" +
			"and epoch end to it. Console output leaves only once the backup holds every log record\n" +
			"before it. If the backup dies, the primary goes on alone. With --linux, a Linux program's\n" +
			"file writes, unlinks and renames also wait for the backup (docs/linux.md).",
		Flags: append(append(append(machineFlags(), runFlags()...), linkFlags()...), recordFlag(),
			&cli.StringFlag{Name: "listen", Required: true, Usage: "address the backup connects to (host:port, or fd:N for an inherited listener)"},
			&cli.DurationFlag{Name: "backup-wait", Value: 30 * time.Second, Usage: "how long to wait for the backup before failing (0: run alone at once); a primary running alone accepts a backup started with --join"},
			&cli.StringFlag{Name: "protocol", Value: "bounded", Usage: "bounded (run up to --max-lag epochs ahead of the backup) or strict (wait for each epoch's acknowledgement)"},
			&cli.Uint64Flag{Name: "max-lag", Value: 4, Usage: "epochs the primary may run ahead of the backup's acknowledgements (bounded protocol)"},
		),
		Action: primaryAction,
	}
}

func backupCommand() *cli.Command {
	return &cli.Command{
		Name:      "backup",
		Usage:     "replay a primary's guest one epoch behind, and take over if it dies",
		ArgsUsage: "[GUEST] [-- GUEST-ARGS...]",
		Description: "Connects to the primary at --primary with the same guest and machine configuration,\n" +
			"replays its log one epoch behind, compares state hashes at every epoch end and emits\n" +
			"nothing. When the primary dies it finishes what it holds and goes on as the primary.\n" +
			"With --linux, give it the same program, arguments, --root and standard input as the\n" +
			"primary: a takeover skips the input the primary had read.",
		Flags: append(append(append(machineFlags(), runFlags()...), linkFlags()...), recordFlag(),
			&cli.StringFlag{Name: "primary", Required: true, Usage: "the primary's address (host:port)"},
			&cli.DurationFlag{Name: "connect-timeout", Value: 30 * time.Second, Usage: "how long to keep trying to reach the primary and complete the handshake (connections refused, reset or unanswered are tried again; a refusal is final)"},
			&cli.BoolFlag{Name: "join", Usage: "join a primary that is already running (alone): receive its state, then its log"},
			&cli.StringFlag{Name: "listen", Usage: "once this replica has taken over, accept a new backup (--join) here (host:port or fd:N)"},
			&cli.StringFlag{Name: "protocol", Value: "bounded", Usage: "the protocol it uses with such a backup: bounded or strict"},
			&cli.Uint64Flag{Name: "max-lag", Value: 4, Usage: "epochs a joined backup may lag (bounded protocol)"},
		),
		Action: backupAction,
	}
}

// replicaSetup is what both roles read from the command line.
type replicaSetup struct {
	log    *zap.Logger
	opts   replica.Options
	ctx    context.Context
	cancel context.CancelFunc
}

// checkDetector refuses a failure detector that cannot keep its timeout:
// it counts heartbeat ticks, so the timeout must span at least one, or a
// silent peer is declared dead a whole interval late.
func checkDetector(c *cli.Context) error {
	if hb, ft := c.Duration("heartbeat"), c.Duration("failure-timeout"); hb <= 0 || ft <= 0 || hb >= ft {
		return fmt.Errorf("--heartbeat %v and --failure-timeout %v: both must be positive, and the heartbeat shorter than the timeout", hb, ft)
	}
	return nil
}

func setupReplica(c *cli.Context) (*replicaSetup, error) {
	log, err := newLogger(c)
	if err != nil {
		return nil, err
	}
	if err := checkDetector(c); err != nil {
		return nil, err
	}
	cfg, err := machineConfig(c)
	if err != nil {
		return nil, err
	}
	if err := checkReportPath(c); err != nil {
		return nil, err
	}
	for _, flag := range []string{"listen", "primary"} {
		if c.IsSet(flag) {
			if err := checkHostPort(flag, c.String(flag)); err != nil {
				return nil, err
			}
		}
	}
	mach, label, err := loadMachine(c, cfg)
	if err != nil {
		return nil, err
	}
	logBoot(log, label, mach)
	var sink replica.Sink = replica.NewPlainSink(c.App.Writer)
	switch {
	case c.String("console-out") != "" && c.Bool("console-stream"):
		return nil, fmt.Errorf("--console-out and --console-stream exclude each other")
	case c.String("console-out") != "":
		// Checked now: a sink that fails at its first write would lose
		// every output of the run.
		if err := replica.CheckConsoleFile(c.String("console-out")); err != nil {
			return nil, fmt.Errorf("--console-out: %w", err)
		}
		// A primary empties the file when it starts, not at its first
		// output: if it died before that one, the backup that took over
		// would append after a previous run's output.
		if c.Command.Name == "primary" {
			if err := replica.ResetConsoleFile(c.String("console-out")); err != nil {
				return nil, fmt.Errorf("--console-out: %w", err)
			}
		}
		sink = replica.NewFileSink(c.String("console-out"), false)
		mach.ConsolePath = c.String("console-out")
	case c.Bool("console-stream"):
		sink = replica.NewStreamSink(c.App.Writer)
	}
	var auth *replica.Auth
	if path := c.String("key-file"); path != "" {
		key, err := replica.LoadKey(path)
		if err != nil {
			return nil, err
		}
		if auth, err = replica.NewAuth(key); err != nil {
			return nil, err
		}
	} else if !c.Bool("insecure") {
		for _, peer := range linkAddrs(c) {
			if !strings.HasPrefix(peer, "fd:") && !replica.IsLoopback(peer) {
				return nil, fmt.Errorf("the replication link %s is not on loopback: give --key-file (hvft keygen writes one) to authenticate and encrypt it, or --insecure to run it in the clear", peer)
			}
		}
	}
	spec := c.String("arbiter")
	if dir := c.String("lease"); dir != "" {
		if spec != "" {
			return nil, fmt.Errorf("--arbiter and --lease are two arbiters: give one")
		}
		// The renewed lease is gone (it fenced healthy primaries on a
		// loaded host and compared wall clocks): its directory now holds
		// the file arbiter's generations.
		spec = "file:" + dir
		log.Warn("--lease DIR is --arbiter file:DIR now: no lease is renewed (docs/protocol.md, rule 7)", zap.String("dir", dir))
	}
	if c.IsSet("lease-ttl") {
		if ttl := c.Duration("lease-ttl"); ttl <= 0 {
			return nil, fmt.Errorf("--lease-ttl %v: must be positive (and is ignored: nothing is renewed)", ttl)
		}
		log.Warn("--lease-ttl is ignored: the arbiter renews nothing")
	}
	var arbiter replica.Generations
	var advertise string
	local := true // every link address on this host
	for _, peer := range linkAddrs(c) {
		local = local && (strings.HasPrefix(peer, "fd:") || replica.IsLoopback(peer))
	}
	switch {
	case spec != "":
		var err error
		if arbiter, err = replica.OpenArbiter(spec, log); err != nil {
			return nil, err
		}
	case c.Command.Name == "primary" && local:
		// A pair on one host arbitrates by default: a cut or reset link
		// must not leave two primaries. The backup adopts it from the
		// welcome.
		var err error
		if arbiter, advertise, err = replica.NewDefaultArbiter(); err != nil {
			return nil, err
		}
		log.Info("no --arbiter: arbitrating on this host", zap.String("arbiter", advertise))
	case !local && !c.Bool("no-arbiter"):
		return nil, fmt.Errorf("no --arbiter for a pair across hosts: a partition between them would leave two primaries; give both replicas --arbiter etcd://HOST:PORT/PREFIX, or --no-arbiter to accept that risk")
	case !local:
		log.Warn("--no-arbiter: a partition between the hosts can leave two primaries")
	}
	if auth == nil {
		log.Warn("the replication link is not authenticated: any local process can connect to it (--key-file authenticates and encrypts it)")
	}
	host, _ := os.Hostname()
	s := &replicaSetup{log: log, opts: replica.Options{Auth: auth, Arbiter: arbiter, Advertise: advertise,
		Holder:  fmt.Sprintf("%s:%d:%s", host, os.Getpid(), c.Command.Name),
		Machine: mach, Heartbeat: c.Duration("heartbeat"), FailureTimeout: c.Duration("failure-timeout"),
		Sink: sink, Input: os.Stdin, MaxEpochs: c.Uint64("max-epochs"), Log: log,
	}}
	s.ctx, s.cancel = c.Context, func() {}
	if arbiter != nil {
		s.cancel = func() { arbiter.Close() }
	}
	if d := c.Duration("timeout"); d > 0 {
		var cancel context.CancelFunc
		s.ctx, cancel = context.WithTimeout(c.Context, d)
		prev := s.cancel
		s.cancel = func() { cancel(); prev() }
	}
	if path := c.String("record"); path != "" {
		w, err := replica.CreateLog(path, replica.HeaderFor(mach, c.Command.Name), false)
		if err != nil {
			return nil, err
		}
		s.opts.Record = w
		prev := s.cancel
		s.cancel = func() { prev(); w.Close() }
	}
	return s, nil
}

// finish writes the report and turns the outcome into an exit status.
func finish(c *cli.Context, log *zap.Logger, rep *replica.Report, err error) error {
	if rep != nil {
		if path := c.String("report"); path != "" {
			if werr := writeJSON(path, rep); werr != nil {
				return werr
			}
		}
		log.Info("finished", zap.String("role", rep.Role), zap.Bool("became_primary", rep.BecamePrimary),
			zap.Uint64("epochs", rep.Epochs), zap.String("final_hash", rep.FinalHash), zap.Uint64("outputs", rep.OutputsEmitted))
	}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && c.Duration("timeout") > 0 {
			return fmt.Errorf("timed out after %v: %w", c.Duration("timeout"), err)
		}
		return err
	}
	return exitCode(*rep.ExitCode & 0xFF)
}

func primaryAction(c *cli.Context) error {
	s, err := setupReplica(c)
	if err != nil {
		return err
	}
	defer s.cancel()
	defer s.log.Sync()
	mode, err := epoch.ParseMode(c.String("protocol"))
	if err != nil {
		return fmt.Errorf("--protocol: %w", err)
	}
	ln, err := listen(c.String("listen"))
	if err != nil {
		return err
	}
	defer ln.Close()
	rep, err := replica.RunPrimary(s.ctx, replica.PrimaryOptions{Options: s.opts, Listener: ln,
		BackupWait: c.Duration("backup-wait"), Mode: mode, MaxLag: c.Uint64("max-lag")})
	if dir, ok := strings.CutPrefix(s.opts.Advertise, "file:"); ok && rep != nil && rep.ExitCode != nil {
		// The run is complete (the guest powered off; a backup that
		// diverged fails the run but stopped): nobody takes it over, so
		// its default arbiter has nothing left to decide. (After any
		// other failure it stays, for the replica that goes on.)
		os.RemoveAll(dir)
	}
	return finish(c, s.log, rep, err)
}

func backupAction(c *cli.Context) error {
	s, err := setupReplica(c)
	if err != nil {
		return err
	}
	defer s.cancel()
	defer s.log.Sync()
	mode, err := epoch.ParseMode(c.String("protocol"))
	if err != nil {
		return fmt.Errorf("--protocol: %w", err)
	}
	opt := replica.BackupOptions{Options: s.opts, Primary: c.String("primary"),
		ConnectTimeout: c.Duration("connect-timeout"), Join: c.Bool("join"), Mode: mode, MaxLag: c.Uint64("max-lag")}
	if addr := c.String("listen"); addr != "" {
		ln, err := listen(addr)
		if err != nil {
			return err
		}
		defer ln.Close()
		opt.Listener = ln
	}
	rep, err := replica.RunBackup(s.ctx, opt)
	return finish(c, s.log, rep, err)
}

// listen opens host:port, or adopts an inherited listening socket (fd:N),
// which is how hvft demo hands its primary a port without a race.
func listen(addr string) (net.Listener, error) {
	if rest, ok := strings.CutPrefix(addr, "fd:"); ok {
		fd, err := strconv.Atoi(rest)
		if err != nil || fd < 3 {
			return nil, fmt.Errorf("--listen %q: want fd:N with N >= 3", addr)
		}
		f := os.NewFile(uintptr(fd), "listener")
		if f == nil {
			return nil, fmt.Errorf("--listen %q: no such file descriptor", addr)
		}
		defer f.Close()
		ln, err := net.FileListener(f)
		if err != nil {
			return nil, fmt.Errorf("--listen %q: %w", addr, err)
		}
		return ln, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	return ln, nil
}

// linkAddr is the replication link's address on the command line.
// linkAddrs are the addresses a replica's links use: a primary's listener;
// a backup's primary, and its own listener for joiners once it takes over.
func linkAddrs(c *cli.Context) []string {
	if c.Command.Name == "primary" {
		return []string{c.String("listen")}
	}
	addrs := []string{c.String("primary")}
	if l := c.String("listen"); l != "" {
		addrs = append(addrs, l)
	}
	return addrs
}

func keygenCommand() *cli.Command {
	return &cli.Command{
		Name:      "keygen",
		Usage:     "write a new random key for the replication link (--key-file)",
		ArgsUsage: "FILE",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("keygen takes the file to write")
			}
			return replica.GenerateKey(c.Args().First())
		},
	}
}
