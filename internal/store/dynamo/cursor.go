package dynamo

import (
	"context"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/wspresence/wspresence/internal/awsfail"
)

// The reconciler's place in the online list, so each run goes on where the last one
// stopped: pk "#RECONCILER", sk "#CURSOR", after (S) the last user id looked at, began
// (N, Unix ns) when the current pass over the list began, covered (N) when the last
// complete pass began. One item, overwritten by each run.
func cursorKey() map[string]types.AttributeValue {
	return map[string]types.AttributeValue{"pk": s("#RECONCILER"), "sk": s("#CURSOR")}
}

// Walk returns the reconciler's place in the online list ("" at its start), when the
// current pass began and when the last complete pass began (zero when none).
func (st *Store) Walk(ctx context.Context) (after string, began, covered time.Time, err error) {
	out, err := st.db.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(st.tables.View), Key: cursorKey()})
	if err != nil {
		return "", time.Time{}, time.Time{}, awsfail.Wrap("read the reconciler's cursor", err)
	}
	return str(out.Item, "after"), tm(out.Item, "began"), tm(out.Item, "covered"), nil
}

// SetWalk records the reconciler's place in the online list.
func (st *Store) SetWalk(ctx context.Context, after string, began, covered time.Time) error {
	item := cursorKey()
	if after != "" {
		item["after"] = s(after)
	}
	if !began.IsZero() {
		item["began"] = n(began)
	}
	if !covered.IsZero() {
		item["covered"] = n(covered)
	}
	if _, err := st.db.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(st.tables.View), Item: item}); err != nil {
		return awsfail.Wrap("record the reconciler's cursor", err)
	}
	return nil
}

// The relay's probe: pk "#PROBE", sk "#USER", written by each reconciler run with
// fresh = "1" (so the relay's event filter passes it), sent (N) its time and since (N)
// the time of the oldest probe not yet acknowledged; the relay acknowledges it in pk
// "#PROBE", sk "#ACK", at (N) the latest sent time it saw. Two items, overwritten.
const probeKey = "#PROBE" // package publisher's ProbeKey

// Probe writes a new probe at now and returns when the oldest probe the relay has not
// acknowledged was written (zero when it acknowledged the previous one, or there was
// none) and when the latest it acknowledged was.
func (st *Store) Probe(ctx context.Context, now time.Time) (unacked, acked time.Time, err error) {
	out, err := st.db.BatchGetItem(ctx, &dynamodb.BatchGetItemInput{RequestItems: map[string]types.KeysAndAttributes{
		st.tables.View: {Keys: []map[string]types.AttributeValue{
			{"pk": s(probeKey), "sk": s(userSK)}, {"pk": s(probeKey), "sk": s("#ACK")}}, ConsistentRead: aws.Bool(true)}}})
	if err != nil {
		return time.Time{}, time.Time{}, awsfail.Wrap("read the relay's probe", err)
	}
	var sent, since time.Time
	for _, item := range out.Responses[st.tables.View] {
		if str(item, "sk") == userSK {
			sent, since = tm(item, "sent"), tm(item, "since")
		} else {
			acked = tm(item, "at")
		}
	}
	switch {
	case sent.IsZero() || !acked.Before(sent):
	case !acked.Before(since):
		unacked = sent // an earlier probe was acknowledged, the last one not yet
	default:
		unacked = since
	}
	next := unacked
	if next.IsZero() {
		next = now
	}
	if _, err := st.db.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(st.tables.View), Item: map[string]types.AttributeValue{
		"pk": s(probeKey), "sk": s(userSK), attrFresh: s("1"), "sent": n(now), "since": n(next)}}); err != nil {
		return time.Time{}, time.Time{}, awsfail.Wrap("write the relay's probe", err)
	}
	return unacked, acked, nil
}

// AckProbe acknowledges the probe written at sent (the relay, on its record).
func (st *Store) AckProbe(ctx context.Context, sent time.Time) error {
	_, err := st.db.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(st.tables.View),
		Item:                      map[string]types.AttributeValue{"pk": s(probeKey), "sk": s("#ACK"), "at": n(sent)},
		ConditionExpression:       aws.String("attribute_not_exists(pk) OR #at < :at"),
		ExpressionAttributeNames:  map[string]string{"#at": "at"},
		ExpressionAttributeValues: map[string]types.AttributeValue{":at": n(sent)}})
	if err != nil && !isConflict(err) {
		return awsfail.Wrap("acknowledge the relay's probe", err)
	}
	return nil
}

// Where the reconciler has read the view table's stream in the relay's place (while the
// relay does not run): pk "#RELAYED", sk "#POS", p (M) shard id -> the last sequence
// number published. One item, emptied once the relay runs again.
func relayedKey() map[string]types.AttributeValue {
	return map[string]types.AttributeValue{"pk": s("#RELAYED"), "sk": s("#POS")}
}

// RelayPositions returns the positions the reconciler published the view stream to, by
// shard.
func (st *Store) RelayPositions(ctx context.Context) (map[string]string, error) {
	out, err := st.db.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(st.tables.View), Key: relayedKey(), ConsistentRead: aws.Bool(true)})
	if err != nil {
		return nil, awsfail.Wrap("read the reconciler's stream positions", err)
	}
	pos := map[string]string{}
	if m, ok := out.Item["p"].(*types.AttributeValueMemberM); ok {
		for shard, v := range m.Value {
			if seq, ok := v.(*types.AttributeValueMemberS); ok {
				pos[shard] = seq.Value
			}
		}
	}
	return pos, nil
}

// SetRelayPositions records them (none: the item is emptied).
func (st *Store) SetRelayPositions(ctx context.Context, pos map[string]string) error {
	item := relayedKey()
	m := make(map[string]types.AttributeValue, len(pos))
	for shard, seq := range pos {
		m[shard] = s(seq)
	}
	item["p"] = &types.AttributeValueMemberM{Value: m}
	if _, err := st.db.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(st.tables.View), Item: item}); err != nil {
		return awsfail.Wrap("record the reconciler's stream positions", err)
	}
	return nil
}
