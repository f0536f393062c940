// Command nsplug runs nsplug handlers inside a process's namespaces.
//
//	nsplug call [--config FILE | --addr unix:///PATH] --pid PID[:STARTTIME] [--ns LIST] [--as UID:GID[:GROUPS]] [--root DIR] [--cwd DIR] TYPE [PAYLOAD_JSON]
//	nsplug id --pid PID
//	nsplug plugins [--config FILE | --addr unix:///PATH] [--json]
//	nsplug serve [--config FILE]
//	nsplug demo
//
// The same binary serves the built-in plugins: the core starts them by
// re-executing it (see plugins/builtin.Main).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/BurntSushi/toml"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	_ "github.com/nsplug/nsplug/core/goplugin" // third-party plugins, for call and plugins without --addr
	"github.com/nsplug/nsplug/plugins/builtin"
	"github.com/nsplug/nsplug/wire"
)

const usage = `nsplug runs handlers inside the namespaces of a process.

Usage:
  nsplug call [--config FILE | --addr unix:///PATH] --pid PID[:STARTTIME] [--ns LIST]
              [--as UID:GID[:G1,G2..]] [--root DIR] [--cwd DIR] TYPE [PAYLOAD_JSON]
        Run one request in the namespaces of PID and print the JSON response.
        PID:STARTTIME (as 'nsplug id' prints it) names the process for good:
        if it has exited and its pid was reused, the call fails with ESRCH
        instead of entering the process that has the pid now.
        LIST narrows the namespaces joined (e.g. "net,uts"); by default every
        namespace of PID that differs from nsplug's own is joined. --as, --root
        and --cwd make the handler act with those credentials (as the target
        sees them) instead of as the target's root. PAYLOAD_JSON "-" reads
        the payload from stdin. When the handler hands back open files, the
        output is {"response": ..., "files": [...]}.
  nsplug id --pid PID
        Print PID:STARTTIME, the identity of the process PID is now: its pid
        and its start time (field 22 of /proc/PID/stat, clock ticks after
        boot).
  nsplug plugins [--config FILE | --addr unix:///PATH] [--json]
        List the plugins, whether each loaded ("ok") or not ("failed", with
        the error), and the message types each serves. A plugin that failed
        is not the command's failure (exit 0), unless fail_on_plugin_error.
  nsplug serve [--config FILE]
        Run the node daemon: the API (api/v1/nsplug.proto) on the [server]
        socket, until SIGTERM or SIGINT; SIGHUP reloads the configuration.
  nsplug health [--addr unix:///PATH] [--timeout DURATION]
        Ask the daemon's grpc.health.v1 service whether it serves: prints
        SERVING and exits 0, or exits 1 (for readiness and liveness probes).
  nsplug demo
        Start a sandbox target in fresh namespaces and show a tour of requests.

Without --config, the embedded default configuration serves the built-in
plugins. With --addr (or NSPLUG_ADDR), call and plugins go through the
daemon at that socket instead of an in-process core, with the same output
and exit codes; the daemon's configuration applies. --log-level sets what reaches stderr, from nsplug and from its
plugins alike: given, it overrides the configuration's log_level; absent,
the configuration file's log_level applies, and without one, warn (so that
a failed request prints one line).
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
	case "id":
		err = cmdID(args[1:], stdout)
	case "plugins":
		err = cmdPlugins(args[1:], stdout, stderr)
	case "serve":
		err = cmdServe(args[1:], stderr)
	case "health":
		err = cmdHealth(args[1:], stdout)
	case "demo":
		err = cmdDemo(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		err = usageErr("unknown command %q (want call, id, plugins, serve, health or demo)", args[0])
	}
	if err == nil {
		return 0
	}
	if errors.Is(err, errHelp) {
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintln(stderr, "nsplug: "+oneLine(err.Error()))
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.code == 2 {
			fmt.Fprintln(stderr, "run 'nsplug help' for usage")
		}
		return ee.code
	}
	return 1
}

// oneLine joins the lines of an error message (a plugin's may have
// several): an error is one line on stderr.
func oneLine(s string) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "; ")
}

// commonFlags are the flags call and plugins share.
type commonFlags struct {
	config   string
	logLevel string
	addr     string
}

// envAddr is the daemon's address when --addr is not given.
const envAddr = "NSPLUG_ADDR"

func (c *commonFlags) register(fs *flag.FlagSet) {
	c.registerCore(fs)
	fs.StringVar(&c.addr, "addr", "", "go through the daemon at `unix:///PATH` (default: $"+envAddr+"; empty: an in-process core)")
}

