package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/nsplug/nsplug/bench/internal/bare"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/wire"
)

// Case is one measured operation. Prep, when set, runs before every Op and
// is not timed (the cold case makes a new target there).
type Case struct {
	Name  string
	Prep  func() error
	Op    func() error
	Close func()
}

// Sample runs n timed operations and appends their durations to out.
func (c *Case) Sample(n int, out []time.Duration) ([]time.Duration, error) {
	for i := 0; i < n; i++ {
		if c.Prep != nil {
			if err := c.Prep(); err != nil {
				return out, fmt.Errorf("%s: prep: %w", c.Name, err)
			}
		}
		start := time.Now()
		err := c.Op()
		took := time.Since(start)
		if err != nil {
			return out, fmt.Errorf("%s: %w", c.Name, err)
		}
		out = append(out, took)
	}
	return out, nil
}

// FloorCase is the least any design can do: the host reads File directly,
// then makes one round trip over a unix socket to a Go echo server.
func (e *Env) FloorCase() (*Case, error) {
	sock := filepath.Join(e.RunDir, "echo.sock")
	os.Remove(sock)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if err != nil {
						c.Close()
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						c.Close()
						return
					}
				}
			}()
		}
	}()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		ln.Close()
		return nil, err
	}
	buf := make([]byte, 4096)
	return &Case{
		Name: "floor",
		Op: func() error {
			data, err := os.ReadFile(File)
			if err != nil {
				return err
			}
			if _, err := conn.Write(data); err != nil {
				return err
			}
			if _, err := io.ReadFull(conn, buf[:len(data)]); err != nil {
				return err
			}
			return nil
		},
		Close: func() { conn.Close(); ln.Close() },
	}, nil
}

// NsenterCase runs `nsenter -t PID -a cat File` per request, as an
// operator would, against a target of its own.
func (e *Env) NsenterCase() (*Case, error) {
	t, err := e.Target()
	if err != nil {
		return nil, err
	}
	op, err := nsenterCat(t.PID())
	if err != nil {
		return nil, err
	}
	return &Case{Name: "nsenter_cli", Op: op, Close: func() {}}, nil
}

// nsenterCat is one `nsenter -t pid -a cat File`, its output checked.
func nsenterCat(target int) (func() error, error) {
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return nil, err
	}
	cat, err := exec.LookPath("cat")
	if err != nil {
		return nil, err
	}
	pid := strconv.Itoa(target)
	return func() error {
		out, err := exec.Command(nsenter, "-t", pid, "-a", cat, File).Output()
		if err != nil {
			return err
		}
		if string(out) != Hostname+"\n" {
			return fmt.Errorf("nsenter cat %s: got %q", File, out)
		}
		return nil
	}, nil
}

// CLICase runs a whole standalone `nsplug call --pid PID procfs.read`
// process per operation (bin/nsplug with its embedded configuration, as
// an operator runs it without a daemon), each paired with an `nsenter -t
// PID -a cat File` of the same target just before it, timed apart:
// Splits holds the pairs' nsenter times, so that the ratio compares runs
// made at the same moment.
type CLICase struct {
	*Case
	Splits []time.Duration
}

// CLICase makes the standalone CLI case; it builds bin/nsplug if needed.
func (e *Env) CLICase() (*CLICase, error) {
	return e.pairedCLICase("cli_standalone", "call")
}

// pairedCLICase runs `nsplug ARGS... --pid PID procfs.read` per operation,
// each paired with an nsenter_cli run just before it (CLICase.Splits).
func (e *Env) pairedCLICase(name string, args ...string) (*CLICase, error) {
	cli, err := e.NsplugCLI()
	if err != nil {
		return nil, err
	}
	t, err := e.Target()
	if err != nil {
		return nil, err
	}
	nsenter, err := nsenterCat(t.PID())
	if err != nil {
		return nil, err
	}
	argv := append(args, "--pid", strconv.Itoa(t.PID()), "procfs.read", string(readPayload))
	cc := &CLICase{}
	cc.Case = &Case{
		Name: name,
		Prep: func() error {
			start := time.Now()
			if err := nsenter(); err != nil {
				return err
			}
			cc.Splits = append(cc.Splits, time.Since(start))
			return nil
		},
		Op: func() error {
			out, err := exec.Command(cli, argv...).Output()
			if err != nil {
				return fmt.Errorf("nsplug %v: %v: %s", args, err, out)
			}
			return checkRead(out)
		},
		Close: func() {},
	}
	return cc, nil
}

