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

// TestServeRunsWithTwoProcsOnOneCPU: confined to one CPU, serve runs with two Ps, unless
// the operator's GOMAXPROCS says otherwise.
func TestServeRunsWithTwoProcsOnOneCPU(t *testing.T) {
	for _, c := range []struct {
		env, why string
		want     int64
	}{
		{"", "the default", 2},
		{"1", "GOMAXPROCS=1", 1},
	} {
		t.Run(c.why, func(t *testing.T) {
			t.Setenv("GOMAXPROCS", c.env)
			ch := startPinnedChild(t)
			defer ch.stop(t, syscall.SIGTERM)
			if got := ch.metric(t, "go_sched_gomaxprocs_threads"); got != c.want {
				t.Fatalf("serve on one CPU with %s runs with GOMAXPROCS %d, want %d", c.why, got, c.want)
			}
		})
	}
}
