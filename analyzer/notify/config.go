package notify

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/internal/config"
)

// Formats of a webhook's body.
const (
	// FormatJSON is the generic body: a Message, signed.
	FormatJSON = "json"
	// FormatSlack is a Slack incoming-webhook message (SlackMessage).
	FormatSlack = "slack"
)

// Config is the notifications' configuration: the analyzer's
// --notify-config file (YAML, these field names) and its --notify-* flags
// add to it.
//
//	webhooks:
//	  - url: https://hooks.example.com/llmcanary
//	    secret_file: /etc/llmcanary/webhook-secret
//	  - url: https://hooks.slack.com/services/T0/B0/XXXX
//	    format: slack
//	    models: [llama-3-8b]
//	    skip_holds: true
//	max_attempts: 6
type Config struct {
	Webhooks []Webhook `json:"webhooks"`
	// QueueSize bounds the notifications waiting for each webhook; past
	// it new ones are dropped (and counted) so that a receiver that is
	// down never holds memory or a decision. Default 1000.
	QueueSize int `json:"queue_size,omitempty"`
	// MaxAttempts is how often one notification is tried before it is
	// dropped. Default 6.
	MaxAttempts int `json:"max_attempts,omitempty"`
	// Backoff is the wait after the first failed attempt; it doubles after
	// each further one up to MaxBackoff, with jitter. Defaults 1s and 1m.
	Backoff    config.Duration `json:"backoff,omitempty"`
	MaxBackoff config.Duration `json:"max_backoff,omitempty"`
	// Timeout bounds one attempt. Default 10s.
	Timeout config.Duration `json:"timeout,omitempty"`
}

// Webhook is one receiver.
type Webhook struct {
	// Name labels the webhook in logs and metrics. Default: the URL's
	// host (a Slack URL's path is its secret and never appears).
	Name string `json:"name,omitempty"`
	URL  string `json:"url"`
	// Format is json (default) or slack.
	Format string `json:"format,omitempty"`
	// SecretFile holds the key of the X-Llmcanary-Signature header,
	// sha256=<hex HMAC-SHA256 of the body>; Secret is the key itself
	// (prefer the file: it stays out of config listings). Without
	// either the body is not signed.
	SecretFile string `json:"secret_file,omitempty"`
	Secret     string `json:"secret,omitempty"`
	// Models limits the webhook to these models; empty means every model.
	Models []string `json:"models,omitempty"`
	// SkipHolds leaves out decisions to hold (the analyzer decides every
	// few seconds; most decisions are holds that say what is still
	// missing). Advances, promotions, rollbacks, pauses, operators'
	// actions, errors and status changes are always sent.
	SkipHolds bool `json:"skip_holds,omitempty"`
}

// Defaults of Config.
const (
	DefaultQueueSize   = 1000
	DefaultMaxAttempts = 6
	DefaultBackoff     = time.Second
	DefaultMaxBackoff  = time.Minute
	DefaultTimeout     = 10 * time.Second
)

// LoadConfig reads a YAML config file strictly: an unknown key is an
// error, so a typo never silently turns a webhook off.
func LoadConfig(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("notify config: %w", err)
	}
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return c, fmt.Errorf("notify config %s: %w", path, err)
	}
	return c, nil
}

func (c Config) withDefaults() Config {
	if c.QueueSize <= 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.Backoff <= 0 {
		c.Backoff = config.Duration(DefaultBackoff)
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = config.Duration(DefaultMaxBackoff)
	}
	if c.MaxBackoff < c.Backoff {
		c.MaxBackoff = c.Backoff
	}
	if c.Timeout <= 0 {
		c.Timeout = config.Duration(DefaultTimeout)
	}
	return c
}

// Validate reports every problem at once: a webhook without an http(s)
// URL, an unknown format, an unreadable secret file, an empty model name.
func (c Config) Validate() error {
	var errs []error
	if c.QueueSize < 0 || c.MaxAttempts < 0 || c.Backoff < 0 || c.MaxBackoff < 0 || c.Timeout < 0 {
		errs = append(errs, errors.New("notify: queue_size, max_attempts, backoff, max_backoff and timeout must not be negative"))
	}
	names := map[string]bool{}
	for i, w := range c.Webhooks {
		at := fmt.Sprintf("notify: webhook %d", i+1)
		u, err := url.Parse(w.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("%s: url %q is not an http(s) URL", at, redactURL(w.URL)))
		}
		if w.Format != "" && w.Format != FormatJSON && w.Format != FormatSlack {
			errs = append(errs, fmt.Errorf("%s: format %q must be %s or %s", at, w.Format, FormatJSON, FormatSlack))
		}
		if w.Secret != "" && w.SecretFile != "" {
			errs = append(errs, fmt.Errorf("%s: secret and secret_file are both set; keep one", at))
		}
		if w.SecretFile != "" {
			if b, err := os.ReadFile(w.SecretFile); err != nil {
				errs = append(errs, fmt.Errorf("%s: secret_file: %w", at, err))
			} else if strings.TrimSpace(string(b)) == "" {
				errs = append(errs, fmt.Errorf("%s: secret_file %s is empty", at, w.SecretFile))
			}
		}
		if slices.Contains(w.Models, "") {
			errs = append(errs, fmt.Errorf("%s: models has an empty name", at))
		}
		n := w.name()
		if names[n] {
			errs = append(errs, fmt.Errorf("%s: name %q is taken by another webhook; set name", at, n))
		}
		names[n] = true
	}
	return errors.Join(errs...)
}

func (w Webhook) name() string {
	if w.Name != "" {
		return w.Name
	}
	if u, err := url.Parse(w.URL); err == nil && u.Host != "" {
		return u.Host
	}
	return "webhook"
}

func (w Webhook) format() string {
	if w.Format == "" {
		return FormatJSON
	}
	return w.Format
}

func (w Webhook) secret() ([]byte, error) {
	if w.SecretFile == "" {
		return []byte(w.Secret), nil
	}
	b, err := os.ReadFile(w.SecretFile)
	if err != nil {
		return nil, fmt.Errorf("notify: %s: secret_file: %w", w.name(), err)
	}
	return []byte(strings.TrimSpace(string(b))), nil
}

// wants reports whether the webhook takes m.
func (w Webhook) wants(m Message) bool {
	if len(w.Models) > 0 && !slices.Contains(w.Models, m.Rollout.Model) {
		return false
	}
	return !(w.SkipHolds && m.Type == "decision" && m.Action == analyzer.ActionHold && !m.StatusChanged)
}

// redactURL keeps a URL's scheme and host: webhook URLs (Slack's) carry
// their secret in the path.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "(unparsable URL)"
	}
	return u.Scheme + "://" + u.Host + "/…"
}
