package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/xds"
)

func init() {
	register(command{
		Name:    "rollout",
		Summary: "start, watch and steer rollouts through the analyzer's API",
		Run:     runRollout,
	})
}

const rolloutUsage = `Usage: llmcanary rollout <action> [flags] [id]

Actions:
  start     --model M --canary V [--stable V] [--abtest --split 50] [--policy file.yaml]
            [--shadow 10 [--shadow-max-concurrent 16] [--shadow-min-pairs 200]]
                                    --shadow: a shadow stage first, mirroring that
                                    percentage of user requests to the canary
            [--preflight suite.jsonl [--preflight-max-net-loss 0.1]
             [--preflight-max-errors 0] [--preflight-max-latency-ratio 1.5]]
            [--no-preflight]        --preflight: a pre-flight stage first: forced
                                    warm-up of the canary, then the suite's prompts
                                    (JSON Lines: prompt, reference or rubric,
                                    category) sent to both versions and judged in
                                    pairs; on by default (warm-up only) for high
                                    and critical risk, unless --no-preflight
  revert    <model>                 a rollout back to the version that was stable
                                    before the current one (the control plane's
                                    history says which), measured like any other
  list      [--model M]
  status    <id> [--watch] [--json]
  pause     <id> [--note text]
  resume    <id> [--note text]
  promote   <id> [--note text]
  rollback  <id> [--note text]
  abort     <id> [--note text]
  report    <id> [-o report.html]   one self-contained HTML page: plan, stages,
                                    weight and every metric over time, latency
                                    per version, decisions, worst answers

Every action takes --analyzer (default $LLMCANARY_ANALYZER or
http://127.0.0.1:18090), --token-file (default $LLMCANARY_API_TOKEN) and
--ca (default $LLMCANARY_CA), the CA that verifies an https analyzer.
`

