package replica

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"strings"
	"time"
)

// The replication link carries guest RAM, console input and disk data.
// With a pre-shared key it runs over TLS 1.3 with mutual authentication:
// both replicas derive the same Ed25519 key pair from the shared secret
// (HKDF-SHA256) and a self-signed certificate from it, and each accepts
// only a peer that presents that very key. A peer without the secret cannot
// complete the handshake, and TLS rejects any tampered record.

// KeySize is the length of a link key, in bytes.
const KeySize = 32

// GenerateKey writes a new random link key to path (hex, one line),
// refusing to overwrite an existing file.
func GenerateKey(path string) error {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("writing the key: %w", err)
	}
	defer f.Close()
	_, err = fmt.Fprintln(f, hex.EncodeToString(key))
	return err
}

// LoadKey reads a link key file written by GenerateKey.
func LoadKey(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("reading the link key: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("link key %s is not a regular file", path)
	}
	// Whoever reads the key can join the link and read the guest's RAM.
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("link key %s is readable by others (mode %04o): chmod 600 it", path, perm)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the link key: %w", err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(key) < KeySize {
		return nil, fmt.Errorf("link key %s: want at least %d bytes in hex (hvft keygen writes one)", path, KeySize)
	}
	return key, nil
}

// Auth is the link's TLS configuration; a nil *Auth is a link in the
// clear.
type Auth struct {
	cert tls.Certificate
	pub  ed25519.PublicKey
}

// NewAuth derives the link identity from a pre-shared key.
func NewAuth(key []byte) (*Auth, error) {
	seed, err := hkdf.Key(sha256.New, key, nil, "hvft replication link v1", ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "hvft replica"},
		NotBefore:    time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return nil, err
	}
	return &Auth{cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, pub: pub}, nil
}

// errPeerKey is a peer that presented another identity.
var errPeerKey = errors.New("the peer does not hold this link key")

func (a *Auth) config() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{a.cert},
		ClientAuth:   tls.RequireAnyClientCert,
		// Identity is the shared key, checked below, not a CA chain.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) != 1 {
				return errPeerKey
			}
			cert, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return errPeerKey
			}
			pub, ok := cert.PublicKey.(ed25519.PublicKey)
			if !ok || !bytes.Equal(pub, a.pub) {
				return errPeerKey
			}
			return nil
		},
	}
}

// secure runs the TLS handshake on conn as server or client; with a nil
// Auth it returns conn unchanged.
func (a *Auth) secure(ctx context.Context, conn net.Conn, server bool) (net.Conn, error) {
	if a == nil {
		return conn, nil
	}
	var tc *tls.Conn
	if server {
		tc = tls.Server(conn, a.config())
	} else {
		tc = tls.Client(conn, a.config())
	}
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("authenticating the replication link (both replicas need the same --key-file): %w", err)
	}
	return tc, nil
}

// IsLoopback reports whether addr (host:port) is on this machine's
// loopback, where the link may run in the clear.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
