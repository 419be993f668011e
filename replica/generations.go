package replica

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"hvft/epoch"
)

// Generations is the arbiter of rule 7 (epoch.Arbitration): a register
// holding the run's generation that only compare-and-swap moves. There is
// no lease to renew: a replica consults it only when it wants to act
// alone, and the first to move the register on wins.
type Generations interface {
	// Current reads the generation (0 before any) and its holder.
	Current(ctx context.Context) (gen uint64, holder string, err error)
	// Claim moves the register from gen-1 to gen for holder. It fails
	// with an *epoch.LostClaim (ErrClaimLost) naming what the register
	// holds when it holds anything else. Any other error leaves the
	// outcome open (the swap may have landed with its answer lost):
	// claim settles it by reading the register back.
	Claim(ctx context.Context, gen uint64, holder string) error
	// Close releases the connection.
	Close() error
	// String names the arbiter for the log.
	String() string
	// RunName names the run's register the same way on every replica
	// (not the endpoints, which each may reach by another address): the
	// disk's fence token carries it.
	RunName() string
}

// ErrClaimLost means another replica holds the generation claimed: the
// arbiter answered so.
var ErrClaimLost = epoch.ErrClaimLost

// arbiterTimeout bounds one call to the arbiter: a replica that cannot
// reach it in that time does not act alone. It also bounds the read-back
// that settles a claim whose answer was lost.
const arbiterTimeout = 5 * time.Second

// EtcdGenerations keeps the register in etcd: key PREFIX/generation
// holds the number, PREFIX/holder its holder, both written by one
// transaction that compares the number first.
type EtcdGenerations struct {
	client *clientv3.Client
	prefix string
	desc   string
}

// OpenArbiter parses an --arbiter: etcd://HOST:PORT[,HOST:PORT...]/PREFIX,
// or file:DIR (one machine).
func OpenArbiter(spec string, log *zap.Logger) (Generations, error) {
	if dir, ok := strings.CutPrefix(spec, "file:"); ok {
		if dir == "" {
			return nil, fmt.Errorf("--arbiter %q: name the directory, as in file:/shared/run1", spec)
		}
		return OpenFileGenerations(dir)
	}
	u, err := url.Parse(spec)
	if err != nil || u.Scheme != "etcd" || u.Host == "" {
		return nil, fmt.Errorf("--arbiter %q: want etcd://HOST:PORT[,HOST:PORT...]/PREFIX or file:DIR", spec)
	}
	prefix := strings.Trim(u.Path, "/")
	if prefix == "" {
		return nil, fmt.Errorf("--arbiter %q: name a key prefix for the run, as in etcd://127.0.0.1:2379/hvft/myrun", spec)
	}
	var endpoints []string
	for _, h := range strings.Split(u.Host, ",") {
		if h == "" {
			return nil, fmt.Errorf("--arbiter %q: an empty endpoint", spec)
		}
		_, port, err := net.SplitHostPort(h)
		if err != nil {
			return nil, fmt.Errorf("--arbiter %q: endpoint %q: want HOST:PORT (%v)", spec, h, err)
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return nil, fmt.Errorf("--arbiter %q: endpoint %q: the port %q is not a number from 0 to 65535", spec, h, port)
		}
		endpoints = append(endpoints, "http://"+h)
	}
	if log == nil {
		log = zap.NewNop()
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: arbiterTimeout, Logger: log.Named("etcd").WithOptions(zap.IncreaseLevel(zap.ErrorLevel))})
	if err != nil {
		return nil, fmt.Errorf("--arbiter %s: %w", spec, err)
	}
	return &EtcdGenerations{client: c, prefix: "/" + prefix, desc: spec}, nil
}

func (e *EtcdGenerations) genKey() string    { return e.prefix + "/generation" }
func (e *EtcdGenerations) holderKey() string { return e.prefix + "/holder" }

// String implements Generations.
func (e *EtcdGenerations) String() string { return e.desc }

// RunName implements Generations.
func (e *EtcdGenerations) RunName() string { return "etcd:" + e.prefix }

