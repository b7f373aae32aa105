package analyzer

import (
	"context"
	"fmt"
	"time"

	"github.com/llmcanary/llmcanary/xds"
)

// Cost is what a plan costs in GPUs: running the canary's pool beside
// stable's (both loaded) for the plan's minimum evaluation, and whether the
// canary's pool can take each stage's share of the model's traffic.
type Cost struct {
	// CanaryGPUs is the canary pool's replicas times GPUs per replica; 0
	// when either is not declared.
	CanaryGPUs int `json:"canary_gpus"`
	// ExtraGPUHours is CanaryGPUs over the plan's minimum evaluation: what
	// the rollout adds to running stable alone.
	ExtraGPUHours float64 `json:"extra_gpu_hours"`
	// ExtraUSD prices ExtraGPUHours at the canary's price per GPU-hour
	// (in dollars, like every price of the metadata); 0 when no price is
	// declared.
	ExtraUSD float64 `json:"extra_usd"`
	// RequestRateRPS is the model's request rate the stages were checked
	// at, and RateSource where it comes from: "observed" (the request
	// log's last hour), "declared" (the model's request_rate_rps) or ""
	// (neither: capacity not checked).
	RequestRateRPS float64 `json:"request_rate_rps"`
	RateSource     string  `json:"rate_source,omitempty"`
	// CapacityRPS is the canary pool's declared capacity; 0 when not
	// declared.
	CapacityRPS float64 `json:"capacity_rps"`
	// Warnings name each stage (and the promotion) that would send the
	// canary more requests than its pool's capacity, and what the
	// metadata leaves unknown.
	Warnings []string `json:"warnings,omitempty"`
	// Summary is the cost in one sentence.
	Summary string `json:"summary"`
}

// Rate sources of Cost.RateSource.
const (
	RateObserved = "observed"
	RateDeclared = "declared"
)

// PlanCost returns the cost of plan p for the canary's pool (its metadata)
// at the model's request rate (rps, from source; 0 when unknown). Pure.
func PlanCost(p Plan, canary xds.VersionMetadata, rps float64, source string) Cost {
	c := Cost{CanaryGPUs: canary.Replicas * canary.GPUsPerReplica, CapacityRPS: canary.CapacityRPS}
	if rps > 0 {
		c.RequestRateRPS, c.RateSource = rps, source
	}
	hours := p.MinEvaluation.D().Hours()
	c.ExtraGPUHours = float64(c.CanaryGPUs) * hours
	c.ExtraUSD = c.ExtraGPUHours * canary.PricePerGPUHour
	switch {
	case c.CanaryGPUs == 0:
		c.Warnings = append(c.Warnings, "the canary's replicas and GPUs per replica are not both declared: its GPU cost is unknown")
		c.Summary = fmt.Sprintf("GPU cost unknown for the %s minimum evaluation", roundHours(p.MinEvaluation.D()))
	case canary.PricePerGPUHour == 0:
		c.Warnings = append(c.Warnings, "the canary's price per GPU-hour is not declared: the money is unknown")
		c.Summary = fmt.Sprintf("running the canary's %d GPUs beside stable for the %s minimum evaluation adds %.1f GPU-hours", c.CanaryGPUs, roundHours(p.MinEvaluation.D()), c.ExtraGPUHours)
	default:
		c.Summary = fmt.Sprintf("running the canary's %d GPUs beside stable for the %s minimum evaluation adds %.1f GPU-hours, $%.2f at $%.2f per GPU-hour",
			c.CanaryGPUs, roundHours(p.MinEvaluation.D()), c.ExtraGPUHours, c.ExtraUSD, canary.PricePerGPUHour)
	}
	switch {
	case c.CapacityRPS == 0:
		c.Warnings = append(c.Warnings, "the canary pool's capacity (capacity_rps) is not declared: stages are not checked against it")
	case c.RateSource == "":
		c.Warnings = append(c.Warnings, "the model's request rate is neither observed nor declared (request_rate_rps): stages are not checked against the canary's capacity")
	default:
		stages := append(p.Policy.EvaluatedStages(), Stage{Weight: 100})
		for i, s := range stages {
			load := rps * s.Weight / 100
			if load <= c.CapacityRPS {
				continue
			}
			what := fmt.Sprintf("stage %d (%g %%)", i+1, s.Weight)
			if s.Weight == 100 {
				what = "the promotion (100 %)"
			}
			c.Warnings = append(c.Warnings, fmt.Sprintf("%s would send the canary %.1f requests/s (%g %% of the %s %.1f/s), above its pool's capacity of %.1f/s",
				what, load, s.Weight, c.RateSource, rps, c.CapacityRPS))
		}
	}
	return c
}

func roundHours(d time.Duration) string { return d.Round(time.Minute).String() }

// RateObserver is implemented by a MetricsSource that can tell a model's
// recent request rate (requests per second over every version).
type RateObserver interface {
	RequestRate(ctx context.Context, model string, over time.Duration) (float64, error)
}

// requestRate is the model's observed rate when the source can tell (and
// saw traffic), else its declared one.
func (r *Runner) requestRate(ctx context.Context, m *xds.Model) (float64, string) {
	if ro, ok := r.Source.(RateObserver); ok {
		if rps, err := ro.RequestRate(ctx, m.Name, time.Hour); err == nil && rps > 0 {
			return rps, RateObserved
		} else if err != nil {
			r.log().Warn("plan: the model's request rate could not be read; using the declared one", "model", m.Name, "error", err)
		}
	}
	return m.RequestRateRPS, RateDeclared
}
