package dynamo

import (
	"context"
	"fmt"
	"reflect"
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

// Defaults of the store's settings.
const (
	// DefaultTombstoneRetention is how long a closed connection is remembered: the event
	// table's stream keeps records 24 hours, so no reordered record of it arrives later.
	DefaultTombstoneRetention = 24 * time.Hour
	// DefaultMaxTombstones caps the closed connections a user item remembers, so a client
	// in a reconnect loop cannot grow its item toward DynamoDB's 400 KB limit (200 closed
	// connections take about 20 KB).
	DefaultMaxTombstones = 200
)

// Apply folds one event of the log into its user's state (presence.State.Apply, the
// fold both runtimes share) and writes the result back with one conditional write on the
// item's version, retried on conflict; the transitions it caused are recorded in the same
// write (the item's outbox, published from the table's stream). It is idempotent: an event
// already folded changes nothing and writes nothing. GraceStarted is also set on a retry
// of the close that started a pending grace period, so a failed start is started again.
func (st *Store) Apply(ctx context.Context, e events.ConnectionEvent) (presence.Effects, error) {
	if err := e.Validate(); err != nil {
		return presence.Effects{}, err
	}
	return st.mutate(ctx, e.UserID, "apply "+e.Key(), func(s presence.State) (presence.State, presence.Effects) {
		next, eff := s.Apply(e, st.Grace)
		next, _ = next.Compact(e.At.Add(-st.retention()), st.maxTombstones())
		if sameState(next, s) && e.Type == events.TypeConnectionClosed && s.User.GracePending() && s.User.OfflineSince.Equal(e.At) {
			eff.GraceStarted = true
		}
		return next, eff
	})
}

// ExpireGrace runs the grace timer of the period that began at since, at now
// (presence.State.ExpireGrace), and records the UserOffline it decides in the same
// conditional write. A timer of an older period, or a second run, changes nothing.
func (st *Store) ExpireGrace(ctx context.Context, userID string, since, now time.Time) (presence.Effects, error) {
	return st.mutate(ctx, userID, "expire grace of "+userID, func(s presence.State) (presence.State, presence.Effects) {
		return s.ExpireGrace(since, now, st.Grace)
	})
}

// sameState reports whether a and b are stored as the same item (times compare as
// instants, whatever their location).
func sameState(a, b presence.State) bool {
	ia, erra := encodeState(a, 0, nil)
	ib, errb := encodeState(b, 0, nil)
	return erra == nil && errb == nil && reflect.DeepEqual(ia, ib)
}

func (st *Store) retention() time.Duration {
	if st.TombstoneRetention > 0 {
		return st.TombstoneRetention
	}
	return DefaultTombstoneRetention
}

func (st *Store) maxTombstones() int {
	if st.MaxTombstones > 0 {
		return st.MaxTombstones
	}
	return DefaultMaxTombstones
}

// State reads a user's state (a consistent read; the empty state of a user never seen).
func (st *Store) State(ctx context.Context, userID string) (presence.State, error) {
	s, _, err := st.load(ctx, userID)
	return s, err
}

func (st *Store) load(ctx context.Context, userID string) (presence.State, int64, error) {
	out, err := st.db.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(st.tables.View), Key: userKey(userID), ConsistentRead: aws.Bool(true)})
	if err != nil {
		return presence.State{}, 0, awsfail.Wrap("read user "+userID, err)
	}
	s, v := decodeState(userID, out.Item)
	return s, v, nil
}

// mutate loads the user's state, runs fold on it and, when the state changed, writes it
// back if its version is still the one read, retrying the whole step on a conflict. The
// write records fold's transitions as the item's outbox.
func (st *Store) mutate(ctx context.Context, userID, op string, fold func(presence.State) (presence.State, presence.Effects)) (presence.Effects, error) {
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if attempt > maxRetries {
				return presence.Effects{}, fmt.Errorf("%s: %d conflicting writes in a row: %w", op, maxRetries, failure.ErrThrottled)
			}
			if err := retry.Sleep(ctx, retry.Backoff(5*time.Millisecond, attempt)); err != nil {
				return presence.Effects{}, err
			}
		}
		cur, v, err := st.load(ctx, userID)
		if err != nil {
			return presence.Effects{}, err
		}
		next, eff := fold(cur)
		if sameState(next, cur) {
			return eff, nil
		}
		item, err := encodeState(next, v+1, eff.Publish)
		if err != nil {
			return presence.Effects{}, err
		}
		in := &dynamodb.PutItemInput{TableName: aws.String(st.tables.View), Item: item,
			ConditionExpression: aws.String("attribute_not_exists(pk)"),
		}
		if v > 0 {
			in.ConditionExpression = aws.String("#v = :v")
			in.ExpressionAttributeNames = map[string]string{"#v": attrVersion}
			in.ExpressionAttributeValues = map[string]types.AttributeValue{":v": num(v)}
		}
		_, err = st.db.PutItem(ctx, in)
		switch {
		case err == nil:
			return eff, nil
		case isConflict(err):
			continue // another writer won: fold again on what it wrote
		default:
			return presence.Effects{}, awsfail.Wrap(op, err)
		}
	}
}

