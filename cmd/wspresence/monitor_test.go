package main

import (
	"slices"
	"testing"
)

func TestSteadyMonitorEnv(t *testing.T) {
	base := []string{"HOME=/root", "PATH=/bin"}
	for _, tc := range []struct {
		name    string
		args    []string
		environ []string
		want    []string
	}{
		{"serve without GODEBUG", []string{"serve", "--addr", ":0"}, base, append(slices.Clone(base), "GODEBUG="+steadyMonitor)},
		{"serve with other settings", []string{"serve"}, append(slices.Clone(base), "GODEBUG=madvdontneed=1"), append(slices.Clone(base), "GODEBUG=madvdontneed=1,"+steadyMonitor)},
		{"serve with an empty GODEBUG", []string{"serve"}, append(slices.Clone(base), "GODEBUG="), append(slices.Clone(base), "GODEBUG="+steadyMonitor)},
		{"serve with schedtrace set", []string{"serve"}, append(slices.Clone(base), "GODEBUG=madvdontneed=1,schedtrace=0"), nil},
		{"another command", []string{"token", "alice"}, base, nil},
		{"no command", nil, base, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := steadyMonitorEnv(tc.args, tc.environ)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("steadyMonitorEnv(%q, %q) = %q, want %q", tc.args, tc.environ, got, tc.want)
			}
		})
	}
}
