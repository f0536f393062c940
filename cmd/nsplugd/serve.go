package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/internal/cli"
	"github.com/nsplug/nsplug/plugins/builtin"
	"github.com/nsplug/nsplug/server"
)

// cmdServe runs the node daemon until SIGTERM or SIGINT; SIGHUP reloads
// its configuration.
func cmdServe(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var c cli.Flags
	c.RegisterCore(fs)
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return cli.UsageErr("serve: unexpected argument %q", pos[0])
	}
	if c.LogLevel != "" && hclog.LevelFromString(c.LogLevel) == hclog.NoLevel {
		return cli.UsageErr("--log-level: unknown level %q", c.LogLevel)
	}
	cfg, err := serveConfig(&c)
	if err != nil {
		return err
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "nsplug", Level: hclog.LevelFromString(cfg.LogLevel), Output: stderr})
	l, err := server.Listen(cfg)
	if err != nil {
		return err
	}
	defer l.Close() // removes the socket
	srv, err := server.New(cfg, log, core.Options{Builtins: builtin.All()})
	if err != nil {
		return err
	}
	if addr := cfg.Server.MetricsAddress; addr != "" {
		stop, err := srv.Metrics().Serve(addr)
		if err != nil {
			srv.Shutdown(0)
			return fmt.Errorf("metrics_address: %w", err)
		}
		defer stop(context.Background())
		log.Info("serving metrics", "metrics_address", addr)
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(signals)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	log.Info("serving", "socket", cfg.Server.Socket, "config", configName(c.Config))
	for {
		select {
		case err := <-served:
			srv.Shutdown(0)
			return err
		case sig := <-signals:
			if sig == syscall.SIGHUP {
				reload(&c, srv, log)
				continue
			}
			grace := srv.Config().Server.ShutdownGrace.Duration
			log.Info("shutting down", "signal", sig.String(), "shutdown_grace", grace)
			srv.Shutdown(grace)
			<-served
			return nil
		}
	}
}

// serveConfig reads the daemon's configuration; the log level is
// --log-level's when given.
func serveConfig(c *cli.Flags) (*config.Config, error) {
	cfg := config.Default()
	if c.Config != "" {
		var err error
		if cfg, err = config.Load(c.Config); err != nil {
			return nil, err
		}
	}
	if c.LogLevel != "" {
		level := hclog.LevelFromString(c.LogLevel)
		if cfg.LogLevel = level.String(); level == hclog.Off {
			cfg.LogLevel = "error" // plugins have no "off"
		}
	}
	return cfg, nil
}

// reload re-reads the configuration for SIGHUP. A bad one is logged (its
// error names the file and line) and the one in force keeps serving.
func reload(c *cli.Flags, srv *server.Server, log hclog.Logger) {
	cfg, err := serveConfig(c)
	if err == nil {
		err = srv.Reload(cfg)
	}
	if err != nil {
		log.Error("reload failed; the previous configuration keeps serving", "config", configName(c.Config), "error", err)
		return
	}
	if c.LogLevel == "" {
		log.SetLevel(hclog.LevelFromString(cfg.LogLevel))
	}
	log.Info("reloaded", "config", configName(c.Config))
}

func configName(path string) string {
	if path == "" {
		return "(embedded default)"
	}
	return path
}
