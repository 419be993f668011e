package replica

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// arbiterIdentity names the run's arbiter for the handshake: its
// register's name (RunName) and a nonce stored beside the register the
// first time any replica of the run uses it. A register another run left
// behind, or another arbiter reached at the same address from another
// host (a directory of the same name, an etcd at the same URL), holds
// another nonce, so the two replicas' identities differ and they do not
// pair. An arbiter that keeps no nonce is named by RunName alone.
func arbiterIdentity(ctx context.Context, g Generations) (string, error) {
	if g == nil {
		return "", nil
	}
	var nonce string
	var err error
	switch a := g.(type) {
	case *EtcdGenerations:
		nonce, err = a.nonce(ctx)
	case *FileGenerations:
		nonce, err = a.nonce()
	default:
		return g.RunName(), nil
	}
	if err != nil {
		return "", fmt.Errorf("reading the run's nonce at the arbiter %s: %w", g, err)
	}
	return g.RunName() + "#" + nonce, nil
}

func newNonce() (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

func (e *EtcdGenerations) nonceKey() string { return e.prefix + "/nonce" }

// nonce reads the run's nonce, storing a new one first if there is none
// (one transaction: the first replica's stays).
func (e *EtcdGenerations) nonce(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, arbiterTimeout)
	defer cancel()
	fresh, err := newNonce()
	if err != nil {
		return "", err
	}
	resp, err := e.client.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(e.nonceKey()), "=", 0)).
		Then(clientv3.OpPut(e.nonceKey(), fresh)).Else(clientv3.OpGet(e.nonceKey())).Commit()
	if err != nil {
		return "", err
	}
	if resp.Succeeded {
		return fresh, nil
	}
	if len(resp.Responses) != 1 || len(resp.Responses[0].GetResponseRange().Kvs) != 1 {
		return "", errors.New("the nonce key vanished")
	}
	return string(resp.Responses[0].GetResponseRange().Kvs[0].Value), nil
}

// nonce reads the run's nonce from the directory's file "nonce", creating
// it first if there is none (exclusively: the first replica's stays; its
// content is written before the file gets its name).
func (f *FileGenerations) nonce() (string, error) {
	path := filepath.Join(f.dir, "nonce")
	for range 3 {
		if b, err := os.ReadFile(path); err == nil {
			if s := strings.TrimSpace(string(b)); s != "" {
				return s, nil
			}
			return "", fmt.Errorf("%s is empty", path)
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		fresh, err := newNonce()
		if err != nil {
			return "", err
		}
		tmp, err := os.CreateTemp(f.dir, ".nonce-*")
		if err != nil {
			return "", err
		}
		_, werr := tmp.WriteString(fresh + "\n")
		if err := errors.Join(werr, tmp.Sync(), tmp.Close()); err != nil {
			os.Remove(tmp.Name())
			return "", err
		}
		// A hard link fails if the name exists: the first one stays.
		err = os.Link(tmp.Name(), path)
		os.Remove(tmp.Name())
		if err == nil {
			return fresh, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return "", err
		}
	}
	return "", fmt.Errorf("%s: could not read or create it", path)
}