// Current implements Generations.
func (e *EtcdGenerations) Current(ctx context.Context) (uint64, string, error) {
	ctx, cancel := context.WithTimeout(ctx, arbiterTimeout)
	defer cancel()
	resp, err := e.client.Txn(ctx).Then(e.readOps()...).Commit()
	if err != nil {
		return 0, "", fmt.Errorf("reading the arbiter %s: %w", e.desc, err)
	}
	reg, err := e.register(resp)
	if err != nil {
		return 0, "", err
	}
	return reg.Gen, reg.Holder, nil
}

// readOps read the register: its generation and its holder, in one
// transaction so that the two belong together.
func (e *EtcdGenerations) readOps() []clientv3.Op {
	return []clientv3.Op{clientv3.OpGet(e.genKey()), clientv3.OpGet(e.holderKey())}
}

// register parses the answers to readOps.
func (e *EtcdGenerations) register(resp *clientv3.TxnResponse) (epoch.Register, error) {
	var reg epoch.Register
	resps := resp.Responses
	if len(resps) != 2 {
		return reg, fmt.Errorf("the arbiter %s answered %d reads, not 2", e.desc, len(resps))
	}
	if kvs := resps[0].GetResponseRange().Kvs; len(kvs) > 0 {
		gen, err := strconv.ParseUint(string(kvs[0].Value), 10, 64)
		if err != nil {
			return reg, fmt.Errorf("the arbiter's %s holds %q, not a generation", e.genKey(), kvs[0].Value)
		}
		reg.Gen = gen
	}
	if kvs := resps[1].GetResponseRange().Kvs; len(kvs) > 0 {
		reg.Holder = string(kvs[0].Value)
	}
	return reg, nil
}

// Claim implements Generations: an etcd transaction that puts gen only
// if the register still holds gen-1 (or, for a first generation, holds
// nothing), and otherwise reads what it holds, so that a lost claim names
// the holder as the same transaction saw it.
func (e *EtcdGenerations) Claim(ctx context.Context, gen uint64, holder string) error {
	if gen == 0 {
		return errors.New("generation 0 cannot be claimed")
	}
	ctx, cancel := context.WithTimeout(ctx, arbiterTimeout)
	defer cancel()
	cond := clientv3.Compare(clientv3.Value(e.genKey()), "=", strconv.FormatUint(gen-1, 10))
	if gen == 1 {
		cond = clientv3.Compare(clientv3.CreateRevision(e.genKey()), "=", 0)
	}
	resp, err := e.client.Txn(ctx).If(cond).
		Then(clientv3.OpPut(e.genKey(), strconv.FormatUint(gen, 10)), clientv3.OpPut(e.holderKey(), holder)).
		Else(e.readOps()...).Commit()
	if err != nil {
		return fmt.Errorf("claiming generation %d at %s: %w", gen, e.desc, err)
	}
	if !resp.Succeeded {
		reg, err := e.register(resp)
		if err != nil {
			// Still a definite refusal: the comparison failed.
			return fmt.Errorf("claiming generation %d at %s: %w (%v)", gen, e.desc, ErrClaimLost, err)
		}
		return fmt.Errorf("claiming generation %d at %s: %w", gen, e.desc, &epoch.LostClaim{Claimed: gen, Register: reg})
	}
	return nil
}

// Close implements Generations.
func (e *EtcdGenerations) Close() error { return e.client.Close() }

// claimFirst makes a primary that starts a run the holder of the next
// generation: it reads the register and claims the one after.
func claimFirst(ctx context.Context, g Generations, holder string, readBack time.Duration, log *zap.Logger) (uint64, error) {
	cur, _, err := g.Current(ctx)
	if err != nil {
		return 0, err
	}
	if err := claim(ctx, g, cur+1, holder, readBack, log); err != nil {
		return 0, err
	}
	return cur + 1, nil
}

