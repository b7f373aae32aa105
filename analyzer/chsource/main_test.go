//go:build integration

package chsource

import (
	"testing"

	"github.com/llmcanary/llmcanary/internal/procs/chtest"
)

func TestMain(m *testing.M) { chtest.Main(m) }
