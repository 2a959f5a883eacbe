package dynamo

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/wspresence/wspresence/internal/awsfail"
)

// The highest number of keys the online index has been written under: pk "#CONFIG", sk
// "#SHARDS", n (N). Every writer records its count before its first write of an online
// entry (a conditional put that only raises it), and every list reads that many shards,
// so a redeploy that lowers OnlineIndexShards hides no user: the entries written under the
// higher count are still listed, and each user moves to a shard of the new count at its
// next write. The item is never removed (one per table).
func shardsKey() map[string]types.AttributeValue {
	return map[string]types.AttributeValue{"pk": s("#CONFIG"), "sk": s("#SHARDS")}
}

// shardsCacheFor is how long a store trusts the recorded count it read.
const shardsCacheFor = time.Minute

// shardRecord is a store's knowledge of the recorded shard count.
type shardRecord struct {
	mu       sync.Mutex
	recorded bool      // this store's count is recorded
	read     int       // the count last read
	readAt   time.Time // when
}

// recordShards records the store's shard count unless a higher one is recorded (once
// per store).
func (st *Store) recordShards(ctx context.Context) error {
	st.shards.mu.Lock()
	defer st.shards.mu.Unlock()
	if st.shards.recorded {
		return nil
	}
	item := shardsKey()
	item["n"] = num(int64(st.onlineShards()))
	_, err := st.db.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(st.tables.View), Item: item,
		ConditionExpression:       aws.String("attribute_not_exists(pk) OR n < :n"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":n": item["n"]}})
	if err != nil && !isConflict(err) {
		return awsfail.Wrap("record the online index's shard count", err)
	}
	st.shards.recorded = true
	return nil
}

// listShards is the number of shards a list reads: the store's own count or the highest
// recorded, whichever is larger.
func (st *Store) listShards(ctx context.Context) (int, error) {
	st.shards.mu.Lock()
	defer st.shards.mu.Unlock()
	if st.shards.readAt.IsZero() || time.Since(st.shards.readAt) > shardsCacheFor {
		out, err := st.db.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(st.tables.View), Key: shardsKey()})
		if err != nil {
			return 0, awsfail.Wrap("read the online index's shard count", err)
		}
		n, _ := strconv.Atoi(numStr(out.Item, "n"))
		st.shards.read, st.shards.readAt = n, time.Now()
	}
	return max(st.onlineShards(), st.shards.read), nil
}

func numStr(item map[string]types.AttributeValue, name string) string {
	if v, ok := item[name].(*types.AttributeValueMemberN); ok {
		return v.Value
	}
	return ""
}
