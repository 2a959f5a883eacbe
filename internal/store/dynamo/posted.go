package dynamo

import (
	"context"
	"encoding/json"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/awsfail"
)

// A message's posts that succeeded while its record must be retried (its outcome events
// could not be published, or another recipient failed) are kept in the view table, so the
// retry publishes their outcomes instead of posting again:
//
//	pk, sk   "#MSG#" + the queue's message id, "#POSTED"
//	o        map of user id -> {t: detail-type, d: detail JSON} of the outcome
//	ttl      when DynamoDB may delete it (Unix seconds): past the dead-letter queue's
//	         retention, no retry of the record can come
const (
	postedSK = "#POSTED"
	// PostedRetention is how long posted outcomes are kept: the dead-letter queue's
	// retention (14 days), so a redrive finds them too.
	PostedRetention = 14 * 24 * time.Hour
)

func postedKey(queueMessageID string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{"pk": s("#MSG#" + queueMessageID), "sk": s(postedSK)}
}

// Posted returns the outcomes recorded for a queue message, by user (none when nothing
// was recorded). The read is eventually consistent (half the price): a retry comes at
// least the queue's visibility timeout after the write.
func (st *Store) Posted(ctx context.Context, queueMessageID string) (map[string]events.Published, error) {
	out, err := st.db.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(st.tables.View),
		Key: postedKey(queueMessageID)})
	if err != nil {
		return nil, awsfail.Wrap("read posts of "+queueMessageID, err)
	}
	m, ok := out.Item["o"].(*types.AttributeValueMemberM)
	if !ok {
		return nil, nil
	}
	res := make(map[string]events.Published, len(m.Value))
	for user, v := range m.Value {
		o, ok := v.(*types.AttributeValueMemberM)
		if !ok || !json.Valid([]byte(str(o.Value, "d"))) {
			continue
		}
		var id struct {
			EventID string `json:"eventId"`
		}
		_ = json.Unmarshal([]byte(str(o.Value, "d")), &id)
		res[user] = events.Stored{Type: events.DetailType(str(o.Value, "t")), EventID: id.EventID, Detail: json.RawMessage(str(o.Value, "d"))}
	}
	return res, nil
}

// RecordPosted records the outcomes of the users a queue message was posted to (it
// replaces what was recorded: pass every user posted so far).
func (st *Store) RecordPosted(ctx context.Context, queueMessageID string, outcomes map[string]events.Published) error {
	m := make(map[string]types.AttributeValue, len(outcomes))
	for user, p := range outcomes {
		stored, err := events.Store(p)
		if err != nil {
			return err
		}
		m[user] = &types.AttributeValueMemberM{Value: map[string]types.AttributeValue{"t": s(string(stored.Type)), "d": s(string(stored.Detail))}}
	}
	item := postedKey(queueMessageID)
	item["o"] = &types.AttributeValueMemberM{Value: m}
	item["ttl"] = &types.AttributeValueMemberN{Value: strconv.FormatInt(st.now().Add(PostedRetention).Unix(), 10)}
	if _, err := st.db.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(st.tables.View), Item: item}); err != nil {
		return awsfail.Wrap("record posts of "+queueMessageID, err)
	}
	return nil
}
