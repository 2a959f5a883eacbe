package main

import (
	"runtime"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// startPinnedChild starts `serve` as startChild does, confined to one CPU: the child
// inherits the affinity of the thread that forks it, and the Go runtime sizes GOMAXPROCS
// by that affinity.
func startPinnedChild(t *testing.T) *child {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var was unix.CPUSet
	if err := unix.SchedGetaffinity(0, &was); err != nil {
		t.Fatal(err)
	}
	var one unix.CPUSet
	for cpu := range 1024 {
		if was.IsSet(cpu) {
			one.Set(cpu)
			break
		}
	}
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unix.SchedSetaffinity(0, &was); err != nil {
			t.Fatal(err)
		}
	}()
	return startChild(t, t.TempDir())
}

func TestServeRunsWithTwoProcsOnOneCPU(t *testing.T) {
	t.Setenv("GOMAXPROCS", "")
	c := startPinnedChild(t)
	defer c.stop(t, syscall.SIGTERM)
	if got := c.metric(t, "go_sched_gomaxprocs_threads"); got != 2 {
		t.Fatalf("serve on one CPU runs with GOMAXPROCS %d, want 2", got)
	}
}

func TestServeKeepsAnOperatorsGOMAXPROCS(t *testing.T) {
	t.Setenv("GOMAXPROCS", "1")
	c := startPinnedChild(t)
	defer c.stop(t, syscall.SIGTERM)
	if got := c.metric(t, "go_sched_gomaxprocs_threads"); got != 1 {
		t.Fatalf("serve with GOMAXPROCS=1 runs with GOMAXPROCS %d, want 1", got)
	}
}
