package stats_test

import (
	"errors"
	"fmt"
	"math"

	"github.com/llmcanary/llmcanary/analyzer/stats"
)

// A runner keeps one monitor per metric for the whole stage and feeds it each
// interval's observations; it acts only on Reject, never on a re-run
// fixed-horizon test.
func ExampleProportionMSPRT() {
	mon, err := stats.NewProportionMSPRT(stats.SequentialOptions{Alpha: 0.05, Tau: 0.05})
	if err != nil {
		panic(err)
	}
	// Bad answers per interval: canary 12% on 60 requests, stable 3% on 540.
	for look := 1; look <= 4; look++ {
		res, err := mon.LookCounts(7, 60, 16, 540)
		switch {
		case errors.Is(err, stats.ErrTooFewSamples):
			fmt.Printf("look %d: hold, not enough data\n", look)
		case err != nil:
			panic(err)
		default:
			fmt.Printf("look %d: diff %+.3f p %.4f reject %v\n", look, res.Estimate, res.PValue, res.Reject)
		}
	}
	// Output:
	// look 1: hold, not enough data
	// look 2: diff +0.087 p 0.0972 reject false
	// look 3: diff +0.087 p 0.0151 reject true
	// look 4: diff +0.087 p 0.0022 reject true
}

// SimulateAA measures the false-alarm rate of a monitor under repeated looks,
// next to the naive fixed-horizon test re-run at every look.
func ExampleSimulateAA() {
	res, err := stats.SimulateAA(stats.SimConfig{
		Rollouts: 200, Looks: 20, PerLook: 1000, CanaryShare: 0.1, Alpha: 0.05, Seed: 1,
		Stable: stats.LogNormal(math.Log(400), 0.5),
		NewMonitor: func() (stats.Monitor, error) {
			return stats.NewMeanMSPRT(stats.SequentialOptions{Alpha: 0.05, Tau: 50})
		},
	})
	if err != nil {
		panic(err)
	}
	fmt.Printf("sequential below alpha: %v, naive above alpha: %v\n", res.SequentialRate <= 0.05, res.NaiveRate > 0.05)
	// Output:
	// sequential below alpha: true, naive above alpha: true
}
