package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `guardian closes live mTLS connections the moment their client certificate is revoked.

Usage:
  guardian demo [--dir DIR] [--listen ADDR] [--admin ADDR]
  guardian serve [--config guardian.yaml] [--log-format text|json]
  guardian pki init DIR
  guardian revoke   TARGET SELECTOR [--reason R] [--wait 5s]
  guardian unrevoke TARGET SELECTOR
  guardian list     TARGET
  guardian conns    --admin URL --admin-cert F --admin-key F --admin-ca F [-v] [--close ID]
  guardian conns    --redis URL [--prefix P] | --config guardian.yaml
  guardian reseed   --admin URL --admin-cert F --admin-key F --admin-ca F [--yes]
  guardian crl push FILE (--redis URL | --config F) [--prefix P] [--issuer-cert CA.pem]
  guardian crl list --admin URL --admin-cert F --admin-key F --admin-ca F
  guardian version

TARGET: --admin URL --admin-cert F --admin-key F --admin-ca F (a node's admin API),
        or --redis URL [--prefix P], or --config guardian.yaml (its Redis).
SELECTOR: --cert FILE [--by serial|sha256|spki|uri|dns|email|subject],
          --serial HEX --issuer-cert FILE, --fingerprint HEX, --spki HEX,
          --uri URI, --dns NAME, --email ADDR, --subject DN, or --key KEY.
Run "guardian COMMAND -h" for a command's flags.
`

// errUsage means the message was already printed with the command's usage.
var errUsage = errors.New("usage")

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "demo":
		err = runDemo(args[1:], stdout, stderr)
	case "serve":
		err = runServe(args[1:], stdout, stderr)
	case "pki":
		err = runPKI(args[1:], stdout, stderr)
	case "revoke":
		err = runRevoke(args[1:], stdout, stderr, true)
	case "unrevoke":
		err = runRevoke(args[1:], stdout, stderr, false)
	case "list":
		err = runList(args[1:], stdout, stderr)
	case "conns":
		err = runConns(args[1:], stdout, stderr)
	case "reseed":
		err = runReseed(args[1:], stdout, stderr)
	case "crl":
		err = runCRL(args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, version())
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "guardian: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	fmt.Fprintf(stderr, "guardian %s: %v\n", args[0], err)
	return 1
}

func version() string {
	v := "guardian (devel)"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = "guardian " + bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				v += " " + s.Value
			}
		}
		v += " " + bi.GoVersion
	}
	return v
}

// commands says what each command does, for its -h.
var commands = map[string]string{
	"demo":     "runs guardian on its embedded default: a fresh PKI in DIR, two audiences on one port\n(mTLS and public), the admin API, revocations in memory; prints the commands to try.",
	"serve":    "runs guardian from a configuration file: audiences by SNI proxied to their upstreams,\nthe admin API, revocations from the configured store, CRLs and OCSP. SIGHUP reloads the\naudiences; SIGTERM drains and stops.",
	"pki init": "writes a throw-away development PKI to DIR: ca.pem, server.pem/.key (localhost),\nclient.pem/.key, client2.pem/.key and admin.pem/.key. Keys are unencrypted: for trying\nthings out only.",
	"revoke":   "revokes one key — derived from a certificate, or named — through a node's admin API or\nstraight in the fleet's Redis; every live conn it matches is closed, on every node.\nTARGET and SELECTOR as in guardian -h.",
	"unrevoke": "lifts a revocation made by revoke, through a node's admin API or the fleet's Redis.",
	"list":     "lists the revocations in force: a node's (--admin), or the fleet's Redis.",
	"conns":    "with --admin, lists a node's live conns (ID, remote, audience, age, identity) and, with\n--close ID, closes one without revoking its certificate; with --redis or --config, lists\neach live node's heartbeat.",
	"reseed":   "shows the entries this node holds that Redis lacks (after Redis lost data) and, with\n--yes, writes them back so that every node resyncs.",
	"crl push": "stores a CRL in the fleet's Redis: every node checks it against its trusted CAs and\napplies it, as it does a CRL from a file or a URL.",
	"crl list": "lists the CRLs in force on a node: issuer, verifying key, number, entries, updates.",
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("guardian "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "guardian %s: %s\n\n", name, commands[name])
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintln(fs.Output(), "Flags:")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parse parses flags, mapping a flag error to errUsage (the flag package printed it).
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	return nil
}
