package analyzer

import (
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/config"
	"github.com/llmcanary/llmcanary/xds"
)

func costPlan() Plan {
	return Plan{MinEvaluation: config.Duration(3 * time.Hour), Policy: Policy{Stages: []Stage{{Weight: 1}, {Weight: 5}, {Weight: 25}, {Weight: 50}, {Weight: 100}}}}
}

func TestPlanCostStatesTheCanaryPoolsExtraGPUHoursAndMoney(t *testing.T) {
	c := PlanCost(costPlan(), xds.VersionMetadata{Replicas: 2, GPUsPerReplica: 4, PricePerGPUHour: 2.5, CapacityRPS: 1000}, 100, RateDeclared)
	if c.CanaryGPUs != 8 || c.ExtraGPUHours != 24 || c.ExtraUSD != 60 {
		t.Fatalf("cost %+v, want 8 GPUs, 24 GPU-hours, 60", c)
	}
	if len(c.Warnings) != 0 || !strings.Contains(c.Summary, "24.0 GPU-hours, $60.00 at $2.50 per GPU-hour") {
		t.Fatalf("summary %q, warnings %q", c.Summary, c.Warnings)
	}
}

func TestPlanCostWarnsOfEveryStageAboveTheCanaryPoolsCapacity(t *testing.T) {
	md := xds.VersionMetadata{Replicas: 1, GPUsPerReplica: 1, PricePerGPUHour: 1, CapacityRPS: 20}
	c := PlanCost(costPlan(), md, 100, RateObserved)
	var got []string
	for _, w := range c.Warnings {
		got = append(got, w[:strings.Index(w, " would")])
	}
	if want := "stage 3 (25 %)|stage 4 (50 %)|the promotion (100 %)"; strings.Join(got, "|") != want {
		t.Fatalf("warnings %q, want %s", c.Warnings, want)
	}
	if !strings.Contains(c.Warnings[0], "25.0 requests/s (25 % of the observed 100.0/s), above its pool's capacity of 20.0/s") {
		t.Fatalf("warning %q", c.Warnings[0])
	}
	// Exactly at capacity (50 % of 40/s) is not above it.
	if c := PlanCost(costPlan(), md, 40, RateDeclared); len(c.Warnings) != 1 || !strings.HasPrefix(c.Warnings[0], "the promotion") {
		t.Fatalf("at 40/s: %q, want the promotion only", c.Warnings)
	}
}

func TestPlanCostSaysWhatTheMetadataLeavesUnknown(t *testing.T) {
	cases := []struct {
		name string
		md   xds.VersionMetadata
		rps  float64
		want []string
	}{
		{"nothing declared", xds.VersionMetadata{}, 0, []string{"GPUs per replica are not both declared", "capacity (capacity_rps) is not declared"}},
		{"no price", xds.VersionMetadata{Replicas: 2, GPUsPerReplica: 1, CapacityRPS: 5}, 1, []string{"price per GPU-hour is not declared"}},
		{"no request rate", xds.VersionMetadata{Replicas: 2, GPUsPerReplica: 1, PricePerGPUHour: 1, CapacityRPS: 5}, 0, []string{"request rate is neither observed nor declared"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := PlanCost(costPlan(), tc.md, tc.rps, RateDeclared)
			if len(c.Warnings) != len(tc.want) {
				t.Fatalf("warnings %q, want %d", c.Warnings, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(c.Warnings[i], w) {
					t.Errorf("warning %q lacks %q", c.Warnings[i], w)
				}
			}
		})
	}
}
