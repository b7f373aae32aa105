package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/llmcanary/llmcanary/xds"
)

func init() {
	register(command{
		Name:    "weights",
		Summary: "set a model's traffic weights through the management API and wait for the fleet to serve them",
		Run:     func(ctx context.Context, args []string) error { return runWeights(ctx, args, os.Stdout) },
	})
}

// ErrNotInForce is returned when weights were saved but not every connected
// Envoy (or no Envoy at all) serves them within the wait: the change stands
// and reaches Envoys as they reconnect, but traffic still follows the old
// weights, which a rollback must not pretend otherwise.
var ErrNotInForce = errors.New("weights saved but not in force")

func runWeights(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("weights", `Sets all weights of a model atomically (versions not named get 0) and waits
until every connected Envoy serves them. Exits non-zero, the change saved,
when they are not in force within --wait (no Envoy connected, or one that has
not accepted the change).
Example: llmcanary weights --model llama-3-8b v1=100 v2=0`)
	mf := addManagementFlags(fs)
	model := fs.String("model", "", "model name (required)")
	stable := fs.String("stable", "", "make this version the stable one")
	wait := fs.Duration("wait", 5*time.Second, "how long to wait for the fleet to serve the weights (at most 30s)")
	positional, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if *model == "" {
		return errors.New("--model is required")
	}
	weights, err := parseWeights(positional)
	if err != nil {
		return err
	}
	c, err := mf.client()
	if err != nil {
		return err
	}
	m, applied, err := c.SetWeightsWait(ctx, *model, weights, *stable, min(*wait, xds.MaxWait))
	if err != nil {
		return err
	}
	names := make([]string, 0, len(m.Weights))
	for v := range m.Weights {
		names = append(names, v)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, v := range names {
		parts[i] = fmt.Sprintf("%s %g %%", v, m.Weights[v])
	}
	fmt.Fprintf(out, "%s: %s (stable %s); %s\n", m.Name, strings.Join(parts, ", "), m.Stable, applied)
	if !applied.InForce() {
		return fmt.Errorf("%w after %v: %s; Envoys keep the previous weights until they accept it", ErrNotInForce, *wait, applied)
	}
	return nil
}

// parseWeights reads version=percent arguments.
func parseWeights(args []string) (map[string]float64, error) {
	if len(args) == 0 {
		return nil, errors.New("give the weights as version=percent, e.g. v1=95 v2=5")
	}
	w := map[string]float64{}
	for _, a := range args {
		v, p, ok := strings.Cut(a, "=")
		f, err := strconv.ParseFloat(p, 64)
		if !ok || v == "" || err != nil {
			return nil, fmt.Errorf("weight %q is not version=percent", a)
		}
		w[v] = f
	}
	return w, nil
}
