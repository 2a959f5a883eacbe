// Package eventbridge publishes wspresence's integration events to an EventBridge bus, in
// PutEvents batches of at most 10 entries, resending only the entries that failed (with
// jittered backoff) until every entry is accepted or the attempts run out. A Publisher is
// safe for concurrent use.
package eventbridge

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/awsfail"
	"github.com/wspresence/wspresence/internal/failure"
	"github.com/wspresence/wspresence/internal/retry"
)

// MaxEntries is PutEvents' limit of entries per call.
const MaxEntries = 10

// Publisher publishes to one bus.
type Publisher struct {
	client *eventbridge.Client
	bus    string
	// Attempts bounds the calls per batch (default 5).
	Attempts int
	// Backoff is the base delay between attempts (default 50ms, doubled each time, jittered).
	Backoff time.Duration
}

// New returns a Publisher to the bus named bus.
func New(client *eventbridge.Client, bus string) *Publisher {
	return &Publisher{client: client, bus: bus, Attempts: 5, Backoff: 50 * time.Millisecond}
}

// Publish sends evs. It returns nil once every entry was accepted; otherwise an error
// naming the entries that were not, wrapping failure.ErrThrottled when the bus throttled.
// Entries carry the event's stable id in their detail, so a retry that sends an entry
// twice lets subscribers de-duplicate.
func (p *Publisher) Publish(ctx context.Context, evs ...events.Published) error {
	entries := make([]types.PutEventsRequestEntry, 0, len(evs))
	for _, e := range evs {
		detail, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("encode %s: %w", e.DetailType(), err)
		}
		entries = append(entries, types.PutEventsRequestEntry{
			EventBusName: aws.String(p.bus),
			Source:       aws.String(events.Source),
			DetailType:   aws.String(string(e.DetailType())),
			Detail:       aws.String(string(detail)),
		})
	}
	for start := 0; start < len(entries); start += MaxEntries {
		if err := p.send(ctx, entries[start:min(start+MaxEntries, len(entries))]); err != nil {
			return err
		}
	}
	return nil
}

func (p *Publisher) send(ctx context.Context, pending []types.PutEventsRequestEntry) error {
	var lastErr error
	for attempt := 0; attempt < max(p.Attempts, 1); attempt++ {
		if attempt > 0 {
			if err := retry.Sleep(ctx, retry.Backoff(p.Backoff, attempt)); err != nil {
				return err
			}
		}
		out, err := p.client.PutEvents(ctx, &eventbridge.PutEventsInput{Entries: pending})
		if err != nil {
			lastErr = awsfail.Wrap("put events", err)
			continue
		}
		if out.FailedEntryCount == 0 {
			return nil
		}
		var failed []types.PutEventsRequestEntry
		var codes []string
		throttled := false
		for i, res := range out.Entries {
			if res.ErrorCode != nil && i < len(pending) {
				failed = append(failed, pending[i])
				codes = append(codes, aws.ToString(res.ErrorCode))
				throttled = throttled || strings.Contains(aws.ToString(res.ErrorCode), "Throttl")
			}
		}
		if len(failed) == 0 {
			// The count says some failed but no entry says which: resend them all.
			failed = pending
		}
		pending = failed
		lastErr = fmt.Errorf("put events: %d entries failed (%s)", len(failed), strings.Join(codes, ", "))
		if throttled {
			lastErr = fmt.Errorf("%w: %w", lastErr, failure.ErrThrottled)
		}
	}
	return fmt.Errorf("after %d attempts: %w", max(p.Attempts, 1), lastErr)
}
