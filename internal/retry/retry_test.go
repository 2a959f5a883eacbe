package retry_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/wspresence/wspresence/internal/retry"
)

func TestBackoffGrowsWithinBounds(t *testing.T) {
	base := 10 * time.Millisecond
	for attempt := 1; attempt <= 10; attempt++ {
		full := base << min(attempt-1, 6)
		for range 100 {
			if d := retry.Backoff(base, attempt); d < full/2 || d > full {
				t.Fatalf("attempt %d: %v outside [%v, %v]", attempt, d, full/2, full)
			}
		}
	}
}

func TestSleepEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := retry.Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep = %v", err)
	}
	if err := retry.Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatal(err)
	}
}