// WarmCase sends sequential requests to one warm pooled instance.
func (e *Env) WarmCase() (*Case, *core.Dispatcher, *sandbox.Sandbox, error) {
	d, err := e.Dispatcher("")
	if err != nil {
		return nil, nil, nil, err
	}
	t, err := e.Target()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx := context.Background()
	pid := t.PID()
	if err := read(ctx, d, pid); err != nil { // the cold start, not timed
		return nil, nil, nil, err
	}
	c := &Case{
		Name: "warm",
		Op: func() error {
			resp, err := d.Dispatch(ctx, core.Request{PID: pid, Type: "procfs.read", Payload: readPayload})
			if err == nil && len(resp) == 0 {
				err = fmt.Errorf("empty response")
			}
			return err
		},
		Close: func() {},
	}
	return c, d, t, nil
}

// OneshotCase runs every request in a fresh plugin process (mode =
// "oneshot"): start, join, handshake, call, kill and reap.
func (e *Env) OneshotCase() (*Case, error) {
	d, err := e.Dispatcher("[defaults]\nmode = \"oneshot\"\n")
	if err != nil {
		return nil, err
	}
	t, err := e.Target()
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	pid := t.PID()
	return &Case{
		Name:  "oneshot",
		Op:    func() error { return read(ctx, d, pid) },
		Close: func() {},
	}, nil
}

// ColdCase times the first request into a target the core has never seen.
// Prep (untimed) retires the previous target, waits until its instance is
// gone, and starts a new target.
func (e *Env) ColdCase() (*Case, error) {
	d, err := e.Dispatcher("")
	if err != nil {
		return nil, err
	}
	var cur *sandbox.Sandbox
	retire := func() error {
		if cur == nil {
			return nil
		}
		cur.Close() // its pid namespace dies, and the instance with it
		cur = nil
		deadline := time.Now().Add(10 * time.Second)
		for len(d.Instances()) > 0 {
			if time.Now().After(deadline) {
				return fmt.Errorf("instance still alive 10s after its target died: %+v", d.Instances())
			}
			time.Sleep(time.Millisecond)
		}
		return nil
	}
	ctx := context.Background()
	return &Case{
		Name: "cold",
		Prep: func() error {
			if err := retire(); err != nil {
				return err
			}
			var err error
			cur, err = NewTarget()
			return err
		},
		Op:    func() error { return read(ctx, d, cur.PID()) },
		Close: func() { retire() },
	}, nil
}

// BareCase starts the bare go-plugin plugin (no namespaces, no nsplug),
// makes one call that reads File, and kills it, per operation. Splits
// records, per operation, the time until the call returned (before Kill).
type BareCase struct {
	*Case
	Splits []time.Duration

	rss     bool // read the plugin's memory after the call
	lastMem ProcMem
}

// MeasureRSS starts the bare plugin once, calls it and reads its memory
// before killing it.
func (bc *BareCase) MeasureRSS() (ProcMem, error) {
	bc.rss = true
	defer func() { bc.rss = false }()
	n := len(bc.Splits)
	if err := bc.Op(); err != nil {
		return ProcMem{}, err
	}
	bc.Splits = bc.Splits[:n]
	return bc.lastMem, nil
}

// BarePluginCase makes the bare plugin case; it builds the plugin binary
// if needed.
func (e *Env) BarePluginCase() (*BareCase, error) {
	path, err := e.BarePlugin()
	if err != nil {
		return nil, err
	}
	want, err := os.ReadFile(File)
	if err != nil {
		return nil, err
	}
	log := e.Log.Named("bare")
	bc := &BareCase{}
	ctx := context.Background()
	bc.Case = &Case{
		Name: "bare_plugin",
		Op: func() error {
			start := time.Now()
			cmd := exec.Command(path)
			client := plugin.NewClient(&plugin.ClientConfig{
				HandshakeConfig:  bare.Handshake,
				Plugins:          bare.Plugins(bare.Server{}),
				Cmd:              cmd,
				AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
				Logger:           log,
			})
			defer client.Kill()
			proto, err := client.Client()
			if err != nil {
				return err
			}
			raw, err := proto.Dispense(bare.Key)
			if err != nil {
				return err
			}
			resp, err := raw.(*bare.Client).Handle(ctx, &wire.HandleRequest{Type: "bare.read", Payload: []byte(File)})
			if err != nil {
				return err
			}
			if resp.Error != nil || !bytes.Equal(resp.Payload, want) {
				return fmt.Errorf("bare plugin read %s: %v %q", File, resp.Error, resp.Payload)
			}
			bc.Splits = append(bc.Splits, time.Since(start))
			if bc.rss {
				if bc.lastMem, err = ReadProcMem(strconv.Itoa(cmd.Process.Pid)); err != nil {
					return err
				}
			}
			return nil
		},
		Close: func() {},
	}
	return bc, nil
}