// claim claims gen for holder at g (rule 7) and settles a claim whose
// answer was lost. A compare-and-swap can land while its answer does not
// come back (the arbiter's reply dropped, the connection broken after the
// request left): taking that for a loss would fence a primary that won
// and leave nobody running. So any error but a definite refusal is settled by
// reading the register back, retried for up to readBack (0: the
// arbiter's timeout), and deciding by epoch.SettleClaim: won if holder is
// recorded for gen, otherwise lost naming the holder; a register that
// cannot be read leaves the outcome unknown (epoch.ErrClaimUnknown), and
// the caller must not act alone.
func claim(ctx context.Context, g Generations, gen uint64, holder string, readBack time.Duration, log *zap.Logger) error {
	err := g.Claim(ctx, gen, holder)
	if epoch.ClaimAnswered(err) {
		return err
	}
	if readBack <= 0 {
		readBack = arbiterTimeout
	}
	log.Warn("the answer to a claim was lost: reading the register back", zap.Uint64("generation", gen),
		zap.Stringer("arbiter", g), zap.Error(err))
	reg, rerr := readRegister(ctx, g, readBack)
	settled := epoch.SettleClaim(gen, holder, err, reg, rerr)
	switch {
	case settled == nil:
		log.Info("read back: this replica holds the generation it claimed", zap.Uint64("generation", gen))
		return nil
	case errors.Is(settled, ErrClaimLost):
		return fmt.Errorf("%v; read back: %w", err, settled)
	}
	return settled // unknown: it names the claim's error and the read's
}

// readRegister reads the register until it answers or bound runs out,
// pausing between attempts (growing, at most a second): a connection the
// lost answer broke may take a moment to come back.
func readRegister(ctx context.Context, g Generations, bound time.Duration) (epoch.Register, error) {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	pause := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		gen, holder, err := g.Current(ctx)
		if err == nil {
			return epoch.Register{Gen: gen, Holder: holder}, nil
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return epoch.Register{}, fmt.Errorf("%d reads in %v, the last: %w", attempt, bound, err)
		case <-t.C:
		}
		pause = min(2*pause, time.Second)
	}
}

// FileGenerations keeps the register in a directory on one machine's
// file system: generation g is the file gen-g, created by link(2), which
// fails when the file exists, so exactly one replica creates each
// generation. A claim of g also requires gen-(g-1) to be the newest.
type FileGenerations struct {
	dir string
}

// Network file systems on which link(2) is not known to be atomic across
// clients (statfs f_type): NFS, SMB/CIFS, FUSE.
var untrustedFS = map[int64]string{0x6969: "NFS", 0xFF534D42: "CIFS", 0xFE534D42: "SMB2", 0x517B: "SMB", 0x65735546: "FUSE"}

// OpenFileGenerations opens (creating) a register directory, refusing one
// on a network file system whose link(2) it cannot trust.
func OpenFileGenerations(dir string) (*FileGenerations, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("arbiter directory: %w", err)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return nil, fmt.Errorf("arbiter directory: %w", err)
	}
	if name, bad := untrustedFS[int64(st.Type)]; bad {
		return nil, fmt.Errorf("arbiter directory %s is on %s, where creating a file is not known to be atomic across machines: use --arbiter etcd:// across machines", dir, name)
	}
	return &FileGenerations{dir: dir}, nil
}

func (f *FileGenerations) path(gen uint64) string {
	return filepath.Join(f.dir, fmt.Sprintf("gen-%020d", gen))
}

// String implements Generations.
func (f *FileGenerations) String() string { return "file:" + f.dir }

// RunName implements Generations: the directory's absolute path.
func (f *FileGenerations) RunName() string {
	if abs, err := filepath.Abs(f.dir); err == nil {
		return "file:" + abs
	}
	return "file:" + f.dir
}

// Current implements Generations.
func (f *FileGenerations) Current(context.Context) (uint64, string, error) {
	entries, err := os.ReadDir(f.dir)
	if err != nil {
		return 0, "", fmt.Errorf("reading the arbiter %s: %w", f.dir, err)
	}
	var gen uint64
	for _, e := range entries {
		var g uint64
		if _, err := fmt.Sscanf(e.Name(), "gen-%d", &g); err == nil && len(e.Name()) == 24 && g > gen {
			gen = g
		}
	}
	if gen == 0 {
		return 0, "", nil
	}
	holder, err := os.ReadFile(f.path(gen))
	if err != nil {
		return 0, "", fmt.Errorf("reading the arbiter %s: %w", f.dir, err)
	}
	return gen, string(holder), nil
}