func runRollout(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stdout, rolloutUsage)
		if len(args) == 0 {
			return errors.New("an action is required")
		}
		return flag.ErrHelp
	}
	action, args := args[0], args[1:]
	fs := newFlagSet("rollout "+action, "Talks to the analyzer's rollout API.")
	addr := fs.String("analyzer", envOr("LLMCANARY_ANALYZER", "http://127.0.0.1:18090"), "base URL of the analyzer's API; several analyzers: their URLs separated by commas")
	tokenFile := fs.String("token-file", "", "file holding the API bearer token (default: $LLMCANARY_API_TOKEN)")
	ca := fs.String("ca", os.Getenv("LLMCANARY_CA"), "PEM CA certificate that verifies an https --analyzer (default $LLMCANARY_CA, else the system's roots)")
	actorName := fs.String("actor", envOr("USER", "cli"), "name recorded in the rollout's history")
	var (
		model, stable, policyFile, note, out, split *string
		suiteFile                                   *string
		abtest, watch, asJSON, noPreflight          *bool
		shadow, pfNetLoss, pfLatency                *float64
		shadowMax, shadowPairs, pfErrors            *int
		every                                       *time.Duration
		canaries                                    listFlag
	)
	switch action {
	case "start":
		model = fs.String("model", "", "model name (required)")
		fs.Var(&canaries, "canary", "canary version (required); an A/B/n experiment (--abtest) takes several, comma-separated or repeated")
		stable = fs.String("stable", "", "stable version (default: the model's stable version)")
		abtest = fs.Bool("abtest", false, "run an A/B test at a fixed split instead of a staged rollout")
		split = fs.String("split", "", "canary percentage of an A/B test (default 50); with several candidates each one's (default an equal share with stable), or per candidate: v2=20,v3=10")
		policyFile = fs.String("policy", "", "YAML file overriding fields of the planned policy")
		shadow = fs.Float64("shadow", 0, "run a shadow stage first, mirroring this percentage of user requests to the canary (0: none)")
		shadowMax = fs.Int("shadow-max-concurrent", 0, "mirrored requests in flight at the canary at most (default 16)")
		shadowPairs = fs.Int("shadow-min-pairs", 0, "judged pairs before the shadow stage may pass (default 200)")
		suiteFile = fs.String("preflight", "", "run a pre-flight stage first with this prompt suite (JSON Lines: prompt, optional reference or rubric, category)")
		noPreflight = fs.Bool("no-preflight", false, "no pre-flight stage, even for a high or critical risk change")
		pfNetLoss = fs.Float64("preflight-max-net-loss", 0, "pre-flight gate: the canary's losses minus wins over judged pairs, at most (default 0.1)")
		pfErrors = fs.Int("preflight-max-errors", 0, "pre-flight gate: the canary's failed requests, at most")
		pfLatency = fs.Float64("preflight-max-latency-ratio", 0, "pre-flight gate: the canary's latency over stable's on the same prompts, at most (default 1.5)")
	case "revert":
		policyFile = fs.String("policy", "", "YAML file overriding fields of the planned policy")
	case "list":
		model = fs.String("model", "", "only this model's rollouts")
	case "status":
		watch = fs.Bool("watch", false, "refresh until the rollout ends")
		every = fs.Duration("every", 2*time.Second, "refresh interval of --watch")
		asJSON = fs.Bool("json", false, "print the rollout as JSON")
	case "pause", "resume", "promote", "rollback", "abort":
		note = fs.String("note", "", "note recorded with the action")
	case "report":
		out = fs.String("o", "", "file the report is written to (default report-<id>.html)")
	default:
		fmt.Fprint(os.Stderr, rolloutUsage)
		return fmt.Errorf("unknown action %q", action)
	}
	positional, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	token, hc, err := apiCredentials(*tokenFile, *ca)
	if err != nil {
		return err
	}
	c := &analyzer.Client{BaseURL: strings.TrimRight(*addr, "/"), Token: token, Actor: *actorName, HTTP: hc}
	id := ""
	if len(positional) > 0 {
		id = positional[0]
	}
	needID := action != "start" && action != "list"
	if needID && id == "" {
		what := "a rollout id"
		if action == "revert" {
			what = "a model name"
		}
		return fmt.Errorf("rollout %s needs %s", action, what)
	}
	switch action {
	case "start", "revert":
		var req analyzer.StartRequest
		if action == "revert" {
			req = analyzer.StartRequest{Model: id, Revert: true}
		} else {
			req = analyzer.StartRequest{Model: *model, Stable: *stable}
			if len(canaries) == 1 {
				req.Canary = canaries[0]
			} else {
				req.Candidates = canaries
			}
			if err := parseSplit(*split, &req); err != nil {
				return err
			}
			if *abtest {
				req.Mode = analyzer.ModeABTest
			}
			if *shadow != 0 || *shadowMax != 0 || *shadowPairs != 0 {
				if *shadow <= 0 || *shadowMax < 0 || *shadowPairs < 0 {
					return fmt.Errorf("--shadow %v must be a positive percentage (and the shadow limits not negative)", *shadow)
				}
				req.Shadow = &analyzer.ShadowPolicy{Percent: *shadow, MaxConcurrent: uint32(*shadowMax), MinPairs: *shadowPairs}
			}
			if req.Preflight, err = preflightFlags(*suiteFile, *pfNetLoss, *pfErrors, *pfLatency); err != nil {
				return err
			}
			req.NoPreflight = *noPreflight
		}
		if *policyFile != "" {
			raw, err := policyOverride(*policyFile)
			if err != nil {
				return err
			}
			req.Policy = raw
		}
		ro, err := c.Start(ctx, req)
		if err != nil {
			return err
		}
		fmt.Printf("started %s: %s %s → %s, %s risk (%s), %s\n", ro.ID, ro.Model, ro.Stable, ro.Canary, ro.Plan.Risk, ro.Plan.RiskReason, ro.Plan.Strategy)
		if ro.Reverts != nil {
			fmt.Printf("reverts  %s\n", revertLine(ro.Reverts))
		}
		printCost(os.Stdout, ro.Plan.Cost)
		return nil
	case "list":
		all, err := c.List(ctx, *model)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tMODEL\tSTABLE\tCANARY\tMODE\tSTATUS\tSTAGE\tWEIGHT\tLAST DECISION")
		for _, r := range all {
			last := ""
			if r.Last != nil {
				last = string(r.Last.Action) + " (" + string(r.Last.Code) + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%g%%\t%s\n", r.ID, r.Model, r.Stable, r.Canary, r.Mode, r.Status, r.Progress.Stage, r.Progress.Stages, r.Progress.Weight, last)
		}
		return tw.Flush()
	case "status":
		for {
			ro, err := c.Get(ctx, id)
			if err != nil {
				return err
			}
			if *asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(ro); err != nil {
					return err
				}
			} else {
				if *watch {
					fmt.Print("\033[H\033[2J")
				}
				printStatus(os.Stdout, ro)
			}
			if !*watch || !ro.Status.Active() {
				return nil
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(*every):
			}
		}
	case "report":
		html, err := c.Report(ctx, id)
		if err != nil {
			return err
		}
		path := *out
		if path == "" {
			path = "report-" + id + ".html"
		}
		if err := os.WriteFile(path, html, 0o644); err != nil {
			return err
		}
		fmt.Printf("report of %s written to %s (%d KB)\n", id, path, (len(html)+1023)/1024)
		return nil
	default:
		ro, err := c.Operate(ctx, id, analyzer.Operation(action), *note)
		if err != nil {
			return err
		}
		fmt.Printf("%s: %s\n", ro.ID, ro.History[len(ro.History)-1].Reason)
		return nil
	}
}

