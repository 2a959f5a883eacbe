package dynamo

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/awsfail"
	"github.com/wspresence/wspresence/internal/failure"
	"github.com/wspresence/wspresence/internal/presence"
	"github.com/wspresence/wspresence/internal/retry"
)

// Tables names the two tables.
type Tables struct {
	// Events is the event table: hash key "pk" (S), stream NEW_IMAGE. Its items expire
	// by TTL ("ttl", EventRetention past the event's time).
	Events string
	// View is the view table: hash key "pk" (S), range key "sk" (S), sparse index
	// OnlineIndex on ("online" S, "pk" S).
	View string
}

// OnlineIndex is the name of the view table's sparse index of online users.
const OnlineIndex = "online"

// Item attribute names and fixed values.
const (
	userSK     = "#USER"
	batchLimit = 100
	maxRetries = 8
)

// Store is the DynamoDB event store and view. Set its exported fields before use.
type Store struct {
	db     *dynamodb.Client
	tables Tables
	// Grace is the offline grace period the fold applies (OFFLINE_GRACE_SECONDS).
	Grace time.Duration
	// TombstoneRetention is how long closed connections are remembered
	// (DefaultTombstoneRetention when zero).
	TombstoneRetention time.Duration
	// MaxTombstones caps the closed connections a user item remembers (DefaultMaxTombstones
	// when zero).
	MaxTombstones int
	// StaleAfter is how long a live connection may go unseen before the reconciler checks
	// it, and past which $connect does not count it against the cap (DefaultStaleAfter
	// when zero).
	StaleAfter time.Duration
	// GraceMargin is how long past its deadline a pending grace period waits for its
	// timer before the reconciler ends it (DefaultGraceMargin when zero).
	GraceMargin time.Duration
	// OutboxAge is how long a transition waits for the stream's relay before the
	// reconciler publishes it (DefaultOutboxAge when zero).
	OutboxAge time.Duration
	// Now is the clock that stamps outbox entries (time.Now when nil).
	Now func() time.Time
	// OnlineShards is the number of keys the online index is written under
	// (DefaultOnlineShards when zero): each online user is under one, by a hash of its id,
	// so no key takes more than about 1/OnlineShards of the index's writes. It may be
	// lowered: the highest count ever written with is recorded in the table, and lists
	// read that many shards.
	OnlineShards int
	// EventRetention is how long the event table keeps an event: each item carries a TTL
	// (ttl, Unix seconds) that far past the event's time (none when zero).
	EventRetention time.Duration
	// RecoveryWindow is how long a user's messages are kept for recovery (the
	// RecoveryWindowSeconds setting): the stream's reads ignore older ones, and its items'
	// TTLs are set from it.
	RecoveryWindow time.Duration

	shards shardRecord
}

// New returns a Store on the given client and tables, with a 5 s grace period.
func New(db *dynamodb.Client, tables Tables) *Store {
	return &Store{db: db, tables: tables, Grace: 5 * time.Second}
}

func s(v string) types.AttributeValue { return &types.AttributeValueMemberS{Value: v} }
func n(t time.Time) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatInt(t.UnixNano(), 10)}
}
func ss(v ...string) types.AttributeValue { return &types.AttributeValueMemberSS{Value: v} }

func userKey(userID string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{"pk": s(userID), "sk": s(userSK)}
}

// EventItem is the event table item of e.
func EventItem(e events.ConnectionEvent) map[string]types.AttributeValue {
	item := map[string]types.AttributeValue{
		"pk":           s(e.Key()),
		"type":         s(string(e.Type)),
		"userId":       s(e.UserID),
		"connectionId": s(e.ConnectionID),
		"at":           s(e.At.UTC().Format(time.RFC3339Nano)),
	}
	if e.SourceIP != "" {
		item["sourceIp"] = s(e.SourceIP)
	}
	if e.UserAgent != "" {
		item["userAgent"] = s(e.UserAgent)
	}
	if e.Reason != "" {
		item["reason"] = s(string(e.Reason))
	}
	return item
}

// Retention of the event table.
const (
	// DefaultEventRetentionDays is how long an event is kept by default.
	DefaultEventRetentionDays = 30
	// MinEventRetentionDays is the least: longer than the stream keeps a record (24 h)
	// and than API Gateway keeps a connection (2 h), so every live connection's open and
	// every close a stream may still deliver are in the log.
	MinEventRetentionDays = 2
)

// eventItem is EventItem(e) with its expiry, EventRetention past the event's time.
func (st *Store) eventItem(e events.ConnectionEvent) map[string]types.AttributeValue {
	item := EventItem(e)
	if st.EventRetention > 0 {
		item["ttl"] = &types.AttributeValueMemberN{Value: strconv.FormatInt(e.At.Add(st.EventRetention).Unix(), 10)}
	}
	return item
}

