package epoch

import "testing"

// TestAdmission steps rule 8 through every state a primary's listener
// meets, with no socket: the first backup before the guest starts, one at
// a time; joiners after, only while the primary has no backup; a
// configuration mismatch refused first, whatever the state.
func TestAdmission(t *testing.T) {
	for _, c := range []struct {
		name     string
		a        Admission
		mismatch string
		join     bool
		refused  bool
		first    bool
	}{
		{"first backup", Admission{AwaitingFirst: true}, "", false, false, true},
		{"second while the first confirmed", Admission{AwaitingFirst: true, FirstTaken: true}, "", false, true, false},
		{"a joiner before the guest starts", Admission{AwaitingFirst: true}, "", true, true, false},
		{"a plain backup once running", Admission{}, "", false, true, false},
		{"a joiner to a lone primary", Admission{}, "", true, false, false},
		{"a joiner to a paired primary", Admission{Busy: true}, "", true, true, false},
		{"a mismatch while waiting", Admission{AwaitingFirst: true}, "RAM size differs", false, true, false},
		{"a mismatch of a joiner", Admission{}, "RAM size differs", true, true, false},
	} {
		refusal, first := c.a.Admit(c.mismatch, c.join)
		if (refusal != "") != c.refused || first != c.first {
			t.Errorf("%s: refusal %q, first %v; want refused %v, first %v", c.name, refusal, first, c.refused, c.first)
		}
		if c.mismatch != "" && refusal != c.mismatch {
			t.Errorf("%s: refusal %q, want the mismatch itself", c.name, refusal)
		}
	}
}
