package replica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
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

// lease is the file's content.
type lease struct {
	Generation uint64 `json:"generation"`
	Holder     string `json:"holder"`
	Expires    int64  `json:"expires_unix_ns"`
	Finished   bool   `json:"finished,omitempty"`
}

// FileLease is an Arbiter in a file, updated under flock.
type FileLease struct {
	Path string
	TTL  time.Duration
}

func (f *FileLease) update(fn func(l *lease) error) error {
	file, err := os.OpenFile(f.Path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	defer file.Close()
	if err := syscall.Flock(int(file.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lease: locking %s: %w", f.Path, err)
	}
	defer syscall.Flock(int(file.Fd()), syscall.LOCK_UN)
	data, err := io.ReadAll(io.LimitReader(file, 4096))
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	var l lease
	if len(data) > 0 {
		if err := json.Unmarshal(data, &l); err != nil {
			return fmt.Errorf("lease %s is damaged: %w", f.Path, err)
		}
	}
	before := l
	if err := fn(&l); err != nil {
		return err
	}
	if l == before {
		return nil
	}
	out, _ := json.Marshal(l)
	if _, err := file.WriteAt(append(out, '\n'), 0); err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	if err := file.Truncate(int64(len(out) + 1)); err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	return file.Sync()
}

// Acquire implements Arbiter.
func (f *FileLease) Acquire(ctx context.Context, holder string, takeover bool) (uint64, error) {
	var gen uint64
	var lastExpiry int64
	renewals := 0
	for {
		waitUntil := int64(0)
		err := f.update(func(l *lease) error {
			now := time.Now().UnixNano()
			if takeover && l.Finished {
				return ErrRunFinished
			}
			if l.Holder != "" && l.Holder != holder && l.Expires > now {
				if lastExpiry != 0 && l.Expires > lastExpiry {
					renewals++
				}
				lastExpiry, waitUntil = l.Expires, l.Expires
				return nil
			}
			l.Generation++
			l.Holder, l.Expires, l.Finished = holder, now+int64(f.TTL), false
			gen = l.Generation
			return nil
		})
		if err != nil {
			return 0, err
		}
		if gen != 0 {
			return gen, nil
		}
		if renewals >= 2 {
			return 0, ErrLeaseHeld
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("waiting for the lease: %w", ctx.Err())
		case <-time.After(time.Until(time.Unix(0, waitUntil)) + time.Millisecond):
		}
	}
}

// Check implements Arbiter.
func (f *FileLease) Check(gen uint64) error {
	return f.update(func(l *lease) error {
		if l.Generation != gen {
			return fmt.Errorf("%w (generation %d, this replica holds %d)", ErrFenced, l.Generation, gen)
		}
		l.Expires = time.Now().UnixNano() + int64(f.TTL)
		return nil
	})
}

// Verify implements Arbiter.
func (f *FileLease) Verify(gen uint64) error {
	return f.update(func(l *lease) error {
		switch {
		case l.Generation != gen:
			return fmt.Errorf("%w (generation %d, this replica holds %d)", ErrFenced, l.Generation, gen)
		case l.Expires < time.Now().UnixNano():
			return fmt.Errorf("%w: the lease of generation %d expired", ErrFenced, gen)
		}
		return nil
	})
}

// Release implements Arbiter.
func (f *FileLease) Release(gen uint64) error {
	return f.update(func(l *lease) error {
		if l.Generation == gen {
			l.Holder, l.Expires, l.Finished = "", 0, true
		}
		return nil
	})
}
