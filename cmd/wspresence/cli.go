package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

const usage = `wspresence: presence and message delivery for WebSocket clients.

Usage:
  wspresence serve    [flags]   run the whole service locally (WebSocket, REST, events)
  wspresence token    --user ID [--ttl 1h]          print a signed user JWT
  wspresence send     --user ID --body TEXT         enqueue a message through POST /messages
  wspresence online   [--users a,b]                 print the answer of GET /user/online
  wspresence rebuild  [--data DIR]                  rebuild the view from the event log
  wspresence backup   [--data DIR] --to FILE        write a consistent copy of the store (server running or not)
  wspresence restore  [--data DIR] --from FILE      put a backup in place of the store (server stopped)

Run "wspresence COMMAND --help" for a command's flags and environment variables.
`

// env reads an environment variable.
type env func(string) string

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmds := map[string]func(context.Context, []string, io.Writer, io.Writer, env) error{
		"serve": serve, "token": token, "send": send, "online": online, "rebuild": rebuild,
		"backup": backup, "restore": restore,
	}
	name := args[0]
	if name == "help" || name == "-h" || name == "--help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	cmd, ok := cmds[name]
	if !ok {
		fmt.Fprintf(stderr, "wspresence: unknown command %q\n\n%s", name, usage)
		return 2
	}
	err := cmd(ctx, args[1:], stdout, stderr, getenv)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintf(stderr, "wspresence %s: %v\n", name, err)
		return 1
	}
}

// errUsage reports a usage error already printed.
var errUsage = errors.New("usage")

// flags is a FlagSet whose values may also come from WSPRESENCE_* variables. Bad values
// are collected, so every problem is reported at once.
type flags struct {
	fs     *flag.FlagSet
	getenv env
	errs   []error
	envs   map[string]string
}

func newFlags(name, synopsis string, stderr io.Writer, getenv env) *flags {
	f := &flags{fs: flag.NewFlagSet(name, flag.ContinueOnError), getenv: getenv, envs: map[string]string{}}
	f.fs.SetOutput(stderr)
	f.fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: wspresence %s\n\nFlags (environment variable, default):\n", synopsis)
		f.fs.VisitAll(func(fl *flag.Flag) {
			envName := f.envs[fl.Name]
			if envName == "" {
				envName = "-"
			}
			def := fl.DefValue
			if def == "" {
				def = `""`
			}
			fmt.Fprintf(stderr, "  --%-26s %s\n  %-28s (%s, default %s)\n", fl.Name, fl.Usage, "", envName, def)
		})
	}
	return f
}

type value struct {
	f      *flags
	name   string
	text   string
	set    func(string) error
	isBool bool
}

// IsBoolFlag lets a boolean flag be given without a value (--pprof).
func (v *value) IsBoolFlag() bool { return v.isBool }

func (v *value) String() string { return v.text }

func (v *value) Set(s string) error {
	v.text = s
	if err := v.set(s); err != nil {
		v.f.errs = append(v.f.errs, fmt.Errorf("--%s %q: %w", v.name, s, err))
	}
	return nil
}

// add registers a flag with its environment variable (envName may be "").
func (f *flags) add(name, envName, def, help string, set func(string) error) {
	v := &value{f: f, name: name, text: def, set: set}
	f.fs.Var(v, name, help)
	if envName != "" {
		f.envs[name] = envName
		if s := f.getenv(envName); s != "" {
			v.text = s
			if err := set(s); err != nil {
				f.errs = append(f.errs, fmt.Errorf("%s=%q: %w", envName, s, err))
			}
		}
	}
}

func (f *flags) String(p *string, name, envName, help string) {
	f.add(name, envName, *p, help, func(s string) error { *p = s; return nil })
}

func (f *flags) Duration(p *time.Duration, name, envName, help string) {
	f.add(name, envName, p.String(), help, func(s string) error {
		d, err := time.ParseDuration(s)
		if err != nil {
			return errors.New("not a duration (examples: 500ms, 5s, 10m)")
		}
		*p = d
		return nil
	})
}

// Int64 is Int for an int64.
func (f *flags) Int64(p *int64, name, envName, help string) {
	f.add(name, envName, strconv.FormatInt(*p, 10), help, func(s string) error {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return errors.New("not an integer")
		}
		*p = n
		return nil
	})
}

func (f *flags) Int(p *int, name, envName, help string) {
	f.add(name, envName, strconv.Itoa(*p), help, func(s string) error {
		n, err := strconv.Atoi(s)
		if err != nil {
			return errors.New("not an integer")
		}
		*p = n
		return nil
	})
}

func (f *flags) Float(p *float64, name, envName, help string) {
	f.add(name, envName, strconv.FormatFloat(*p, 'g', -1, 64), help, func(s string) error {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return errors.New("not a number")
		}
		*p = v
		return nil
	})
}

func (f *flags) Bool(p *bool, name, envName, help string) {
	f.add(name, envName, strconv.FormatBool(*p), help, func(s string) error {
		v, err := strconv.ParseBool(s)
		if err != nil {
			return errors.New("want true or false")
		}
		*p = v
		return nil
	})
	f.fs.Lookup(name).Value.(*value).isBool = true
}

func (f *flags) List(p *[]string, name, envName, help string) {
	f.add(name, envName, strings.Join(*p, ","), help, func(s string) error {
		*p = splitList(s)
		return nil
	})
}

// parse parses args; it returns flag.ErrHelp for --help, errUsage for a usage error, and
// the joined value errors otherwise.
func (f *flags) parse(args []string) error {
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if f.fs.NArg() > 0 {
		fmt.Fprintf(f.fs.Output(), "unexpected arguments: %s\n", strings.Join(f.fs.Args(), " "))
		f.fs.Usage()
		return errUsage
	}
	return errors.Join(f.errs...)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
