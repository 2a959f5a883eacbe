package dynamo_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/store/dynamo"
	"github.com/wspresence/wspresence/internal/store/dynamo/dynamotest"
)

// TestEventRetention: every event item expires EventRetention past its time (ttl, Unix
// seconds, the table's TTL attribute). A view rebuilt from only what the log keeps at a
// moment equals the live view for every user: a user whose events all expired is offline
// in both, live connections (opened at most 2 hours ago) and recent closes are kept.
func TestEventRetention(t *testing.T) {
	ctx := context.Background()
	r := newRig(t)
	const retention = 30 * 24 * time.Hour
	r.store.EventRetention = retention
	now := base.Add(60 * 24 * time.Hour)
	type step struct {
		e      events.ConnectionEvent
		expire bool
	}
	steps := []step{
		{e: events.Opened("old", "o1", base, "", "")},
		{e: events.Closed("old", "o1", base.Add(time.Hour), events.ReasonClient), expire: true},
		{e: events.Opened("closed", "c1", now.Add(-26*time.Hour), "", "")},
		{e: events.Closed("closed", "c1", now.Add(-25*time.Hour), events.ReasonClient), expire: true},
		{e: events.Opened("live", "l1", now.Add(-90*time.Minute), "", "")},
		{e: events.Opened("live", "l2", now.Add(-time.Hour), "", "")},
		{e: events.Closed("live", "l2", now.Add(-30*time.Minute), events.ReasonClient)},
	}
	for _, s := range steps {
		if _, err := r.store.Append(ctx, s.e); err != nil {
			t.Fatal(err)
		}
		if _, err := r.store.Apply(ctx, s.e); err != nil {
			t.Fatal(err)
		}
		if s.expire {
			if _, err := r.store.ExpireGrace(ctx, s.e.UserID, s.e.At, s.e.At.Add(testGrace)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// What the log keeps at now: the items whose ttl has not passed.
	raw := dynamotest.Client(t)
	out, err := raw.Scan(ctx, &dynamodb.ScanInput{TableName: aws.String(r.store.Tables().Events)})
	if err != nil {
		t.Fatal(err)
	}
	var kept []events.ConnectionEvent
	for _, item := range out.Items {
		e, err := dynamo.EventOf(item)
		if err != nil {
			t.Fatal(err)
		}
		ttl, ok := item["ttl"].(*types.AttributeValueMemberN)
		if !ok || ttl.Value != strconv.FormatInt(e.At.Add(retention).Unix(), 10) {
			t.Fatalf("%s: ttl %v, want %d", e.Key(), item["ttl"], e.At.Add(retention).Unix())
		}
		if e.At.Add(retention).After(now) {
			kept = append(kept, e)
		}
	}
	if len(kept) != 5 {
		t.Fatalf("%d events kept, want the 5 of the last 30 days", len(kept))
	}
	rebuilt := newRig(t).store
	for _, e := range kept {
		if _, err := rebuilt.Apply(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := rebuilt.ExpireGrace(ctx, "closed", now.Add(-25*time.Hour), now.Add(-25*time.Hour).Add(testGrace)); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"old", "closed", "live"} {
		a, err := r.store.State(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		b, err := rebuilt.State(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		if a.User.Online() != b.User.Online() || len(a.Live()) != len(b.Live()) || a.User.GracePending() != b.User.GracePending() {
			t.Fatalf("%s: live %v online %v, rebuilt %v online %v", u, a.Live(), a.User.Online(), b.Live(), b.User.Online())
		}
	}
}
