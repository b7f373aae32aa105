package main

import (
	"context"
	"fmt"
	"runtime/debug"
)

func init() {
	register(command{
		Name:    "version",
		Summary: "print the build's version",
		Run: func(ctx context.Context, args []string) error {
			fs := newFlagSet("version", "Prints the module version and the Go toolchain that built the binary.")
			if err := fs.Parse(args); err != nil {
				return err
			}
			v, goVer := "(devel)", ""
			if bi, ok := debug.ReadBuildInfo(); ok {
				v, goVer = bi.Main.Version, bi.GoVersion
			}
			fmt.Printf("llmcanary %s %s\n", v, goVer)
			return nil
		},
	})
}