// Tables returns the store's tables.
func (st *Store) Tables() Tables { return st.tables }

// Append writes each event with a conditional put on its natural key, so an event already
// there is skipped; it returns how many were written. Errors wrap failure.ErrThrottled or
// failure.ErrUnavailable where they apply.
func (st *Store) Append(ctx context.Context, evs ...events.ConnectionEvent) (int, error) {
	written := 0
	for _, e := range evs {
		if err := e.Validate(); err != nil {
			return written, err
		}
		_, err := st.db.PutItem(ctx, &dynamodb.PutItemInput{
			TableName:           aws.String(st.tables.Events),
			Item:                st.eventItem(e),
			ConditionExpression: aws.String("attribute_not_exists(pk)"),
		})
		switch {
		case err == nil:
			written++
		case isConflict(err):
		default:
			return written, awsfail.Wrap("append "+e.Key(), err)
		}
	}
	return written, nil
}

// ErrUnknownConnection is returned by OpenedBy for a connection with no open event.
var ErrUnknownConnection = errors.New("unknown connection")

// OpenedBy returns the user of a connection from its ConnectionOpened event.
func (st *Store) OpenedBy(ctx context.Context, connectionID string) (string, error) {
	out, err := st.db.GetItem(ctx, &dynamodb.GetItemInput{
		TableName:      aws.String(st.tables.Events),
		Key:            map[string]types.AttributeValue{"pk": s(events.Opened("", connectionID, time.Time{}, "", "").Key())},
		ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return "", awsfail.Wrap("read open of "+connectionID, err)
	}
	uid := str(out.Item, "userId")
	if uid == "" {
		return "", fmt.Errorf("%s: %w", connectionID, ErrUnknownConnection)
	}
	return uid, nil
}

func isConflict(err error) bool {
	var ccf *types.ConditionalCheckFailedException
	return errors.As(err, &ccf)
}

func str(item map[string]types.AttributeValue, name string) string {
	if v, ok := item[name].(*types.AttributeValueMemberS); ok {
		return v.Value
	}
	return ""
}

func strs(item map[string]types.AttributeValue, name string) []string {
	if v, ok := item[name].(*types.AttributeValueMemberSS); ok {
		return v.Value
	}
	return nil
}

func tm(item map[string]types.AttributeValue, name string) time.Time {
	v, ok := item[name].(*types.AttributeValueMemberN)
	if !ok {
		return time.Time{}
	}
	ns, err := strconv.ParseInt(v.Value, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

func statusOf(item map[string]types.AttributeValue) presence.Status {
	return presence.Status{UserID: str(item, "pk"), Connections: len(strs(item, "live")), LastActivity: tm(item, "lastActivity")}
}

// LiveConnections lists the user's live connections (a consistent read).
func (st *Store) LiveConnections(ctx context.Context, userID string) ([]string, error) {
	out, err := st.db.GetItem(ctx, &dynamodb.GetItemInput{
		TableName:            aws.String(st.tables.View),
		Key:                  userKey(userID),
		ConsistentRead:       aws.Bool(true),
		ProjectionExpression: aws.String("live"),
	})
	if err != nil {
		return nil, awsfail.Wrap("read connections of "+userID, err)
	}
	return strs(out.Item, "live"), nil
}

// Users returns each id's status, in the order given: the user items and the activity
// registers, read with BatchGetItem in chunks of 100 keys, unprocessed keys retried with
// jittered backoff.
func (st *Store) Users(ctx context.Context, ids []string) ([]presence.Status, error) {
	found := map[string]presence.Status{}
	if err := st.batchGet(ctx, ids, userKey, "pk, live, lastActivity", func(item map[string]types.AttributeValue) {
		found[str(item, "pk")] = statusOf(item)
	}); err != nil {
		return nil, err
	}
	act, err := st.activity(ctx, ids)
	if err != nil {
		return nil, err
	}
	res := make([]presence.Status, len(ids))
	for i, id := range ids {
		res[i] = presence.Status{UserID: id}
		if u, ok := found[id]; ok {
			res[i] = u
		}
		if a := act[id]; a.After(res[i].LastActivity) {
			res[i].LastActivity = a
		}
	}
	return res, nil
}

// batchGet reads the item key(id) of each distinct id with BatchGetItem, in chunks of 100,
// retrying unprocessed keys with jittered backoff, and calls found with each item read.
func (st *Store) batchGet(ctx context.Context, ids []string, key func(string) map[string]types.AttributeValue, projection string, found func(map[string]types.AttributeValue)) error {
	unique := make([]string, 0, len(ids))
	seen := map[string]bool{}
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			unique = append(unique, id)
		}
	}
	for start := 0; start < len(unique); start += batchLimit {
		chunk := unique[start:min(start+batchLimit, len(unique))]
		keys := make([]map[string]types.AttributeValue, len(chunk))
		for i, id := range chunk {
			keys[i] = key(id)
		}
		req := map[string]types.KeysAndAttributes{st.tables.View: {Keys: keys, ProjectionExpression: aws.String(projection)}}
		for attempt := 0; len(req) > 0; attempt++ {
			if attempt > 0 {
				if attempt > maxRetries {
					return fmt.Errorf("read users: unprocessed keys after %d attempts: %w", maxRetries, failure.ErrThrottled)
				}
				if err := retry.Sleep(ctx, retry.Backoff(10*time.Millisecond, attempt)); err != nil {
					return err
				}
			}
			out, err := st.db.BatchGetItem(ctx, &dynamodb.BatchGetItemInput{RequestItems: req})
			if err != nil {
				return awsfail.Wrap("read users", err)
			}
			for _, item := range out.Responses[st.tables.View] {
				found(item)
			}
			req = out.UnprocessedKeys
		}
	}
	return nil
}

// OnlineUsers lists users with a live connection, in id order after the id after, at most
// limit: it queries every shard of the sparse online index from after and merges them in
// id order, so the cursor (the last id listed) is stable whatever the shards (eventually
// consistent, as any index).
func (st *Store) OnlineUsers(ctx context.Context, after string, limit int) ([]presence.Status, error) {
	page, err := st.onlinePage(ctx, after, limit)
	if err != nil {
		return nil, err
	}
	all := make([]presence.Status, len(page))
	for i, u := range page {
		all[i] = u.status
	}
	ids := make([]string, len(all))
	for i, u := range all {
		ids[i] = u.UserID
	}
	act, err := st.activity(ctx, ids)
	if err != nil {
		return nil, err
	}
	for i, u := range all {
		if a := act[u.UserID]; a.After(u.LastActivity) {
			all[i].LastActivity = a
		}
	}
	return all, nil
}

// OnlineConnections lists the live connections of the users of the online list, in user
// id order after the id after, at most limit users (the index's projection: no activity
// register is read). The last connection's user is the cursor of the next page.
func (st *Store) OnlineConnections(ctx context.Context, after string, limit int) ([]presence.Conn, error) {
	page, err := st.onlinePage(ctx, after, limit)
	if err != nil {
		return nil, err
	}
	var out []presence.Conn
	for _, u := range page {
		for _, id := range u.live {
			out = append(out, presence.Conn{ID: id, UserID: u.status.UserID})
		}
	}
	return out, nil
}

// onlineUser is an entry of the online index.
type onlineUser struct {
	status presence.Status
	live   []string
}

// onlinePage lists at most limit users of the online index in id order after after: it
// queries every shard ever written (listShards) and merges them.
func (st *Store) onlinePage(ctx context.Context, after string, limit int) ([]onlineUser, error) {
	shards, err := st.listShards(ctx)
	if err != nil {
		return nil, err
	}
	var all []onlineUser
	for shard := range shards {
		page, err := st.onlineShard(ctx, strconv.Itoa(shard), after, limit)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].status.UserID < all[j].status.UserID })
	return all[:min(limit, len(all))], nil
}