// registerCore registers the flags of an in-process core.
func (c *commonFlags) registerCore(fs *flag.FlagSet) {
	fs.StringVar(&c.config, "config", "", "TOML configuration `file` (default: the embedded one)")
	fs.StringVar(&c.logLevel, "log-level", "", "log `level` on stderr: trace, debug, info, warn, error, off (overrides the config's log_level; default: its log_level, else warn)")
}

// daemonAddr is the daemon to go through, --addr or else $NSPLUG_ADDR; ""
// means an in-process core (--addr "" asks for one whatever the
// environment says). The flags of an in-process core are then an error:
// the daemon's own configuration applies.
func (c *commonFlags) daemonAddr(fs *flag.FlagSet) (string, error) {
	addr, from := c.addr, "--addr"
	if !flagGiven(fs, "addr") {
		addr, from = os.Getenv(envAddr), envAddr
	}
	if addr == "" {
		return "", nil
	}
	for _, f := range []string{"config", "log-level"} {
		if flagGiven(fs, f) {
			return "", usageErr("%s: --%s is for an in-process core; with %s=%s the daemon's configuration applies (--addr \"\" for an in-process core)", fs.Name(), f, from, addr)
		}
	}
	return addr, nil
}

func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

// configLogLevel is the log_level a configuration file sets itself, ""
// when it sets none (the embedded default's "info" is for embedders).
func configLogLevel(path string) string {
	var f struct {
		LogLevel string `toml:"log_level"`
	}
	if _, err := toml.DecodeFile(path, &f); err != nil {
		return "" // LoadConfig has reported what is wrong with it
	}
	return f.LogLevel
}

// errHelp is a command's --help: the usage goes to stdout.
var errHelp = errors.New("help requested")

// parse parses flags and positional arguments in any order.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, errHelp
			}
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

// open loads the configuration and starts a dispatcher with the
// built-ins. oneshot: for one request (see core.Options.Oneshot).
func (c *commonFlags) open(stderr io.Writer, oneshot bool) (*core.Dispatcher, error) {
	cfg, log, err := c.load(stderr, "warn")
	if err != nil {
		return nil, err
	}
	// A plugin that failed to load is reported where it matters, not as a
	// log line on every command: plugins lists it, and a call of its type
	// fails naming the failure, which is then that call's one line.
	return core.New(cfg, core.Options{Logger: log, Builtins: builtin.All(), LoadFailureLevel: hclog.Debug, Oneshot: oneshot})
}

// load reads the configuration (--config, or the embedded one) and makes
// the logger on stderr: at --log-level, else the file's own log_level, else
// fallback.
func (c *commonFlags) load(stderr io.Writer, fallback string) (*config.Config, hclog.Logger, error) {
	cfg := config.Default()
	if c.config != "" {
		var err error
		if cfg, err = config.Load(c.config); err != nil {
			return nil, nil, err
		}
	}
	name := c.logLevel
	if name == "" && c.config != "" {
		name = configLogLevel(c.config)
	}
	if name == "" {
		name = fallback
	}
	level := hclog.LevelFromString(name)
	if level == hclog.NoLevel {
		return nil, nil, usageErr("--log-level: unknown level %q", c.logLevel)
	}
	// Plugins log at the level shown: they drop lines below it.
	if cfg.LogLevel = level.String(); level == hclog.Off {
		cfg.LogLevel = "error"
	}
	return cfg, hclog.New(&hclog.LoggerOptions{Name: "nsplug", Level: level, Output: stderr}), nil
}

