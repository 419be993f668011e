package replica

import (
	"strings"
	"testing"

	"hvft/vm/tlb"
)

// TestHandshakeRefusesAnotherEngine: replicas on different libunicorn
// versions reach different epoch boundaries, so the handshake names the
// difference and refuses.
func TestHandshakeRefusesAnotherEngine(t *testing.T) {
	m := machine(t, "ticker", nil, tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1})
	p := m.wireConfig()
	if p.Engine == "" {
		t.Fatal("the handshake carries no engine version")
	}
	b := p
	if why := compareConfigs(p, b, false); why != "" {
		t.Fatalf("equal configurations refused: %s", why)
	}
	b.Engine = "2.0.1"
	if why := compareConfigs(p, b, false); !strings.Contains(why, "emulator library differs") || !strings.Contains(why, "2.0.1") {
		t.Fatalf("another engine: %q", why)
	}
}
