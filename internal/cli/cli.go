// Package cli is the nsplug command line, shared by the two binaries that
// carry it: bin/nsplug (cmd/nsplug, the small front: calls, standalone or
// through the daemon, ids, plugins, the demo) and bin/nsplugd (cmd/nsplugd,
// the full one: the same, plus the node daemon and third-party plugins,
// which need gRPC, go-plugin and prometheus). The front hands a command it
// cannot run to the full binary (Hooks.Full), with the same arguments,
// output and exit codes.
//
//	nsplug call [--config FILE | --addr unix:///PATH] --pid PID[:STARTTIME] [--ns LIST] [--as UID:GID[:GROUPS]] [--root DIR] [--cwd DIR] TYPE [PAYLOAD_JSON]
//	nsplug id --pid PID
//	nsplug plugins [--config FILE | --addr unix:///PATH] [--json]
//	nsplug serve [--config FILE]
//	nsplug demo
package cli

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
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/BurntSushi/toml"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
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

// Hooks are what a binary adds to the shared command line. A nil hook is
// a command the binary hands to the full one (Full).
type Hooks struct {
	// Full runs args (a whole command line, without the program name) in
	// the full binary and does not return when it could; nil in the full
	// binary itself.
	Full func(args []string) error
	// Serve runs `serve`; Health runs `health`.
	Serve  func(args []string, stderr io.Writer) error
	Health func(args []string, stdout io.Writer) error
	// CallDaemon and PluginsDaemon are call and plugins through the
	// daemon's gRPC API at addr (--addr, NSPLUG_ADDR); a call goes through
	// its fast path first, and through CallDaemon only to a daemon that
	// does not speak it.
	CallDaemon    func(ctx context.Context, addr string, req core.Request) (*core.Response, error)
	PluginsDaemon func(addr string) ([]core.PluginInfo, uint32, error)
	// ThirdParty says the binary can load plugins with a path (it links
	// core/goplugin, which describes them through go-plugin). Without it,
	// a configuration with one goes to the full binary.
	ThirdParty bool
}

// Main runs the command line of os.Args and exits with its status.
func Main(h Hooks) {
	os.Exit(Run(h, os.Args[1:], os.Stdout, os.Stderr))
}

// ExitError is an error with the exit status it asks for.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }

// UsageErr is a usage error: exit status 2 and a pointer to the help.
func UsageErr(format string, args ...any) error {
	return &ExitError{2, fmt.Errorf(format, args...)}
}

// errFull is a command this binary hands to the full one.
var errFull = errors.New("for the full binary")

// stdinRead is what the command read of stdin (a payload "-"), which the
// full binary is to read again when the command is handed to it.
var stdinRead []byte

// Run runs one command line (args without the program name) and returns
// its exit status.
func Run(h Hooks, args []string, stdout, stderr io.Writer) int {
	code, err := run(h, args, stdout, stderr)
	if errors.Is(err, errFull) && h.Full != nil {
		if err = restoreStdin(stdinRead); err == nil {
			err = h.Full(args)
		}
		code = -1
	}
	if code >= 0 {
		return code
	}
	return exitStatus(err, stdout, stderr)
}

func run(h Hooks, args []string, stdout, stderr io.Writer) (int, error) {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2, nil
	}
	var err error
	switch args[0] {
	case "call":
		err = cmdCall(h, args[1:], stdout, stderr)
	case "id":
		err = cmdID(args[1:], stdout)
	case "plugins":
		err = cmdPlugins(h, args[1:], stdout, stderr)
	case "serve":
		err = errFull
		if h.Serve != nil {
			err = h.Serve(args[1:], stderr)
		}
	case "health":
		err = errFull
		if h.Health != nil {
			err = h.Health(args[1:], stdout)
		}
	case "demo":
		err = cmdDemo(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0, nil
	default:
		err = UsageErr("unknown command %q (want call, id, plugins, serve, health or demo)", args[0])
	}
	return -1, err
}

// restoreStdin makes data this process's stdin again, from its start (a
// sealed memfd on fd 0), for a command that read it before finding that
// the full binary is to run it. Nothing read: stdin stays as it is.
func restoreStdin(data []byte) error {
	if data == nil {
		return nil
	}
	fd, err := unix.MemfdCreate("nsplug-stdin", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return fmt.Errorf("handing the payload on stdin over: %v", err)
	}
	defer unix.Close(fd)
	for rest := data; len(rest) > 0; {
		n, err := unix.Write(fd, rest)
		if err != nil {
			return fmt.Errorf("handing the payload on stdin over: %v", err)
		}
		rest = rest[n:]
	}
	if _, err := unix.Seek(fd, 0, 0); err != nil {
		return fmt.Errorf("handing the payload on stdin over: %v", err)
	}
	unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL)
	// dup3 without O_CLOEXEC: fd 0 survives the exec.
	if err := unix.Dup3(fd, 0, 0); err != nil {
		return fmt.Errorf("handing the payload on stdin over: %v", err)
	}
	return nil
}

