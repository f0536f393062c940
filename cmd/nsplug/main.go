// Command nsplug runs nsplug handlers inside a process's namespaces.
//
//	nsplug call [--config FILE] --pid PID [--ns LIST] TYPE [PAYLOAD_JSON]
//	nsplug plugins [--config FILE] [--json]
//	nsplug demo
//
// The same binary serves the built-in plugins: the core starts them by
// re-executing it (see core.ServeBuiltin).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/hashicorp/go-hclog"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/plugins/builtin"
	"github.com/nsplug/nsplug/sdk"
)

const usage = `nsplug runs handlers inside the namespaces of a process.

Usage:
  nsplug call [--config FILE] --pid PID [--ns LIST] TYPE [PAYLOAD_JSON]
        Run one request in the namespaces of PID and print the JSON response.
        LIST narrows the namespaces joined (e.g. "net,uts"); by default every
        namespace of PID that differs from nsplug's own is joined.
  nsplug plugins [--config FILE] [--json]
        List the plugins and the message types each serves.
  nsplug demo
        Start a sandbox target in fresh namespaces and show a tour of requests.

Without --config, the embedded default configuration serves the built-in
plugins. --log-level (default warn) sets what reaches stderr.
`

func main() {
	builtin.Main() // serves a built-in plugin when started as one; else returns
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// exitError is an error with the exit status it asks for.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func usageErr(format string, args ...any) error {
	return &exitError{2, fmt.Errorf(format, args...)}
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "call":
		err = cmdCall(args[1:], stdout, stderr)
	case "plugins":
		err = cmdPlugins(args[1:], stdout, stderr)
	case "demo":
		err = cmdDemo(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		err = usageErr("unknown command %q (want call, plugins or demo)", args[0])
	}
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "nsplug: "+err.Error())
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.code == 2 {
			fmt.Fprintln(stderr, "run 'nsplug help' for usage")
		}
		return ee.code
	}
	return 1
}

// commonFlags are the flags every command shares.
type commonFlags struct {
	config   string
	logLevel string
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.config, "config", "", "TOML configuration `file` (default: the embedded one)")
	fs.StringVar(&c.logLevel, "log-level", "warn", "log `level` on stderr: trace, debug, info, warn, error")
}

// parse parses flags and positional arguments in any order.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageErr("%s: %v", fs.Name(), err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// open loads the configuration and starts a dispatcher with the built-ins.
func (c *commonFlags) open(stderr io.Writer) (*core.Dispatcher, error) {
	cfg := core.DefaultConfig()
	if c.config != "" {
		var err error
		if cfg, err = core.LoadConfig(c.config); err != nil {
			return nil, err
		}
	}
	level := hclog.LevelFromString(c.logLevel)
	if level == hclog.NoLevel {
		return nil, usageErr("--log-level: unknown level %q", c.logLevel)
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "nsplug", Level: level, Output: stderr})
	return core.New(cfg, core.Options{Logger: log, Builtins: builtin.All()})
}

func cmdCall(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("call", flag.ContinueOnError)
	var c commonFlags
	c.register(fs)
	pid := fs.Int("pid", 0, "target `PID`")
	nsList := fs.String("ns", "", "comma-separated namespaces to join (default: all that differ)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *pid == 0 {
		return usageErr("call: --pid is required")
	}
	if len(pos) < 1 || len(pos) > 2 {
		return usageErr("call: want TYPE [PAYLOAD_JSON]")
	}
	req := core.Request{PID: *pid, Type: pos[0]}
	if len(pos) == 2 {
		req.Payload = json.RawMessage(pos[1])
	}
	if *nsList != "" {
		req.Namespaces = strings.Split(*nsList, ",")
	}
	d, err := c.open(stderr)
	if err != nil {
		return err
	}
	defer d.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	resp, err := d.Dispatch(ctx, req)
	if err != nil {
		return err
	}
	return printJSON(stdout, resp)
}

func printJSON(w io.Writer, raw json.RawMessage) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return fmt.Errorf("plugin returned invalid JSON: %v", err)
	}
	out, _ := json.MarshalIndent(v, "", "  ")
	_, err := fmt.Fprintf(w, "%s\n", out)
	return err
}

func cmdPlugins(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("plugins", flag.ContinueOnError)
	var c commonFlags
	c.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageErr("plugins: unexpected argument %q", pos[0])
	}
	d, err := c.open(stderr)
	if err != nil {
		return err
	}
	defer d.Close()
	plugins := d.Plugins()
	if *asJSON {
		out, _ := json.MarshalIndent(map[string]any{"protocol_version": sdk.ProtocolVersion, "plugins": plugins}, "", "  ")
		_, err := fmt.Fprintf(stdout, "%s\n", out)
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	for _, p := range plugins {
		src := "built-in"
		if !p.Builtin {
			src = p.Path
		}
		fmt.Fprintf(tw, "%s\t(%s, %s, sha256 %.12s)\n", p.Name, src, p.Mode, p.SHA256)
		for _, t := range p.Types {
			fmt.Fprintf(tw, "  %s\tv%d\t%s\n", t.Name, t.Version, t.Description)
		}
	}
	return tw.Flush()
}
