package chsource

import (
	"testing"

	"github.com/llmcanary/llmcanary/internal/stack/chtest"
)

func TestMain(m *testing.M) { chtest.Main(m) }