// Claim implements Generations.
func (f *FileGenerations) Claim(ctx context.Context, gen uint64, holder string) error {
	if gen == 0 {
		return errors.New("generation 0 cannot be claimed")
	}
	cur, _, err := f.Current(ctx)
	if err != nil {
		return err
	}
	if cur != gen-1 {
		return f.lost(ctx, gen)
	}
	tmp, err := os.CreateTemp(f.dir, ".claim-")
	if err != nil {
		return fmt.Errorf("claiming generation %d at %s: %w", gen, f, err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.WriteString(holder)
	serr := tmp.Sync()
	tmp.Close()
	if werr != nil || serr != nil {
		return fmt.Errorf("claiming generation %d at %s: %v %v", gen, f, werr, serr)
	}
	if err := os.Link(tmp.Name(), f.path(gen)); err != nil {
		if errors.Is(err, os.ErrExist) {
			return f.lost(ctx, gen)
		}
		return fmt.Errorf("claiming generation %d at %s: %w", gen, f, err)
	}
	// The claim must survive this machine's crash: sync the directory.
	if d, err := os.Open(f.dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// lost is the definite refusal of a claim of gen, naming what the
// register holds (or only the refusal, if it cannot be read now).
func (f *FileGenerations) lost(ctx context.Context, gen uint64) error {
	cur, holder, err := f.Current(ctx)
	if err != nil {
		return fmt.Errorf("claiming generation %d at %s: %w (%v)", gen, f, ErrClaimLost, err)
	}
	return fmt.Errorf("claiming generation %d at %s: %w", gen, f, &epoch.LostClaim{Claimed: gen, Register: epoch.Register{Gen: cur, Holder: holder}})
}

// Close implements Generations.
func (f *FileGenerations) Close() error { return nil }

// DefaultArbiterRoot is where a pair on one host given no --arbiter keeps
// its generations: a directory per run under the user's own.
func DefaultArbiterRoot() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("hvft-arbiter-%d", os.Getuid()))
}

// NewDefaultArbiter makes a fresh run directory under DefaultArbiterRoot
// and returns the file arbiter on it with its spec ("file:DIR"), which the
// primary advertises to its backups: with it, a cut or reset link on one
// host cannot leave two primaries even when the user named no arbiter.
func NewDefaultArbiter() (Generations, string, error) {
	root := DefaultArbiterRoot()
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, "", fmt.Errorf("the default arbiter's directory: %w", err)
	}
	if err := checkPrivateDir(root); err != nil {
		return nil, "", err
	}
	dir, err := os.MkdirTemp(root, "run-")
	if err != nil {
		return nil, "", fmt.Errorf("the default arbiter's directory: %w", err)
	}
	g, err := OpenFileGenerations(dir)
	if err != nil {
		return nil, "", err
	}
	return g, "file:" + dir, nil
}

// AdoptArbiter opens the arbiter a primary advertised. Only a run
// directory under DefaultArbiterRoot is accepted: a peer must not make
// this replica create files anywhere else.
func AdoptArbiter(spec string) (Generations, error) {
	dir, ok := strings.CutPrefix(spec, "file:")
	root := DefaultArbiterRoot()
	if !ok || filepath.Dir(dir) != root || !strings.HasPrefix(filepath.Base(dir), "run-") {
		return nil, fmt.Errorf("the primary advertised the arbiter %q, which is not a default one under %s: give both replicas --arbiter", spec, root)
	}
	if err := checkPrivateDir(root); err != nil {
		return nil, err
	}
	st, err := os.Stat(dir)
	if err != nil || !st.IsDir() {
		return nil, fmt.Errorf("the primary's default arbiter %s is not on this host (%v): a pair on two hosts needs --arbiter etcd://", dir, err)
	}
	return OpenFileGenerations(dir)
}

// checkPrivateDir refuses a directory that is not this user's alone.
func checkPrivateDir(dir string) error {
	st, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("the default arbiter's directory: %w", err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !st.IsDir() || st.Mode().Perm()&0o077 != 0 || (ok && int(sys.Uid) != os.Getuid()) {
		return fmt.Errorf("%s is not a directory of this user's alone (mode 0700): remove it", dir)
	}
	return nil
}
