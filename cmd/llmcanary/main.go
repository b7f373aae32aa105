// Command llmcanary is the single binary of the project. Each part of the
// system is a subcommand registered from its own file in this folder.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"sort"
	"syscall"
)

// command is one subcommand. Run parses its own flags from args.
type command struct {
	Name    string
	Summary string
	Run     func(ctx context.Context, args []string) error
}

var commands = map[string]command{}

// register adds a subcommand; files in this folder call it from init.
func register(c command) {
	if _, dup := commands[c.Name]; dup {
		panic("llmcanary: duplicate subcommand " + c.Name)
	}
	commands[c.Name] = c
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "llmcanary: safe rollouts of LLM versions behind Envoy\n\nUsage:\n  llmcanary <command> [flags]\n\nCommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].Summary)
	}
	fmt.Fprintf(w, "\nRun 'llmcanary <command> --help' for a command's flags.\n")
}

func main() {
	if len(os.Args) < 2 {
		usage(os.Stderr)
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "help" || name == "-h" || name == "--help" || name == "-help" {
		usage(os.Stdout)
		return
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "llmcanary: unknown command %q\n\n", name)
		usage(os.Stderr)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stopProfile := startCPUProfile(name)
	err := c.Run(ctx, os.Args[2:])
	stopProfile()
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "llmcanary %s: %v\n", name, err)
		os.Exit(1)
	}
}

// cpuProfileEnv names a path prefix: when set, every subcommand writes a
// CPU profile of its whole run to <prefix>.<command>.<pid>.pprof, for `go
// tool pprof`. It is how the gateway benchmark's processes are profiled.
const cpuProfileEnv = "LLMCANARY_CPU_PROFILE"

func startCPUProfile(command string) (stop func()) {
	prefix := os.Getenv(cpuProfileEnv)
	if prefix == "" {
		return func() {}
	}
	f, err := os.Create(fmt.Sprintf("%s.%s.%d.pprof", prefix, command, os.Getpid()))
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "llmcanary: %s: %v\n", cpuProfileEnv, err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// newFlagSet returns a FlagSet whose --help prints the command's summary and
// every flag with its default.
// parseInterleaved parses args with fs, taking flags wherever they stand
// (`rollout status <id> --watch`, `weights v1=90 v2=10 --wait 10s`), and
// returns the other arguments in order. "--" ends the flags.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return rest, nil
		}
		if args[0] == "--" {
			return append(rest, args[1:]...), nil
		}
		rest = append(rest, args[0])
		args = args[1:]
	}
}

func newFlagSet(name, summary string) *flag.FlagSet {
	fs := flag.NewFlagSet("llmcanary "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: llmcanary %s [flags]\n\n%s\n\nFlags:\n", name, summary)
		fs.PrintDefaults()
	}
	return fs
}