func cmdCall(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("call", flag.ContinueOnError)
	var c commonFlags
	c.register(fs)
	pid := fs.String("pid", "", "target `PID[:STARTTIME]`")
	nsList := fs.String("ns", "", "comma-separated namespaces to join (default: all that differ)")
	as := fs.String("as", "", "act as `UID:GID[:G1,G2,...]` (ids as the target sees them)")
	root := fs.String("root", "", "act with this root `DIR` (a path in the target)")
	cwd := fs.String("cwd", "", "act in this working `DIR` (a path in the target)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *pid == "" {
		return usageErr("call: --pid is required")
	}
	if len(pos) < 1 || len(pos) > 2 {
		return usageErr("call: want TYPE [PAYLOAD_JSON]")
	}
	req := core.Request{Type: pos[0]}
	if req.PID, req.StartTime, err = parseTarget(*pid); err != nil {
		return err
	}
	if len(pos) == 2 {
		req.Payload = json.RawMessage(pos[1])
		if pos[1] == "-" { // the payload on stdin, for large or generated ones
			data, err := io.ReadAll(io.LimitReader(os.Stdin, wire.MaxMessageBytes+1))
			if err != nil {
				return fmt.Errorf("reading the payload from stdin: %v", err)
			}
			if len(data) > wire.MaxMessageBytes {
				return fmt.Errorf("the payload on stdin is larger than %d bytes", wire.MaxMessageBytes)
			}
			req.Payload = data
		}
	}
	if *nsList != "" {
		req.Namespaces = strings.Split(*nsList, ",")
	}
	if *as != "" || *root != "" || *cwd != "" {
		creds, err := parseAs(*as)
		if err != nil {
			return err
		}
		creds.Root, creds.Cwd = *root, *cwd
		req.Credentials = creds
	}
	addr, err := c.daemonAddr(fs)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var resp *core.Response
	if addr != "" {
		resp, err = callDaemon(ctx, addr, req)
	} else {
		resp, err = callInProcess(ctx, &c, stderr, req)
	}
	if err != nil {
		return err
	}
	defer func() {
		for _, f := range resp.Files {
			f.Close()
		}
	}()
	return printResponse(stdout, resp)
}

func callInProcess(ctx context.Context, c *commonFlags, stderr io.Writer, req core.Request) (*core.Response, error) {
	d, err := c.open(stderr, true)
	if err != nil {
		return nil, err
	}
	defer d.Close() // the files handed back stay open: they are this process's
	return d.Call(ctx, req)
}

// printResponse prints a response as `call` shows it, from the daemon or
// from an in-process core alike.
func printResponse(stdout io.Writer, resp *core.Response) error {
	if len(resp.Files) == 0 {
		return printJSON(stdout, resp.Payload)
	}
	out, _ := json.Marshal(map[string]any{"response": resp.Payload, "files": describeFiles(resp.Files)})
	return printJSON(stdout, out)
}

// parseTarget reads PID or PID:STARTTIME.
func parseTarget(s string) (int, *uint64, error) {
	p, st, hasStart := strings.Cut(s, ":")
	pid, err := strconv.ParseUint(p, 10, 31)
	if err != nil || pid == 0 {
		return 0, nil, usageErr("--pid %q: %q is not a pid (want PID or PID:STARTTIME)", s, p)
	}
	if !hasStart {
		return int(pid), nil, nil
	}
	start, err := strconv.ParseUint(st, 10, 64)
	if err != nil {
		return 0, nil, usageErr("--pid %q: %q is not a start time (want PID:STARTTIME, as 'nsplug id' prints it)", s, st)
	}
	return int(pid), &start, nil
}

func cmdID(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("id", flag.ContinueOnError)
	pid := fs.String("pid", "", "`PID` of the process to name")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageErr("id: unexpected argument %q", pos[0])
	}
	if *pid == "" {
		return usageErr("id: --pid is required")
	}
	n, start, err := parseTarget(*pid)
	if err != nil {
		return err
	}
	if start != nil {
		return usageErr("id: --pid %q: want a bare PID", *pid)
	}
	st, err := core.StartTime(n)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%d:%d\n", n, st)
	return err
}

// parseAs reads UID:GID[:G1,G2,...]; an empty string is root.
func parseAs(s string) (*core.Credentials, error) {
	creds := &core.Credentials{}
	if s == "" {
		return creds, nil
	}
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return nil, usageErr("--as %q: want UID:GID[:G1,G2,...]", s)
	}
	ids := []*uint32{&creds.UID, &creds.GID}
	for i, p := range parts[:2] {
		n, err := strconv.ParseUint(p, 10, 32)
		if err != nil {
			return nil, usageErr("--as %q: %q is not an id", s, p)
		}
		*ids[i] = uint32(n)
	}
	if len(parts) == 3 && parts[2] != "" {
		for _, g := range strings.Split(parts[2], ",") {
			n, err := strconv.ParseUint(g, 10, 32)
			if err != nil {
				return nil, usageErr("--as %q: %q is not a group id", s, g)
			}
			creds.Groups = append(creds.Groups, uint32(n))
		}
	}
	return creds, nil
}

