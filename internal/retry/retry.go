// Package retry spaces the retries of the AWS adapters: exponential backoff with jitter,
// and a sleep that ends with its context. Its functions are safe for concurrent use.
package retry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is the delay before retry number attempt (1 for the first retry): base doubled
// per attempt (at most 64 times base), jittered over its upper half so that callers
// retrying together spread out.
func Backoff(base time.Duration, attempt int) time.Duration {
	d := base << min(max(attempt-1, 0), 6)
	return d/2 + rand.N(d/2+1)
}

// Sleep waits d, or returns ctx's error if it ends first.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
