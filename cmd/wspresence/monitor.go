package main

import (
	"os"
	"strings"
	"syscall"
)

// steadyMonitor is the GODEBUG setting `serve` runs with: schedtrace at its largest period
// (milliseconds in an int32, 24.8 days). Any schedtrace above zero keeps the Go runtime's
// system monitor (sysmon) out of its deep sleep. Without it, each time every goroutine is
// idle the monitor sleeps until the next system call wakes it, and each wake costs a futex
// call, two context switches and a run of 20 µs naps. The server makes such a call with
// every request after an idle millisecond (the request's read, the store's writes), so at
// 1,000 msg/s that was 2.8 naps, 2.4 futex calls and half the 7.3 context switches of a
// message (bench/findings.md). The price is one scheduler line on stderr each 24.8 days of
// the machine's uptime, and one in a fatal error's report.
const steadyMonitor = "schedtrace=2147483647"

// steadyMonitorEnv returns the environment to re-execute `serve` with so that the runtime
// reads steadyMonitor at its start (it reads schedtrace only then), or nil when args are not
// `serve` or GODEBUG already sets schedtrace: `GODEBUG=schedtrace=0` turns this off.
func steadyMonitorEnv(args, environ []string) []string {
	if len(args) == 0 || args[0] != "serve" {
		return nil
	}
	out := make([]string, 0, len(environ)+1)
	godebug := ""
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			godebug = v
			continue
		}
		out = append(out, kv)
	}
	for _, setting := range strings.Split(godebug, ",") {
		if strings.HasPrefix(strings.TrimSpace(setting), "schedtrace=") {
			return nil
		}
	}
	if godebug != "" {
		godebug += ","
	}
	return append(out, "GODEBUG="+godebug+steadyMonitor)
}

// execSteadyMonitor replaces the process with itself under steadyMonitorEnv's environment
// (same process id, arguments and descriptors). It returns when there is nothing to do or
// the exec failed; `serve` then runs as it is.
func execSteadyMonitor(args []string) {
	env := steadyMonitorEnv(args[1:], os.Environ())
	if env == nil {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	_ = syscall.Exec(exe, args, env)
}