// policyOverride reads a YAML policy fragment and returns it as JSON, the
// form the API takes.
func policyOverride(path string) (json.RawMessage, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	return j, nil
}

func readToken(file string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(b)), nil
	}
	if t := os.Getenv("LLMCANARY_API_TOKEN"); t != "" {
		return t, nil
	}
	return "", errors.New("no API token: use --token-file or set LLMCANARY_API_TOKEN")
}

// preflightFlags returns the start request's pre-flight policy: nil
// without --preflight (the gate flags then need it), else the suite read
// from file with the gates given.
func preflightFlags(file string, netLoss float64, maxErrors int, latency float64) (*analyzer.PreflightPolicy, error) {
	if file == "" {
		if netLoss != 0 || maxErrors != 0 || latency != 0 {
			return nil, errors.New("the --preflight-* gates need --preflight suite.jsonl")
		}
		return nil, nil
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("--preflight: %w", err)
	}
	defer f.Close()
	suite, err := analyzer.ParseSuite(f)
	if err != nil {
		return nil, fmt.Errorf("--preflight %s: %w", file, err)
	}
	return &analyzer.PreflightPolicy{Suite: suite, Gates: analyzer.PreflightGates{MaxNetLossShare: netLoss, MaxErrors: maxErrors, MaxLatencyRatio: latency}}, nil
}

// printPreflight writes a rollout's pre-flight stage: its phase and
// progress, then its verdict.
func printPreflight(w io.Writer, pf *analyzer.PreflightStage) {
	if pf == nil {
		return
	}
	pr := pf.Progress
	fmt.Fprintf(w, "preflight %s, %s: warm-up %d requests (TTFT median %v), suite %d of %d prompts  %s\n",
		pf.Status, pr.Phase, pr.Warmup, pr.TTFTMedian.Round(time.Millisecond), pr.SuiteDone, pr.SuiteTotal, bar(ratio(float64(pr.SuiteDone), float64(pr.SuiteTotal))))
	if v := pf.Verdict; v != nil {
		fmt.Fprintf(w, "         judged %d: canary won %d, lost %d, tied %d; canary errors %d; latency ratio %.3f\n         %s\n",
			v.Judged, v.Wins, v.Losses, v.Ties, v.CanaryErrors, v.LatencyRatio, v.Reason)
	}
}

