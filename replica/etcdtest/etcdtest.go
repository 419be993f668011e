// Package etcdtest runs a real etcd server (Debian's etcd-server, which
// make deps installs) for tests of the etcd arbiter: started on the given
// client addresses, waited for on its own "serving client traffic" line,
// killed at the test's end.
package etcdtest

import (
	"bufio"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server is a running etcd.
type Server struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// FreeAddr returns a loopback address with a port nobody listens on now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Start runs etcd serving clients at every address in clients and
// returns once it says it serves them (within a minute, or the test
// fails).
func Start(t testing.TB, clients []string) *Server {
	t.Helper()
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Fatalf("etcd is not installed (make deps installs etcd-server): %v", err)
	}
	peer := FreeAddr(t)
	var urls []string
	for _, c := range clients {
		urls = append(urls, "http://"+c)
	}
	cmd := exec.Command("etcd", "--name", "t", "--data-dir", t.TempDir(), "--logger", "zap",
		"--listen-client-urls", strings.Join(urls, ","), "--advertise-client-urls", urls[0],
		"--listen-peer-urls", "http://"+peer, "--initial-advertise-peer-urls", "http://"+peer,
		"--initial-cluster", "t=http://"+peer)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &Server{cmd: cmd, done: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		var once sync.Once
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "serving client traffic") {
				once.Do(func() { close(ready) })
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	go func() { cmd.Wait(); close(s.done) }()
	t.Cleanup(s.Stop)
	select {
	case <-ready:
	case <-s.done:
		t.Fatal("etcd exited before serving")
	case <-time.After(time.Minute):
		t.Fatal("etcd did not serve within a minute")
	}
	return s
}

// Signal sends sig to the server (SIGSTOP and SIGCONT pause and resume it).
func (s *Server) Signal(sig os.Signal) error { return s.cmd.Process.Signal(sig) }

// Stop kills the server and waits for it; calling it again is harmless.
func (s *Server) Stop() {
	s.cmd.Process.Kill()
	<-s.done
}