// fileInfo is what the command shows of a file handed back.
type fileInfo struct {
	FD      uintptr `json:"fd"`
	Flags   string  `json:"flags"`
	Cloexec bool    `json:"cloexec"`
	First   string  `json:"first_bytes"`
}

func describeFiles(files []*os.File) []fileInfo {
	var out []fileInfo
	for _, f := range files {
		info := fileInfo{FD: f.Fd()}
		if fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0); err == nil {
			info.Flags = openFlags(fl)
		}
		if fd, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0); err == nil {
			info.Cloexec = fd&unix.FD_CLOEXEC != 0
		}
		buf := make([]byte, 64)
		if n, err := unix.Pread(int(f.Fd()), buf, 0); err == nil {
			info.First = string(buf[:n])
		}
		out = append(out, info)
	}
	return out
}

func openFlags(fl int) string {
	var names []string
	switch fl & unix.O_ACCMODE {
	case unix.O_RDONLY:
		names = append(names, "O_RDONLY")
	case unix.O_WRONLY:
		names = append(names, "O_WRONLY")
	case unix.O_RDWR:
		names = append(names, "O_RDWR")
	}
	for _, f := range []struct {
		bit  int
		name string
	}{{unix.O_APPEND, "O_APPEND"}, {unix.O_NONBLOCK, "O_NONBLOCK"}, {unix.O_DIRECTORY, "O_DIRECTORY"}, {unix.O_NOFOLLOW, "O_NOFOLLOW"}, {unix.O_PATH, "O_PATH"}, {unix.O_LARGEFILE, "O_LARGEFILE"}} {
		if fl&f.bit != 0 {
			names = append(names, f.name)
		}
	}
	return strings.Join(names, "|")
}

// printJSON indents a response as it is: its bytes, key order and
// numbers unchanged (decoding it into an any and encoding that again
// would round numbers beyond 2^53 and replace bytes that are not UTF-8).
func printJSON(w io.Writer, raw json.RawMessage) error {
	var out bytes.Buffer
	if err := json.Indent(&out, raw, "", "  "); err != nil {
		return fmt.Errorf("plugin returned invalid JSON: %v", err)
	}
	out.WriteByte('\n')
	_, err := w.Write(out.Bytes())
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
	addr, err := c.daemonAddr(fs)
	if err != nil {
		return err
	}
	var plugins []core.PluginInfo
	version := uint32(wire.ProtocolVersion)
	if addr != "" {
		plugins, version, err = pluginsDaemon(addr)
	} else {
		plugins, err = pluginsInProcess(&c, stderr)
	}
	if err != nil {
		return err
	}
	return printPlugins(stdout, plugins, version, *asJSON)
}

func pluginsInProcess(c *commonFlags, stderr io.Writer) ([]core.PluginInfo, error) {
	d, err := c.open(stderr, false)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Plugins(), nil
}

// printPlugins prints the plugins as `plugins` shows them, from the daemon
// or from an in-process core alike; version is the wire contract's.
func printPlugins(stdout io.Writer, plugins []core.PluginInfo, version uint32, asJSON bool) error {
	if asJSON {
		out, _ := json.MarshalIndent(map[string]any{"protocol_version": version, "plugins": plugins}, "", "  ")
		_, err := fmt.Fprintf(stdout, "%s\n", out)
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	for _, p := range plugins {
		src := "built-in"
		if !p.Builtin {
			src = p.Path
		}
		if p.Status != core.PluginOK {
			fmt.Fprintf(tw, "%s\t(%s, %s: %s)\n", p.Name, src, p.Status, p.Error)
			continue
		}
		fmt.Fprintf(tw, "%s\t(%s, %s, sha256 %.12s)\n", p.Name, src, p.Mode, p.SHA256)
		for _, t := range p.Types {
			fmt.Fprintf(tw, "  %s\tv%d\t%s\t%s\n", t.Name, t.Version, changesColumn(t), t.Description)
		}
	}
	return tw.Flush()
}

// changesColumn says which namespaces' state a type changes: "changes mnt",
// "may change ipc,net" (depending on the request), or nothing for a type
// that only reads.
func changesColumn(t core.TypeInfo) string {
	var parts []string
	if len(t.Changes) > 0 {
		parts = append(parts, "changes "+strings.Join(t.Changes, ","))
	}
	if len(t.MayChange) > 0 {
		parts = append(parts, "may change "+strings.Join(t.MayChange, ","))
	}
	return strings.Join(parts, "; ")
}
