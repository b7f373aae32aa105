package extproc

import (
	"testing"
	"time"

	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
)

func TestResponseFlagsSayWhoEndedTheRequest(t *testing.T) {
	cases := []struct {
		name  string
		flags *accesslogdata.ResponseFlags
		want  End
		known bool
	}{
		{"client closed the connection (DC)", &accesslogdata.ResponseFlags{DownstreamConnectionTermination: true}, EndClientCancel, true},
		{"client reset the stream (DR)", &accesslogdata.ResponseFlags{DownstreamRemoteReset: true}, EndClientCancel, true},
		{"pool reset the stream (UR)", &accesslogdata.ResponseFlags{UpstreamRemoteReset: true}, EndUpstreamReset, true},
		{"pool closed the connection (UC)", &accesslogdata.ResponseFlags{UpstreamConnectionTermination: true}, EndUpstreamReset, true},
		{"stream went idle (SI)", &accesslogdata.ResponseFlags{StreamIdleTimeout: true}, EndUpstreamReset, true},
		{"pool dropped its connection mid-body (UPE)", &accesslogdata.ResponseFlags{UpstreamProtocolError: true}, EndUpstreamReset, true},
		{"the pool's reset cut the client off too", &accesslogdata.ResponseFlags{UpstreamRemoteReset: true, DownstreamConnectionTermination: true}, EndUpstreamReset, true},
		{"no flag", &accesslogdata.ResponseFlags{}, 0, false},
		{"no flags at all", nil, 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := causeOf(c.flags)
			if ok != c.known || got != c.want {
				t.Fatalf("got %v %v, want %v %v", got, ok, c.want, c.known)
			}
		})
	}
}

func TestWaitGetsACauseThatArrivesLateAndGivesUpAfterItsTime(t *testing.T) {
	c := NewResetCauses()
	c.Put("early", EndClientCancel)
	if end, ok := c.Wait("early", time.Millisecond); !ok || end != EndClientCancel {
		t.Fatalf("known cause: %v %v", end, ok)
	}
	go func() {
		time.Sleep(30 * time.Millisecond)
		c.Put("late", EndUpstreamReset)
	}()
	if end, ok := c.Wait("late", 5*time.Second); !ok || end != EndUpstreamReset {
		t.Fatalf("late cause: %v %v", end, ok)
	}
	if _, ok := c.Wait("never", 20*time.Millisecond); ok {
		t.Fatal("a cause nobody reported was found")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.waiters) != 0 {
		t.Fatalf("waiters left behind: %v", c.waiters)
	}
}
