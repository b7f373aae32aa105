package notify

import (
	"flag"
	"fmt"
	"strings"
)

// Flags are the analyzer's --notify-* flags: a config file and webhooks
// for every model, added to the file's.
type Flags struct {
	ConfigFile string   `json:"config_file,omitempty"`
	Webhooks   []string `json:"webhooks,omitempty"`
	Slack      []string `json:"slack,omitempty"`
	SecretFile string   `json:"secret_file,omitempty"`
}

// Bind adds the flags to fs.
func (f *Flags) Bind(fs *flag.FlagSet) {
	fs.StringVar(&f.ConfigFile, "notify-config", f.ConfigFile, "YAML file of webhooks, per model or global (see analyzer/notify.Config)")
	fs.Var((*urlList)(&f.Webhooks), "notify-webhook", "URL that gets every rollout decision and state change as signed JSON (repeatable)")
	fs.Var((*urlList)(&f.Slack), "notify-slack", "Slack incoming-webhook URL that gets every decision except holds, and every state change (repeatable)")
	fs.StringVar(&f.SecretFile, "notify-secret-file", f.SecretFile, "file holding the HMAC-SHA256 key that signs the --notify-webhook bodies (X-Llmcanary-Signature)")
}

// Config returns the file's configuration (if any) with the flags'
// webhooks added, validated.
func (f Flags) Config() (Config, error) {
	var c Config
	if f.ConfigFile != "" {
		var err error
		if c, err = LoadConfig(f.ConfigFile); err != nil {
			return c, err
		}
	}
	for _, u := range f.Webhooks {
		c.Webhooks = append(c.Webhooks, Webhook{URL: u, SecretFile: f.SecretFile})
	}
	for _, u := range f.Slack {
		c.Webhooks = append(c.Webhooks, Webhook{URL: u, Format: FormatSlack, SkipHolds: true})
	}
	// Webhooks given by flag are named by host; two on one host get
	// numbered names.
	taken := map[string]int{}
	for _, w := range c.Webhooks {
		taken[w.name()]++
	}
	seen := map[string]int{}
	for i := len(c.Webhooks) - len(f.Webhooks) - len(f.Slack); i < len(c.Webhooks); i++ {
		w := &c.Webhooks[i]
		if n := w.name(); taken[n] > 1 {
			seen[n]++
			w.Name = fmt.Sprintf("%s-%d", n, seen[n])
		}
	}
	return c, c.Validate()
}

// urlList is a repeatable flag whose String never shows a URL's path:
// --help prints defaults, and webhook paths are secrets.
type urlList []string

func (u *urlList) String() string {
	if u == nil {
		return ""
	}
	out := make([]string, len(*u))
	for i, s := range *u {
		out[i] = redactURL(s)
	}
	return strings.Join(out, " ")
}

func (u *urlList) Set(v string) error { *u = append(*u, v); return nil }
