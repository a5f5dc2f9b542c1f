package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/guardian-mtls/guardian/daemon"
)

func runServe(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", stderr)
	file := fs.String("config", "guardian.yaml", "configuration `FILE`")
	format := fs.String("log-format", "text", "log format: text or json")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := daemon.Load(*file)
	if err != nil {
		return err
	}
	var h slog.Handler = slog.NewTextHandler(stderr, nil)
	if *format == "json" {
		h = slog.NewJSONHandler(stderr, nil)
	}
	log := slog.New(h)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// SIGHUP is caught from here on: New can take seconds (a CRL's first fetch, the wait for
	// Redis), and SIGHUP's default action would end the process (systemctl reload during a
	// start). One that arrives meanwhile is applied once New returns.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	n, err := daemon.New(ctx, cfg, daemon.Options{Logger: log})
	if err != nil {
		return err
	}
	go func() {
		for {
			select {
			case <-hup:
				n.Reload() // logs and counts its result; a refused reload changes nothing
			case <-ctx.Done():
				return
			}
		}
	}()
	if a := n.AdminAddr(); a != nil {
		fmt.Fprintf(stdout, "admin API on %s\n", a)
	}
	fmt.Fprintf(stdout, "listening on %s (%d audiences, revocations: %s)\n", n.Addr(), len(cfg.Audiences), cfg.Revocation.Store)
	return n.Run(ctx)
}