// printShadow writes a rollout's shadow stage: the mirrored load and its
// cap, the pairs and the tests. While the pre-flight runs (afterPreflight)
// nothing is mirrored yet, and the stage says so.
func printShadow(w io.Writer, sh *analyzer.ShadowStage, afterPreflight bool) {
	if sh == nil {
		return
	}
	if afterPreflight && sh.Running() {
		fmt.Fprintf(w, "shadow   after the pre-flight: %g %% of user requests will be mirrored to the canary, at most %d in flight\n", sh.Policy.Percent, sh.Policy.MaxConcurrent)
		return
	}
	fmt.Fprintf(w, "shadow   %s: %g %% of user requests mirrored to the canary, at most %d in flight\n", sh.Status, sh.Policy.Percent, sh.Policy.MaxConcurrent)
	if d := sh.Last; d != nil {
		pp := d.Pairs
		fmt.Fprintf(w, "pairs    %d mirrored, %d paired; judged: canary won %d, lost %d (%d failed), tied %d  %s\n",
			pp.Mirrored, pp.Paired, pp.Wins, pp.Losses, pp.CanaryFailed, pp.Ties, bar(ratio(float64(pp.Wins+pp.Losses+pp.Ties), float64(sh.Policy.MinPairs))))
		fmt.Fprintf(w, "         loss share %.2f (p=%.4f), score gap %.3f, latency ratio %.3f\n", d.Losses.Estimate, d.Losses.PValue, d.ScoreDiff.Estimate, d.Latency.Estimate)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// printArms writes an A/B/n experiment: each arm's split and status, its
// decision and its metrics with the Holm-adjusted p-values.
func printArms(w io.Writer, ro *analyzer.RolloutView) {
	stable := 100.0
	for _, c := range ro.Candidates {
		if c.Status != analyzer.ArmDropped {
			stable -= c.Split
		}
	}
	fmt.Fprintf(w, "arms     stable %s %g %%\n", ro.Stable, stable)
	for _, c := range ro.Candidates {
		fmt.Fprintf(w, "  %-10s %5g %%  %s\n", c.Version, c.Split, c.Status)
		if c.Reason != "" {
			fmt.Fprintf(w, "    %s\n", c.Reason)
		}
		if c.Report == nil {
			continue
		}
		if s := c.Report.SRM; s != nil {
			fmt.Fprintf(w, "    users %.1f %% observed, %.1f %% configured (p=%.4f)\n", s.ObservedShare, s.ConfiguredShare, s.PValue)
		}
		for _, m := range c.Report.Metrics {
			fmt.Fprintf(w, "    %-18s %-12s %+.4f p=%.4f adjusted=%.4f n=%d/%d\n", m.Metric, m.Status, m.Effect, m.PValue, m.Adjusted, m.NCanary, m.NStable)
		}
	}
	if ro.ABN != nil {
		fmt.Fprintf(w, "result   %s\n", ro.ABN.Summary)
	}
}

// parseSplit reads --split: one percentage, or version=percentage pairs
// separated by commas.
func parseSplit(v string, req *analyzer.StartRequest) error {
	if v == "" {
		return nil
	}
	if !strings.Contains(v, "=") {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return fmt.Errorf("--split %q: a percentage or version=percentage pairs (v2=20,v3=10)", v)
		}
		req.Split = f
		return nil
	}
	req.Splits = map[string]float64{}
	for _, part := range strings.Split(v, ",") {
		name, pct, ok := strings.Cut(strings.TrimSpace(part), "=")
		f, err := strconv.ParseFloat(strings.TrimSpace(pct), 64)
		if !ok || name == "" || err != nil {
			return fmt.Errorf("--split %q: %q is not version=percentage", v, part)
		}
		if _, dup := req.Splits[name]; dup {
			return fmt.Errorf("--split %q: %s is given twice", v, name)
		}
		req.Splits[name] = f
	}
	return nil
}

// printStatus writes a rollout's state for a terminal: stage, weight,
// samples against what the stage needs with a small bar, the last decision
// in its sentence, and the latest history.
func printStatus(w io.Writer, ro *analyzer.RolloutView) {
	p := ro.Progress
	fmt.Fprintf(w, "rollout %s  %s: %s → %s  [%s, %s]\n", ro.ID, ro.Model, ro.Stable, ro.Canary, ro.Mode, ro.Status)
	fmt.Fprintf(w, "plan     %s risk (%s), %s\n", ro.Plan.Risk, ro.Plan.RiskReason, ro.Plan.Strategy)
	if ro.Reverts != nil {
		fmt.Fprintf(w, "reverts  %s\n", revertLine(ro.Reverts))
	}
	printCost(w, ro.Plan.Cost)
	if len(ro.Candidates) > 0 {
		printArms(w, ro)
	} else if ro.Mode == analyzer.ModeABTest {
		fmt.Fprintf(w, "split    canary %g %%\n", ro.Split)
		if ro.Experiment != nil {
			fmt.Fprintf(w, "result   %s\n", ro.Experiment.Summary)
			for _, m := range ro.Experiment.Metrics {
				win := ""
				if m.WinRate != nil {
					win = fmt.Sprintf(" P(canary better)=%.2f", *m.WinRate)
				}
				fmt.Fprintf(w, "  %-18s %-12s p=%.4f n=%d/%d needed/arm=%d%s\n", m.Metric, m.Status, m.PValue, m.NCanary, m.NStable, m.NeededPerArm, win)
			}
		}
	} else {
		printPreflight(w, ro.Preflight)
		printShadow(w, ro.Shadow, ro.Preflight != nil && ro.Preflight.Status == analyzer.PreflightRunning)
		fmt.Fprintf(w, "stage    %d of %d at %g %%  %s\n", p.Stage, p.Stages, p.Weight, bar(float64(p.Stage)/float64(max(p.Stages, 1))))
		fmt.Fprintf(w, "samples  %d of %d canary requests  %s\n", p.Samples, p.MinSamples, bar(ratio(float64(p.Samples), float64(p.MinSamples))))
		fmt.Fprintf(w, "time     %s of %s minimum (%s maximum)  %s\n", p.InStage.Round(time.Second), p.MinDuration, p.MaxDuration, bar(ratio(float64(p.InStage), float64(p.MinDuration))))
		fmt.Fprintf(w, "metrics  %d of %d tested metrics within tolerance\n", p.Within, p.Tested)
		if ro.Last != nil && ro.Last.SRM != nil {
			s := ro.Last.SRM
			fmt.Fprintf(w, "split    canary %.1f %% of %d users (%g %% configured, p=%.4f)\n", s.ObservedShare, s.CanaryUsers+s.StableUsers, s.ConfiguredShare, s.PValue)
		}
		if ro.Last != nil {
			for _, m := range ro.Last.Metrics {
				events := ""
				if m.Events > 0 {
					events = fmt.Sprintf("  %d of %d users' first events on the canary, risk ratio %s", m.CanaryEvents, m.Events, analyzer.FormatRiskRatio(m.RiskRatio))
				}
				fmt.Fprintf(w, "  %-18s %-12s %+.4f  harm p=%.4f (level %.4f)  within p=%.4f%s\n", m.Metric, m.Status, m.Estimate, m.HarmP, m.HarmAlpha, m.SafeP, events)
			}
		}
	}
	if ro.Last != nil {
		fmt.Fprintf(w, "decision %s\n", ro.Last.Reason)
	}
	if ro.LastError != "" {
		fmt.Fprintf(w, "error    %s\n", ro.LastError)
	}
	start := max(0, len(ro.History)-5)
	if len(ro.History) > 0 {
		fmt.Fprintln(w, "history")
	}
	for _, e := range ro.History[start:] {
		rep := ""
		if e.Repeats > 0 {
			rep = fmt.Sprintf(" (×%d)", e.Repeats+1)
		}
		fmt.Fprintf(w, "  %s  %s%s\n", e.At.Local().Format("15:04:05"), e.Reason, rep)
	}
}

// revertLine says which stable change a revert undoes.
func revertLine(c *xds.StableChange) string {
	s := fmt.Sprintf("%s became stable on %s", c.Version, c.At.Local().Format("2006-01-02 15:04"))
	if c.Rollout != "" {
		s += " (rollout " + c.Rollout + ")"
	}
	return s + "; returning to " + c.Previous
}

// printCost writes a plan's GPU cost and its capacity warnings.
func printCost(w io.Writer, c *analyzer.Cost) {
	if c == nil {
		return
	}
	fmt.Fprintf(w, "cost     %s\n", c.Summary)
	for _, warn := range c.Warnings {
		fmt.Fprintf(w, "warning  %s\n", warn)
	}
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return 1
	}
	return min(1, a/b)
}

func bar(f float64) string {
	const width = 20
	n := int(f*width + 0.5)
	return "[" + strings.Repeat("█", n) + strings.Repeat("·", width-n) + "]"
}