// StaleConnections lists live connections whose last open or activity is before cutoff
// (a scan of the user items: run it from the scheduled sweeper, not per request).
func (st *Store) StaleConnections(ctx context.Context, cutoff time.Time) ([]presence.StaleConnection, error) {
	var out []presence.StaleConnection
	err := st.scanUsers(ctx, func(s presence.State, _ int64) error {
		out = append(out, s.Stale(cutoff)...)
		return nil
	})
	return out, err
}

// PruneTombstones forgets connections closed before cutoff in every user item (each
// rewritten with a conditional write on its version; a user written meanwhile is
// compacted by its own next write) and returns how many it forgot.
func (st *Store) PruneTombstones(ctx context.Context, cutoff time.Time) (int, error) {
	pruned := 0
	err := st.scanUsers(ctx, func(s presence.State, _ int64) error {
		if _, n := s.Compact(cutoff, 0); n == 0 {
			return nil
		}
		_, err := st.mutate(ctx, s.User.ID, "prune "+s.User.ID, func(cur presence.State) (presence.State, presence.Effects) {
			next, n := cur.Compact(cutoff, 0)
			pruned += n
			return next, presence.Effects{}
		})
		return err
	})
	return pruned, err
}

// scanUsers calls fn with every user item (the core decides what to do with each).
func (st *Store) scanUsers(ctx context.Context, fn func(presence.State, int64) error) error {
	var start map[string]types.AttributeValue
	for {
		page, err := st.db.Scan(ctx, &dynamodb.ScanInput{
			TableName:                 aws.String(st.tables.View),
			FilterExpression:          aws.String("sk = :user"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":user": s(userSK)},
			ExclusiveStartKey:         start,
		})
		if err != nil {
			return awsfail.Wrap("scan user items", err)
		}
		for _, item := range page.Items {
			state, v := decodeState(str(item, "pk"), item)
			if err := fn(state, v); err != nil {
				return err
			}
		}
		if page.LastEvaluatedKey == nil {
			return nil
		}
		start = page.LastEvaluatedKey
	}
}

// CreateTables creates the two tables (for tests and local emulators; the deploy template
// creates them on AWS) and waits until they are active.
func CreateTables(ctx context.Context, db *dynamodb.Client, t Tables) error {
	str := types.ScalarAttributeTypeS
	_, err := db.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName:            aws.String(t.Events),
		AttributeDefinitions: []types.AttributeDefinition{{AttributeName: aws.String("pk"), AttributeType: str}},
		KeySchema:            []types.KeySchemaElement{{AttributeName: aws.String("pk"), KeyType: types.KeyTypeHash}},
		BillingMode:          types.BillingModePayPerRequest,
		StreamSpecification:  &types.StreamSpecification{StreamEnabled: aws.Bool(true), StreamViewType: types.StreamViewTypeNewImage},
	})
	if err != nil {
		return fmt.Errorf("create %s: %w", t.Events, err)
	}
	_, err = db.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName: aws.String(t.View),
		AttributeDefinitions: []types.AttributeDefinition{
			{AttributeName: aws.String("pk"), AttributeType: str},
			{AttributeName: aws.String("sk"), AttributeType: str},
			{AttributeName: aws.String("online"), AttributeType: str},
		},
		KeySchema: []types.KeySchemaElement{
			{AttributeName: aws.String("pk"), KeyType: types.KeyTypeHash},
			{AttributeName: aws.String("sk"), KeyType: types.KeyTypeRange},
		},
		GlobalSecondaryIndexes: []types.GlobalSecondaryIndex{{
			IndexName: aws.String(OnlineIndex),
			KeySchema: []types.KeySchemaElement{
				{AttributeName: aws.String("online"), KeyType: types.KeyTypeHash},
				{AttributeName: aws.String("pk"), KeyType: types.KeyTypeRange},
			},
			Projection: &types.Projection{ProjectionType: types.ProjectionTypeInclude,
				NonKeyAttributes: []string{"live", "lastActivity"}},
		}},
		BillingMode: types.BillingModePayPerRequest,
	})
	if err != nil {
		return fmt.Errorf("create %s: %w", t.View, err)
	}
	for _, name := range []string{t.Events, t.View} {
		waiter := dynamodb.NewTableExistsWaiter(db, func(o *dynamodb.TableExistsWaiterOptions) { o.MinDelay = 50 * time.Millisecond })
		if err := waiter.Wait(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(name)}, time.Minute); err != nil {
			return fmt.Errorf("wait for %s: %w", name, err)
		}
	}
	return nil
}
