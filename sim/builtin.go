package sim

import (
	"embed"
	"fmt"
	"os"
)

//go:embed profiles/*.yaml
var builtin embed.FS

// Builtin returns one of the profiles in sim/profiles by name (stable,
// canary-healthy, canary-regressed, judge).
func Builtin(name string) (Profile, error) {
	b, err := builtin.ReadFile("profiles/" + name + ".yaml")
	if err != nil {
		return Profile{}, fmt.Errorf("no built-in profile %q (stable, canary-healthy, canary-regressed, judge)", name)
	}
	return ParseProfile(b)
}

// LoadOrBuiltin reads spec as a YAML file if one exists there, else as the
// name of a built-in profile.
func LoadOrBuiltin(spec string) (Profile, error) {
	if _, err := os.Stat(spec); err == nil {
		return LoadProfile(spec)
	}
	return Builtin(spec)
}
