package dynamo

import (
	"context"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/wspresence/wspresence/internal/awsfail"
)

// Client activity (frames on $default) is kept off the user item, in a register beside
// it: pk user id, sk "#ACT", a (N, Unix ns) the latest activity recorded. It only grows
// (a conditional write), so it needs no version and never races the fold; a user's last
// activity is the later of the register and the fold's. It is written at most once per
// window (ActivityWindow), read first with an eventually consistent read: a frame costs a
// half read unit, a window one small write, and neither touches the user item, its
// indexes or its stream.
const activitySK = "#ACT"

// ActivityWindow is the granularity of activity on AWS: a user's frames within one
// window of the last recorded activity record nothing.
const ActivityWindow = 5 * time.Minute

func activityKey(userID string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{"pk": s(userID), "sk": s(activitySK)}
}

// Touch records that userID was active at at, unless activity was recorded within
// ActivityWindow before it; it reports whether it wrote.
func (st *Store) Touch(ctx context.Context, userID string, at time.Time) (bool, error) {
	out, err := st.db.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(st.tables.View), Key: activityKey(userID),
		ProjectionExpression: aws.String("a")})
	if err != nil {
		return false, awsfail.Wrap("read activity of "+userID, err)
	}
	if last := tm(out.Item, "a"); !last.IsZero() && at.Sub(last) < ActivityWindow {
		return false, nil
	}
	_, err = st.db.UpdateItem(ctx, &dynamodb.UpdateItemInput{TableName: aws.String(st.tables.View), Key: activityKey(userID),
		UpdateExpression:          aws.String("SET a = :t"),
		ConditionExpression:       aws.String("attribute_not_exists(a) OR a < :t"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":t": n(at)}})
	switch {
	case err == nil:
		return true, nil
	case isConflict(err):
		return false, nil // a later activity is recorded already
	default:
		return false, awsfail.Wrap("record activity of "+userID, err)
	}
}

// activity reads the registers of the given users (batches of 100, unprocessed keys
// retried), by user id.
func (st *Store) activity(ctx context.Context, ids []string) (map[string]time.Time, error) {
	out := map[string]time.Time{}
	err := st.batchGet(ctx, ids, activityKey, "pk, a", func(item map[string]types.AttributeValue) {
		out[str(item, "pk")] = tm(item, "a")
	})
	return out, err
}