// onlineShard lists at most limit online users of one shard, in id order after after.
func (st *Store) onlineShard(ctx context.Context, shard, after string, limit int) ([]onlineUser, error) {
	cond := "#o = :shard"
	values := map[string]types.AttributeValue{":shard": s(shard)}
	if after != "" {
		cond += " AND pk > :after"
		values[":after"] = s(after)
	}
	var out []onlineUser
	var start map[string]types.AttributeValue
	for len(out) < limit {
		page, err := st.db.Query(ctx, &dynamodb.QueryInput{
			TableName:                 aws.String(st.tables.View),
			IndexName:                 aws.String(OnlineIndex),
			KeyConditionExpression:    aws.String(cond),
			ExpressionAttributeNames:  map[string]string{"#o": "online"},
			ExpressionAttributeValues: values,
			Limit:                     aws.Int32(int32(min(limit-len(out), math.MaxInt32))),
			ExclusiveStartKey:         start,
		})
		if err != nil {
			return nil, awsfail.Wrap("list online users", err)
		}
		for _, item := range page.Items {
			if st := statusOf(item); st.Online() {
				out = append(out, onlineUser{status: st, live: strs(item, "live")})
			}
		}
		if page.LastEvaluatedKey == nil {
			break
		}
		start = page.LastEvaluatedKey
	}
	return out, nil
}
