//go:build race

package costmeter_test

// raceDetector reports whether the tests run under the race detector, whose
// instrumentation slows the handlers several times over: the durations it measures are
// not the ones Lambda bills, so the thresholds are checked only without it.
const raceDetector = true
