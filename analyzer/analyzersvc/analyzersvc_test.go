package analyzersvc

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/config"
)

func TestAWildcardListenAddressIsAdvertisedByHostName(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		"http://0.0.0.0:18090":    "http://" + host + ":18090",
		"https://[::]:18090":      "https://" + host + ":18090",
		"http://127.0.0.1:18090":  "http://127.0.0.1:18090",
		"http://10.1.2.3:18090":   "http://10.1.2.3:18090",
		"http://analyzer-1:18090": "http://analyzer-1:18090",
	} {
		if got := advertised(in); got != want {
			t.Errorf("advertised(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestEtcdOptionsAreValidatedByFlagName(t *testing.T) {
	o := Defaults()
	o.Token = "t"
	var eps Endpoints
	if err := eps.Set("http://a:2379, http://b:2379"); err != nil {
		t.Fatal(err)
	}
	_ = eps.Set("c:2379")
	o.EtcdEndpoints, o.EtcdPrefix, o.LeaderLease = eps, "/", config.Duration(time.Second)
	err := o.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{`--etcd-endpoints "c:2379" is not an http(s) URL`, "--etcd-prefix", "--leader-lease 1s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "http://a:2379") || len(eps) != 3 {
		t.Errorf("the comma-separated endpoints were not split: %v (%q)", []string(eps), err)
	}
}

func TestAGatewayURLNeedsAForceKey(t *testing.T) {
	o := Defaults()
	o.Token, o.GatewayURL = "t", "127.0.0.1:10000"
	err := o.Validate()
	for _, want := range []string{`--gateway-url "127.0.0.1:10000" is not an http(s) URL`, "--gateway-url needs --force-key-file"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	o.GatewayURL, o.ForceKey = "http://127.0.0.1:10000", "k"
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
}
