// Command wspresence-bench measures `wspresence serve` against a minimal WebSocket
// baseline in the same run, and writes the results, a report and a plot (see package
// bench). `make bench` runs the short profile.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/wspresence/wspresence/bench/internal/bench"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "wspresence-bench:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if len(os.Args) > 1 && os.Args[1] == "baseline-server" {
		fs := flag.NewFlagSet("baseline-server", flag.ExitOnError)
		addr := fs.String("addr", "127.0.0.1:0", "listen address")
		var opts bench.BaselineOptions
		fs.StringVar(&opts.Log, "log", "", "make the baseline durable: append each push to this file and sync it before the 202, in group commits")
		fs.DurationVar(&opts.Hold, "hold", 0, "with --log: how long each group commit waits for more requests after its first")
		_ = fs.Parse(os.Args[2:])
		if opts.Log != "" && os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) < 2 {
			// As `wspresence serve` does on one CPU: a sync would otherwise hold the only P,
			// and the whole server with it, until the runtime took the P back.
			runtime.GOMAXPROCS(2)
		}
		ln, err := net.Listen("tcp", *addr)
		if err != nil {
			return err
		}
		fmt.Printf("baseline listening on %s\n", ln.Addr())
		return bench.ServeBaseline(ctx, ln, opts)
	}
	if len(os.Args) > 1 && os.Args[1] == "probe" {
		fs := flag.NewFlagSet("probe", flag.ExitOnError)
		base := fs.String("base", "", "the server's base URL")
		secret := fs.String("secret", "", "the server's JWT secret (connect tokens)")
		prefix := fs.String("prefix", "probe", "the probing users' name prefix")
		_ = fs.Parse(os.Args[2:])
		return bench.ProbeMain(ctx, *base, *secret, *prefix, os.Stdin, os.Stdout)
	}
	profile := flag.String("profile", "short", "smoke (a minute or two, CI), short (about 20 minutes) or long")
	server := flag.String("server", "", "path of the wspresence binary (required)")
	reference := flag.String("reference", "", "path of an earlier wspresence binary to measure on the publishers scenario too (the before of a change)")
	referenceName := flag.String("reference-name", "", "what the reference binary was built from (a git revision), for the report")
	results := flag.String("results", "bench/results", "folder of the JSON results and profiles")
	report := flag.String("report", "docs/benchmarks.md", "Markdown report to write (empty: none)")
	plotPath := flag.String("plot", "docs/benchmarks.png", "PNG plot to write (empty: none)")
	findings := flag.String("findings", "bench/findings.md", "Markdown appended to the report (the profile findings), if it exists")
	render := flag.String("render", "", "render the report and plot of a saved results file instead of running")
	only := flag.String("only", "", "run only these scenarios (comma-separated: memory,connect,lag,rest,delivery,publishers,recovery,flood,users,churn)")
	targets := flag.String("targets", "", "measure only these sides (comma-separated: baseline (with the durable baselines),wspresence)")
	profileScenario := flag.String("profile-scenario", "publishers", "scenario the server's CPU and heap profiles cover: publishers, delivery or flood")
	floodRequests := flag.Int("flood-requests", 0, "concurrent requests of the flood scenario (0: the profile's)")
	floodBytes := flag.Int("flood-bytes", 0, "body size of the flood scenario's requests (0: the profile's sizes)")
	users := flag.String("users", "", "distinct users at each point of the users scenario (comma-separated, ascending; empty: the profile's)")
	floodFrom := flag.String("flood-from", "", "with --render: take the flood scenario's figures from this results file (a run of --only flood)")
	flag.Parse()
	if *render != "" {
		res, err := bench.Load(*render)
		if err != nil {
			return err
		}
		if *floodFrom != "" {
			flood, err := bench.Load(*floodFrom)
			if err != nil {
				return err
			}
			res.Wspresence.Flood, res.FloodRun = flood.Wspresence.Flood, filepath.Base(*floodFrom)
		}
		return write(res, *render, *report, *plotPath, *findings)
	}
	p, ok := bench.Profiles[*profile]
	if !ok {
		return fmt.Errorf("unknown profile %q", *profile)
	}
	if *only != "" {
		p.Only = strings.Split(*only, ",")
	}
	if *targets != "" {
		p.Targets = strings.Split(*targets, ",")
	}
	p.ProfileScenario = *profileScenario
	if *floodRequests > 0 {
		p.FloodRequests = *floodRequests
	}
	if *floodBytes > 0 {
		p.FloodBytes = []int{*floodBytes}
	}
	if *users != "" {
		p.UsersN = nil
		for _, f := range strings.Split(*users, ",") {
			n, err := strconv.Atoi(f)
			if err != nil || n <= 0 {
				return fmt.Errorf("--users: %q is not a number of users", f)
			}
			p.UsersN = append(p.UsersN, n)
		}
	}
	if *server == "" {
		return errors.New("--server is required")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	profDir, err := os.MkdirTemp("", "wspresence-bench-prof-")
	if err != nil {
		return err
	}
	res, err := bench.Run(ctx, p, *server, bench.Reference{Bin: *reference, Name: *referenceName}, self, profDir, log)
	if err != nil {
		return err
	}
	path := ""
	if *results != "" {
		if path, err = res.Save(*results); err != nil {
			return err
		}
		for _, f := range []string{"cpu.pprof", "heap.pprof", "heap-idle.pprof"} {
			if data, err := os.ReadFile(filepath.Join(profDir, f)); err == nil {
				_ = os.WriteFile(path[:len(path)-len(".json")]+"."+f, data, 0o644)
			}
		}
		log.Info("results", "file", path)
	}
	if err := write(res, path, *report, *plotPath, *findings); err != nil {
		return err
	}
	return res.Check()
}

// write renders the report (with the findings appended) and the plot.
func write(res *bench.Results, resultsPath, report, plotPath, findings string) error {
	if report != "" {
		md := res.Markdown(filepath.Base(plotPath), resultsPath)
		if extra, err := os.ReadFile(findings); err == nil {
			md += "\n" + string(extra)
		}
		if err := os.WriteFile(report, []byte(md), 0o644); err != nil {
			return err
		}
	}
	if plotPath != "" {
		return res.Plot(plotPath)
	}
	return nil
}