// exitStatus reports err as the command's one line on stderr and returns
// the exit status it asks for.
func exitStatus(err error, stdout, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	if errors.Is(err, errHelp) {
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintln(stderr, "nsplug: "+oneLine(err.Error()))
	var ee *ExitError
	if errors.As(err, &ee) {
		if ee.Code == 2 {
			fmt.Fprintln(stderr, "run 'nsplug help' for usage")
		}
		return ee.Code
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

// Flags are the flags call, plugins and serve share.
type Flags struct {
	Config   string // --config
	LogLevel string // --log-level
	addr     string
}

// EnvAddr is the daemon's address when --addr is not given.
const EnvAddr = "NSPLUG_ADDR"

func (c *Flags) register(fs *flag.FlagSet) {
	c.RegisterCore(fs)
	fs.StringVar(&c.addr, "addr", "", "go through the daemon at `unix:///PATH` (default: $"+EnvAddr+"; empty: an in-process core)")
}

// RegisterCore registers the flags of an in-process core.
func (c *Flags) RegisterCore(fs *flag.FlagSet) {
	fs.StringVar(&c.Config, "config", "", "TOML configuration `file` (default: the embedded one)")
	fs.StringVar(&c.LogLevel, "log-level", "", "log `level` on stderr: trace, debug, info, warn, error, off (overrides the config's log_level; default: its log_level, else warn)")
}

// daemonAddr is the daemon to go through, --addr or else $NSPLUG_ADDR; ""
// means an in-process core (--addr "" asks for one whatever the
// environment says). The flags of an in-process core are then an error:
// the daemon's own configuration applies.
func (c *Flags) daemonAddr(fs *flag.FlagSet) (string, error) {
	addr, from := c.addr, "--addr"
	if !FlagGiven(fs, "addr") {
		addr, from = os.Getenv(EnvAddr), EnvAddr
	}
	if addr == "" {
		return "", nil
	}
	for _, f := range []string{"config", "log-level"} {
		if FlagGiven(fs, f) {
			return "", UsageErr("%s: --%s is for an in-process core; with %s=%s the daemon's configuration applies (--addr \"\" for an in-process core)", fs.Name(), f, from, addr)
		}
	}
	return addr, nil
}

// FlagGiven says whether flag name was on the command line.
func FlagGiven(fs *flag.FlagSet, name string) bool {
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

// Parse parses flags and positional arguments in any order.
func Parse(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, errHelp
			}
			return nil, UsageErr("%s: %v", fs.Name(), err)
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
// A configuration with a third-party plugin goes to the full binary when
// this one cannot describe it (errFull).
func (c *Flags) open(h Hooks, stderr io.Writer, oneshot bool) (*core.Dispatcher, error) {
	cfg, log, err := c.load(stderr, "warn")
	if err != nil {
		return nil, err
	}
	if !h.ThirdParty && h.Full != nil && hasThirdParty(cfg) {
		return nil, errFull
	}
	// A plugin that failed to load is reported where it matters, not as a
	// log line on every command: plugins lists it, and a call of its type
	// fails naming the failure, which is then that call's one line.
	return core.New(cfg, core.Options{Logger: log, Builtins: builtin.All(), LoadFailureLevel: hclog.Debug, Oneshot: oneshot})
}

// hasThirdParty says whether cfg loads a plugin from a path.
func hasThirdParty(cfg *config.Config) bool {
	for _, p := range cfg.Plugins {
		if p.Path != "" && !p.Disabled {
			return true
		}
	}
	return false
}

// load reads the configuration (--config, or the embedded one) and makes
// the logger on stderr: at --log-level, else the file's own log_level, else
// fallback.
func (c *Flags) load(stderr io.Writer, fallback string) (*config.Config, hclog.Logger, error) {
	cfg := config.Default()
	if c.Config != "" {
		var err error
		if cfg, err = config.Load(c.Config); err != nil {
			return nil, nil, err
		}
	}
	name := c.LogLevel
	if name == "" && c.Config != "" {
		name = configLogLevel(c.Config)
	}
	if name == "" {
		name = fallback
	}
	level := hclog.LevelFromString(name)
	if level == hclog.NoLevel {
		return nil, nil, UsageErr("--log-level: unknown level %q", c.LogLevel)
	}
	// Plugins log at the level shown: they drop lines below it.
	if cfg.LogLevel = level.String(); level == hclog.Off {
		cfg.LogLevel = "error"
	}
	return cfg, hclog.New(&hclog.LoggerOptions{Name: "nsplug", Level: level, Output: stderr}), nil
}

func cmdCall(h Hooks, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("call", flag.ContinueOnError)
	var c Flags
	c.register(fs)
	pid := fs.String("pid", "", "target `PID[:STARTTIME]`")
	nsList := fs.String("ns", "", "comma-separated namespaces to join (default: all that differ)")
	as := fs.String("as", "", "act as `UID:GID[:G1,G2,...]` (ids as the target sees them)")
	root := fs.String("root", "", "act with this root `DIR` (a path in the target)")
	cwd := fs.String("cwd", "", "act in this working `DIR` (a path in the target)")
	pos, err := Parse(fs, args)
	if err != nil {
		return err
	}
	if *pid == "" {
		return UsageErr("call: --pid is required")
	}
	if len(pos) < 1 || len(pos) > 2 {
		return UsageErr("call: want TYPE [PAYLOAD_JSON]")
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
			stdinRead = data
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
	var resp *core.Response
	if addr != "" {
		// SIGINT and SIGTERM keep their default action: they end this
		// process, the kernel closes its connection, and the daemon ends
		// the request, as for a client killed by any signal. Catching
		// them would cost os/signal's locked thread, and the handoffs to
		// it, about 0.3 ms of a 4 ms command.
		resp, err = callDaemon(context.Background(), h, addr, req)
	} else {
		resp, err = callInProcess(h, &c, stderr, req)
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

// callInProcess runs req in a core of this process. SIGINT or SIGTERM
// cancels it, and once the core is closed (its plugins killed and reaped,
// their sockets removed) the signal is raised again: the process ends by
// it, as it does through the daemon, and as a shell expects of an
// interrupted command.
func callInProcess(h Hooks, c *Flags, stderr io.Writer, req core.Request) (*core.Response, error) {
	// One P: this process waits on one call, and fewer threads make its
	// start of a handler and its exit (which wakes every thread to end
	// it) cheaper. Alternating runs, 3 × 100 each: p50 10.8, 10.6 and
	// 11.6 ms with the CPUs' count, 10.3, 10.5 and 10.9 with one. (A call
	// through the daemon is cheaper without it: the change stops the
	// world, about 0.3 ms.)
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(context.Background())
	var got os.Signal
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case got = <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()
	resp, err := callCore(ctx, h, c, stderr, req)
	cancel()
	<-watched
	signal.Stop(sigs)
	if got != nil {
		raise(got.(syscall.Signal)) // the files handed back, if any, close with the process
	}
	return resp, err
}

// raise ends the process by sig, with its default action, unless this
// process ignores it (as a background job of a shell ignores SIGINT): then
// it returns. The signal goes to this thread, so that it is handled before
// tgkill returns; sent to the process, it could reach another thread and
// lose the race with this one's exit.
func raise(sig syscall.Signal) {
	signal.Reset(sig)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	unix.Tgkill(unix.Getpid(), unix.Gettid(), sig)
}

func callCore(ctx context.Context, h Hooks, c *Flags, stderr io.Writer, req core.Request) (*core.Response, error) {
	d, err := c.open(h, stderr, true)
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
		return 0, nil, UsageErr("--pid %q: %q is not a pid (want PID or PID:STARTTIME)", s, p)
	}
	if !hasStart {
		return int(pid), nil, nil
	}
	start, err := strconv.ParseUint(st, 10, 64)
	if err != nil {
		return 0, nil, UsageErr("--pid %q: %q is not a start time (want PID:STARTTIME, as 'nsplug id' prints it)", s, st)
	}
	return int(pid), &start, nil
}

func cmdID(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("id", flag.ContinueOnError)
	pid := fs.String("pid", "", "`PID` of the process to name")
	pos, err := Parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return UsageErr("id: unexpected argument %q", pos[0])
	}
	if *pid == "" {
		return UsageErr("id: --pid is required")
	}
	n, start, err := parseTarget(*pid)
	if err != nil {
		return err
	}
	if start != nil {
		return UsageErr("id: --pid %q: want a bare PID", *pid)
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
		return nil, UsageErr("--as %q: want UID:GID[:G1,G2,...]", s)
	}
	ids := []*uint32{&creds.UID, &creds.GID}
	for i, p := range parts[:2] {
		n, err := strconv.ParseUint(p, 10, 32)
		if err != nil {
			return nil, UsageErr("--as %q: %q is not an id", s, p)
		}
		*ids[i] = uint32(n)
	}
	if len(parts) == 3 && parts[2] != "" {
		for _, g := range strings.Split(parts[2], ",") {
			n, err := strconv.ParseUint(g, 10, 32)
			if err != nil {
				return nil, UsageErr("--as %q: %q is not a group id", s, g)
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

func cmdPlugins(h Hooks, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("plugins", flag.ContinueOnError)
	var c Flags
	c.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := Parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return UsageErr("plugins: unexpected argument %q", pos[0])
	}
	addr, err := c.daemonAddr(fs)
	if err != nil {
		return err
	}
	var plugins []core.PluginInfo
	version := uint32(wire.ProtocolVersion)
	if addr != "" {
		if h.PluginsDaemon == nil {
			return errFull
		}
		plugins, version, err = h.PluginsDaemon(addr)
	} else {
		plugins, err = pluginsInProcess(h, &c, stderr)
	}
	if err != nil {
		return err
	}
	return printPlugins(stdout, plugins, version, *asJSON)
}

func pluginsInProcess(h Hooks, c *Flags, stderr io.Writer) ([]core.PluginInfo, error) {
	d, err := c.open(h, stderr, false)
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
