package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/llmcanary/llmcanary/xds"
)

func init() {
	register(command{
		Name:    "cohorts",
		Summary: "show or replace a model's opt-in and excluded users through the management API",
		Run:     func(ctx context.Context, args []string) error { return runCohorts(ctx, args, os.Stdout) },
	})
	register(command{
		Name:    "history",
		Summary: "show every version that was stable for a model, when and why it changed",
		Run:     func(ctx context.Context, args []string) error { return runHistory(ctx, args, os.Stdout) },
	})
}

// listFlag collects a flag given several times, or once with commas.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// managementFlags are the flags every management API command takes.
type managementFlags struct{ api, tokenFile, ca, actor *string }

func addManagementFlags(fs *flag.FlagSet) managementFlags {
	return managementFlags{
		api:       fs.String("api", envOr("LLMCANARY_API", "http://127.0.0.1:18080"), "base URL of the management API; replicas: their URLs separated by commas"),
		tokenFile: fs.String("token-file", "", "file holding the API bearer token (default: $LLMCANARY_API_TOKEN)"),
		ca:        fs.String("ca", os.Getenv("LLMCANARY_CA"), "PEM CA certificate that verifies an https --api (default $LLMCANARY_CA, else the system's roots)"),
		actor:     fs.String("actor", envOr("USER", "cli"), "name recorded in the audit trail"),
	}
}

func (m managementFlags) client() (*xds.Client, error) {
	token, hc, err := apiCredentials(*m.tokenFile, *m.ca)
	if err != nil {
		return nil, err
	}
	return &xds.Client{BaseURL: strings.TrimRight(*m.api, "/"), Token: token, Actor: *m.actor, HTTP: hc}, nil
}

func runCohorts(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("cohorts", `Shows a model's cohorts, or replaces them when any list or --clear is given.
Opt-in members go to the canary at any canary weight above 0; excluded
members never go to a canary (exclusion wins). Lists take several values
separated by commas, or the flag again.
Example: llmcanary cohorts --model llama-3-8b --opt-in-cohort internal --exclude-tenant acme-bank`)
	mf := addManagementFlags(fs)
	model := fs.String("model", "", "model name (required)")
	clear := fs.Bool("clear", false, "remove every cohort of the model")
	var c xds.Cohorts
	lists := []struct {
		name, usage string
		dst         *[]string
	}{
		{"opt-in-identity", "identity always sent to the canary", &c.OptIn.Identities},
		{"opt-in-cohort", "x-llmcanary-cohort value (set by a trusted hop) sent to the canary", &c.OptIn.Cohorts},
		{"opt-in-tenant", "tenant always sent to the canary", &c.OptIn.Tenants},
		{"exclude-identity", "identity never sent to a canary", &c.Excluded.Identities},
		{"exclude-cohort", "x-llmcanary-cohort value never sent to a canary", &c.Excluded.Cohorts},
		{"exclude-tenant", "tenant never sent to a canary", &c.Excluded.Tenants},
	}
	for _, l := range lists {
		fs.Var((*listFlag)(l.dst), l.name, l.usage)
	}
	if _, err := parseInterleaved(fs, args); err != nil {
		return err
	}
	if *model == "" {
		return errors.New("--model is required")
	}
	api, err := mf.client()
	if err != nil {
		return err
	}
	var m *xds.Model
	switch set := !c.OptIn.Empty() || !c.Excluded.Empty(); {
	case set && *clear:
		return errors.New("--clear and a list of members exclude each other")
	case set || *clear:
		m, err = api.SetCohorts(ctx, *model, c)
	default:
		m, err = api.Model(ctx, *model)
	}
	if err != nil {
		return err
	}
	if m.Cohorts == nil {
		fmt.Fprintf(out, "%s: no cohorts\n", m.Name)
		return nil
	}
	canary, ok := m.OptInCanary()
	if !ok {
		canary = "no canary has traffic: opt-in users follow their bucket"
	}
	fmt.Fprintf(out, "%s: opt-in → %s\n", m.Name, canary)
	printMembers(out, m.Cohorts.OptIn)
	fmt.Fprintf(out, "%s: excluded → %s (stable)\n", m.Name, m.Stable)
	printMembers(out, m.Cohorts.Excluded)
	return nil
}

func printMembers(w io.Writer, m xds.CohortMembers) {
	for _, l := range []struct {
		what string
		vs   []string
	}{{"identities", m.Identities}, {"cohorts", m.Cohorts}, {"tenants", m.Tenants}} {
		if len(l.vs) > 0 {
			fmt.Fprintf(w, "  %-10s %s\n", l.what, strings.Join(l.vs, ", "))
		}
	}
}

func runHistory(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("history", `Shows every version that was stable for a model, oldest first: when, by
which revision, actor and rollout, and why.
Example: llmcanary history llama-3-8b`)
	mf := addManagementFlags(fs)
	positional, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(positional) != 1 {
		return errors.New("give one model name")
	}
	api, err := mf.client()
	if err != nil {
		return err
	}
	h, err := api.History(ctx, positional[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: stable %s\n", h.Model, h.Stable)
	for _, e := range h.History {
		from := ""
		if e.Previous != "" {
			from = " (was " + e.Previous + ")"
		}
		by := e.Actor
		if e.Rollout != "" {
			by += ", rollout " + e.Rollout
		}
		fmt.Fprintf(out, "  %s  r%d  %s%s  by %s: %s\n", e.At.Local().Format("2006-01-02 15:04:05"), e.Revision, e.Version, from, by, e.Reason)
	}
	return nil
}
