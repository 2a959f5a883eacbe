package main

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// childGODEBUG reads the GODEBUG the child process runs with, from /proc.
func childGODEBUG(t *testing.T, c *child) (string, bool) {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", c.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for kv := range bytes.SplitSeq(raw, []byte{0}) {
		if v, ok := strings.CutPrefix(string(kv), "GODEBUG="); ok {
			return v, true
		}
	}
	return "", false
}

func TestServeRunsWithTheMonitorKeptAwake(t *testing.T) {
	t.Setenv("GODEBUG", "")
	os.Unsetenv("GODEBUG")
	c := startChild(t, t.TempDir())
	defer c.stop(t, syscall.SIGTERM)
	got, ok := childGODEBUG(t, c)
	if !ok || !slices.Contains(strings.Split(got, ","), steadyMonitor) {
		t.Fatalf("serve runs with GODEBUG %q (set: %v), want %q in it", got, ok, steadyMonitor)
	}
}

func TestServeKeepsAnOperatorsSchedtrace(t *testing.T) {
	t.Setenv("GODEBUG", "schedtrace=0,madvdontneed=1")
	c := startChild(t, t.TempDir())
	defer c.stop(t, syscall.SIGTERM)
	if got, _ := childGODEBUG(t, c); got != "schedtrace=0,madvdontneed=1" {
		t.Fatalf("serve runs with GODEBUG %q, want the operator's %q unchanged", got, "schedtrace=0,madvdontneed=1")
	}
}
