package extprocsvc

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

func TestValidateNamesEveryBadFlag(t *testing.T) {
	o := Defaults()
	o.Listen, o.RetentionDays, o.LogLevel, o.ClickHouse, o.SpoolDir = "nowhere", -1, "loud", "ch:9000", ""
	err := o.Validate()
	for _, want := range []string{"--listen", "--retention-days", "--log-level", "--spool-dir"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}

// Without ClickHouse the service logs its records; it serves ext_proc and
// /metrics on the ports it bound and is down once Stop returns.
func TestServiceServesMetricsAndStops(t *testing.T) {
	o := Defaults()
	o.Listen, o.MetricsListen, o.Logger = "127.0.0.1:0", "127.0.0.1:0", slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + s.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), "go_goroutines") {
		t.Fatalf("metrics %d: %.200s", resp.StatusCode, b)
	}
	s.Stop()
	select {
	case <-s.Done():
	default:
		t.Fatal("Stop returned before the service was down")
	}
	if err := s.Err(); err != nil {
		t.Fatalf("a requested stop reports %v", err)
	}
	if _, err := http.Get("http://" + s.MetricsAddr + "/metrics"); err == nil {
		t.Fatal("metrics still served after Stop")
	}
}

func TestValidateClusterFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(o *Options)
		want string // "" valid
	}{
		{"cluster with comma-separated shards", func(o *Options) {
			o.ClickHouseCluster, o.ClickHouseShards = "tel", []string{"a:9000,b:9000"}
		}, ""},
		{"cluster with repeated shards", func(o *Options) {
			o.ClickHouseCluster, o.ClickHouseShards = "tel", []string{"a:9000", "b:9000"}
		}, ""},
		{"cluster without shards", func(o *Options) { o.ClickHouseCluster = "tel" }, "needs --clickhouse-shards"},
		{"shards without cluster", func(o *Options) { o.ClickHouseShards = []string{"a:9000"} }, "needs --clickhouse-cluster"},
		{"cluster and lone server", func(o *Options) {
			o.ClickHouse, o.ClickHouseCluster, o.ClickHouseShards = "a:9000", "tel", []string{"a:9000"}
		}, "exclude each other"},
		{"shard without port", func(o *Options) {
			o.ClickHouseCluster, o.ClickHouseShards = "tel", []string{"a:9000,b"}
		}, `--clickhouse-shards "b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := Defaults()
			tc.set(&o)
			err := o.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}
