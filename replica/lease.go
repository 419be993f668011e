package replica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"
)

// Arbiter decides which replica may act as primary when the two cannot
// talk: a lease both can reach, with a generation number that fences a
// stale holder. FileLease keeps it in a file beside the shared storage;
// another implementation (an etcd lease, say) can take its place without
// changing the roles.
type Arbiter interface {
	// Acquire takes the lease for holder and returns its generation. It
	// waits while another holder keeps a live lease, up to ctx; when that
	// holder renews throughout, it is alive, and Acquire fails with
	// ErrLeaseHeld. A takeover fails with ErrRunFinished once the run's
	// primary finished it (a primary starting a run may take it anew).
	Acquire(ctx context.Context, holder string, takeover bool) (uint64, error)
	// Check reports whether generation gen still holds the lease, and
	// extends it. An error means gen is fenced: its holder must release
	// nothing more.
	Check(gen uint64) error
	// Verify reports whether gen still holds a live lease, without
	// extending it: checked before every release of output.
	Verify(gen uint64) error
	// Release gives the lease up at the end of a run: nobody may take
	// over a finished run.
	Release(gen uint64) error
}

// ErrLeaseHeld means another replica holds the lease and keeps it alive.
var ErrLeaseHeld = errors.New("another replica holds the lease and renews it: it is alive")

// ErrRunFinished means the run this lease guarded is over.
var ErrRunFinished = errors.New("the run is over: its primary finished it")

// ErrFenced means a newer generation took the lease.
var ErrFenced = errors.New("fenced: a newer generation holds the lease")

// lease is the content of one generation's file.
type lease struct {
	Holder   string `json:"holder"`
	Expires  int64  `json:"expires_unix_ns"`
	Finished bool   `json:"finished,omitempty"`
}

// FileLease is an Arbiter in a directory both replicas reach: one file per
// generation ("gen-00000000000000000001"), created atomically by hard-link
// (only one replica can create generation N+1) and renewed by atomic
// rename by its holder alone. No lock is ever held, so a holder that
// stops (SIGSTOP) blocks nobody: its lease just expires.
type FileLease struct {
	Path string // a directory, created when absent
	TTL  time.Duration
}

// MinLeaseTTL bounds a lease's time to live from below: its holder renews
// it every third of it.
const MinLeaseTTL = 30 * time.Millisecond

const genPrefix = "gen-"

// current returns the highest generation and its lease (0 when none).
func (f *FileLease) current() (uint64, lease, error) {
	if err := os.MkdirAll(f.Path, 0o755); err != nil {
		return 0, lease{}, fmt.Errorf("lease: %w", err)
	}
	entries, err := os.ReadDir(f.Path)
	if err != nil {
		return 0, lease{}, fmt.Errorf("lease: %w", err)
	}
	var gen uint64
	for _, e := range entries {
		var g uint64
		if _, err := fmt.Sscanf(e.Name(), genPrefix+"%d", &g); err == nil && len(e.Name()) == len(genPrefix)+20 && g > gen {
			gen = g
		}
	}
	if gen == 0 {
		return 0, lease{}, nil
	}
	data, err := os.ReadFile(f.genPath(gen))
	if err != nil {
		return 0, lease{}, fmt.Errorf("lease: %w", err)
	}
	var l lease
	if err := json.Unmarshal(data, &l); err != nil {
		return 0, lease{}, fmt.Errorf("lease %s is damaged: %w", f.genPath(gen), err)
	}
	return gen, l, nil
}

func (f *FileLease) genPath(gen uint64) string {
	return fmt.Sprintf("%s/%s%020d", f.Path, genPrefix, gen)
}

// write puts l into a temporary file and either links it as generation
// gen (create: fails if that generation exists) or renames it over it.
func (f *FileLease) write(gen uint64, l lease, create bool) error {
	tmp, err := os.CreateTemp(f.Path, ".tmp-")
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	defer os.Remove(tmp.Name())
	data, _ := json.Marshal(l)
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("lease: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("lease: %w", err)
	}
	tmp.Close()
	if create {
		return os.Link(tmp.Name(), f.genPath(gen))
	}
	return os.Rename(tmp.Name(), f.genPath(gen))
}

// Acquire implements Arbiter.
func (f *FileLease) Acquire(ctx context.Context, holder string, takeover bool) (uint64, error) {
	var lastExpiry int64
	renewals := 0
	for {
		gen, l, err := f.current()
		if err != nil {
			return 0, err
		}
		now := time.Now().UnixNano()
		if takeover && l.Finished {
			return 0, ErrRunFinished
		}
		if gen != 0 && l.Holder != "" && l.Holder != holder && l.Expires > now {
			if lastExpiry != 0 && l.Expires > lastExpiry {
				renewals++
			}
			if renewals >= 2 {
				return 0, ErrLeaseHeld
			}
			lastExpiry = l.Expires
			select {
			case <-ctx.Done():
				return 0, fmt.Errorf("waiting for the lease: %w", ctx.Err())
			case <-time.After(time.Until(time.Unix(0, l.Expires)) + time.Millisecond):
			}
			continue
		}
		err = f.write(gen+1, lease{Holder: holder, Expires: now + int64(f.TTL)}, true)
		if err == nil {
			return gen + 1, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return 0, err
		}
		// Another replica created that generation first: look again.
	}
}

// Check implements Arbiter.
func (f *FileLease) Check(gen uint64) error {
	cur, l, err := f.current()
	if err != nil {
		return err
	}
	if cur != gen {
		return fmt.Errorf("%w (generation %d, this replica holds %d)", ErrFenced, cur, gen)
	}
	l.Expires = time.Now().UnixNano() + int64(f.TTL)
	return f.write(gen, l, false)
}

// Verify implements Arbiter.
func (f *FileLease) Verify(gen uint64) error {
	cur, l, err := f.current()
	switch {
	case err != nil:
		return err
	case cur != gen:
		return fmt.Errorf("%w (generation %d, this replica holds %d)", ErrFenced, cur, gen)
	case l.Expires < time.Now().UnixNano():
		return fmt.Errorf("%w: the lease of generation %d expired", ErrFenced, gen)
	}
	return nil
}

// Release implements Arbiter: the run is over.
func (f *FileLease) Release(gen uint64) error {
	cur, l, err := f.current()
	if err != nil || cur != gen {
		return err
	}
	l.Holder, l.Expires, l.Finished = "", 0, true
	return f.write(gen, l, false)
}
