package analyzer

import (
	"fmt"
	"math"

	"github.com/llmcanary/llmcanary/internal/config"
	"github.com/llmcanary/llmcanary/xds"
)

// Risk grades how different a canary's checkpoint is from stable's.
type Risk string

const (
	// RiskLow: same weights, only serving configuration changed.
	RiskLow Risk = "low"
	// RiskMedium: a fine-tune or adapter of the same base model.
	RiskMedium Risk = "medium"
	// RiskHigh: the same family at another size, or too little metadata
	// to tell.
	RiskHigh Risk = "high"
	// RiskCritical: another model family.
	RiskCritical Risk = "critical"
)

// Strategy names the shape of a plan.
type Strategy string

const (
	// StrategyFastCanary: few, large stages.
	StrategyFastCanary Strategy = "fast-canary"
	// StrategyCanary: the policy's stages as configured.
	StrategyCanary Strategy = "canary"
	// StrategyCarefulCanary: a 1 % first stage, longer stages, tighter
	// tolerances, and a human decides when a stage is inconclusive.
	StrategyCarefulCanary Strategy = "careful-canary"
)

// Plan is the policy one rollout runs with, and why it was chosen.
type Plan struct {
	Risk       Risk     `json:"risk"`
	RiskReason string   `json:"risk_reason"`
	Strategy   Strategy `json:"strategy"`
	// MinEvaluation is the least time the evaluated stages take together.
	MinEvaluation config.Duration `json:"min_evaluation"`
	Policy        Policy          `json:"policy"`
	// Cost is the plan's GPU cost and capacity check (PlanCost), set
	// when the rollout starts.
	Cost *Cost `json:"cost,omitempty"`
}

// GradeRisk grades the change from stable to canary from their metadata:
// the same weights hash is a configuration change (low); the same base
// model a fine-tune or adapter (medium); the same family at another
// parameter count high; another family critical. Missing metadata grades
// high: without it nothing shows the change is small.
func GradeRisk(stable, canary xds.VersionMetadata) (Risk, string) {
	switch {
	case stable.WeightsHash != "" && stable.WeightsHash == canary.WeightsHash:
		return RiskLow, fmt.Sprintf("same weights (hash %s): a serving configuration change", short(canary.WeightsHash))
	case stable.BaseModel != "" && stable.BaseModel == canary.BaseModel:
		return RiskMedium, fmt.Sprintf("same base model %s: a fine-tune or adapter", canary.BaseModel)
	case stable.Family == "" || canary.Family == "":
		return RiskHigh, "weights, base model and family are not all known: assuming a large change"
	case stable.Family != canary.Family:
		return RiskCritical, fmt.Sprintf("another model family (%s to %s)", stable.Family, canary.Family)
	case stable.ParametersB != canary.ParametersB:
		return RiskHigh, fmt.Sprintf("same family %s at another size (%gB to %gB parameters)", canary.Family, stable.ParametersB, canary.ParametersB)
	default:
		return RiskHigh, fmt.Sprintf("same family %s and size, but another base model: a different checkpoint", canary.Family)
	}
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// PlanFor returns the default plan for a change: the base policy (already
// resolved for the model) shaped by the change's risk. Low risk moves in
// three large steps; medium runs the policy as configured; high and
// critical start at 1 %, stay longer per stage, tighten every tolerance
// (by a quarter and by half) and pause for a human when a stage is
// inconclusive. PlanFor is pure.
func PlanFor(base Policy, stable, canary xds.VersionMetadata) Plan {
	risk, why := GradeRisk(stable, canary)
	p := base.clone()
	p.Models = nil
	strategy := StrategyCanary
	scale := func(durations, samples, tolerances float64) {
		for i := range p.Stages {
			p.Stages[i].MinDuration = config.Duration(float64(p.Stages[i].MinDuration) * durations)
			p.Stages[i].MinSamples = int(math.Ceil(float64(p.Stages[i].MinSamples) * samples))
		}
		for m, t := range p.Tolerances {
			p.Tolerances[m] = t * tolerances
		}
		if max := config.Duration(float64(p.MaxStageDuration) * durations); max > p.MaxStageDuration {
			p.MaxStageDuration = max
		}
	}
	switch risk {
	case RiskLow:
		strategy = StrategyFastCanary
		ev := p.EvaluatedStages()
		first := ev[0]
		first.Weight = math.Max(first.Weight, 10)
		p.Stages = []Stage{first}
		if last := ev[len(ev)-1]; last.Weight > first.Weight {
			p.Stages = append(p.Stages, last)
		}
		p.Stages = append(p.Stages, Stage{Weight: 100})
		scale(0.5, 1, 1)
	case RiskHigh, RiskCritical:
		strategy = StrategyCarefulCanary
		if ev := p.EvaluatedStages(); ev[0].Weight > 1 {
			first := ev[0]
			first.Weight = 1
			p.Stages = append([]Stage{first}, p.Stages...)
		}
		if risk == RiskHigh {
			scale(1.5, 1.5, 0.75)
		} else {
			scale(2, 2, 0.5)
		}
		p.OnInconclusive = InconclusivePause
	}
	var total config.Duration
	for _, s := range p.EvaluatedStages() {
		total += s.MinDuration
	}
	return Plan{Risk: risk, RiskReason: why, Strategy: strategy, MinEvaluation: total, Policy: p}
}
