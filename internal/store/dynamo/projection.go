package dynamo

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
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

// Defaults of the store's settings.
const (
	// DefaultTombstoneRetention is how long a closed connection is remembered: the event
	// table's stream keeps records 24 hours, so no reordered record of it arrives later.
	DefaultTombstoneRetention = 24 * time.Hour
	// DefaultMaxTombstones caps the closed connections a user item remembers, so a client
	// in a reconnect loop cannot grow its item toward DynamoDB's 400 KB limit (200 closed
	// connections take about 20 KB).
	DefaultMaxTombstones = 200
	// DefaultStaleAfter is how long a live connection may go unseen (no open, activity or
	// confirmation by the gateway) before the reconciler looks at it. API Gateway closes a
	// connection idle for 10 minutes, so one unseen for 15 has lost its $disconnect or its
	// close's record.
	DefaultStaleAfter = 15 * time.Minute
	// DefaultGraceMargin is how long past its deadline a grace period may stay pending
	// before the reconciler ends it (its timer was lost).
	DefaultGraceMargin = time.Minute
	// DefaultOutboxAge is how long a transition may stay unpublished before the reconciler
	// publishes it (the stream's relay gave up, or its record expired).
	DefaultOutboxAge = 10 * time.Minute
	// DefaultOnlineShards is the number of keys the online index is written under.
	DefaultOnlineShards = 10
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
	return st.mutate(ctx, e.UserID, "apply "+e.Key(), func(r record) (record, presence.Effects, error) {
		next, eff := st.fold(r.state, e)
		r.state = next
		return r, eff, nil
	})
}

func (st *Store) fold(s presence.State, e events.ConnectionEvent) (presence.State, presence.Effects) {
	next, eff := s.Apply(e, st.Grace)
	next, _ = next.Compact(e.At.Add(-st.retention()), st.maxTombstones())
	if sameState(next, s) && e.Type == events.TypeConnectionClosed && s.User.GracePending() && s.User.OfflineSince.Equal(e.At) {
		eff.GraceStarted = true
	}
	return next, eff
}

// Admit folds the open e into its user's state unless the user already holds max live
// connections (presence.State.Admit), in the same versioned write as Apply: of
// simultaneous opens at max-1, one is admitted. A refusal writes nothing and wraps
// presence.ErrConnectionCap. Connections not seen for StaleAfter are not counted, unless
// the user's activity register shows the user active since then (activity is recorded
// per user): then every live connection counts.
func (st *Store) Admit(ctx context.Context, e events.ConnectionEvent, max int) (presence.Effects, error) {
	if err := e.Validate(); err != nil {
		return presence.Effects{}, err
	}
	knownSince := e.At.Add(-st.staleAfter())
	for registerRead := false; ; registerRead = true {
		eff, err := st.mutate(ctx, e.UserID, "admit "+e.Key(), func(r record) (record, presence.Effects, error) {
			if _, _, err := r.state.Admit(e, max, knownSince, st.Grace); err != nil {
				return r, presence.Effects{}, err
			}
			next, eff := st.fold(r.state, e)
			r.state = next
			return r, eff, nil
		})
		if !errors.Is(err, presence.ErrConnectionCap) || registerRead {
			return eff, err
		}
		act, aerr := st.activity(ctx, []string{e.UserID})
		if aerr != nil {
			return presence.Effects{}, aerr
		}
		if a := act[e.UserID]; a.Before(knownSince) {
			return eff, err
		}
		knownSince = time.Time{}
	}
}

// ExpireGrace runs the grace timer of the period that began at since, at now
// (presence.State.ExpireGrace), and records the UserOffline it decides in the same
// conditional write. A timer of an older period, or a second run, changes nothing.
func (st *Store) ExpireGrace(ctx context.Context, userID string, since, now time.Time) (presence.Effects, error) {
	return st.mutate(ctx, userID, "expire grace of "+userID, func(r record) (record, presence.Effects, error) {
		next, eff := r.state.ExpireGrace(since, now, st.Grace)
		r.state = next
		return r, eff, nil
	})
}

// LoggedClose returns the ConnectionClosed of a connection the log holds (ok false when
// it holds none), read consistently from the event table.
func (st *Store) LoggedClose(ctx context.Context, connectionID string) (events.ConnectionEvent, bool, error) {
	key := events.Closed("", connectionID, time.Time{}, events.ReasonClient).Key()
	out, err := st.db.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: aws.String(st.tables.Events), Key: map[string]types.AttributeValue{"pk": s(key)}, ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return events.ConnectionEvent{}, false, awsfail.Wrap("read close of "+connectionID, err)
	}
	if out.Item == nil {
		return events.ConnectionEvent{}, false, nil
	}
	e, err := EventOf(out.Item)
	if err != nil {
		return events.ConnectionEvent{}, false, fmt.Errorf("close of %s: %w", connectionID, err)
	}
	return e, true, nil
}

// EventOf reads an event table item back into its event.
func EventOf(item map[string]types.AttributeValue) (events.ConnectionEvent, error) {
	at, err := time.Parse(time.RFC3339Nano, str(item, "at"))
	if err != nil {
		return events.ConnectionEvent{}, fmt.Errorf("%w: at: %w", events.ErrInvalidEvent, err)
	}
	e := events.ConnectionEvent{Type: events.Type(str(item, "type")), UserID: str(item, "userId"),
		ConnectionID: str(item, "connectionId"), At: at.UTC(), SourceIP: str(item, "sourceIp"),
		UserAgent: str(item, "userAgent"), Reason: events.CloseReason(str(item, "reason"))}
	return e, e.Validate()
}

// Close records that a connection closed and folds it at once: it appends
// ConnectionClosed (skipped if the log already holds the connection's close), then folds
// the close the log holds, the one just appended or the earlier one, never a second one.
// A close whose stream record was lost is repaired this way.
func (st *Store) Close(ctx context.Context, userID, connectionID string, at time.Time, reason events.CloseReason) (presence.Effects, error) {
	e := events.Closed(userID, connectionID, at, reason)
	n, err := st.Append(ctx, e)
	if err != nil {
		return presence.Effects{}, err
	}
	if n == 0 {
		logged, ok, err := st.LoggedClose(ctx, connectionID)
		if err != nil {
			return presence.Effects{}, err
		}
		if ok && logged.UserID == userID {
			e = logged
		}
	}
	return st.Apply(ctx, e)
}

// Pending reads a user item for the reconciler (a consistent read).
func (st *Store) Pending(ctx context.Context, userID string) (presence.Record, error) {
	r, err := st.load(ctx, userID)
	if err != nil {
		return presence.Record{}, err
	}
	p := presence.Record{State: r.state}
	for _, e := range r.outbox {
		if e.stuck {
			p.Outbox = append(p.Outbox, presence.Unpublished{Event: e.event, RecordedAt: e.at})
		}
	}
	return p, nil
}

// MarkPublished removes the given stuck transitions from the user's outbox (a versioned
// write; ids no longer there are ignored, so marking twice is harmless).
func (st *Store) MarkPublished(ctx context.Context, userID string, ids ...string) error {
	_, err := st.mutate(ctx, userID, "mark published of "+userID, func(r record) (record, presence.Effects, error) {
		r.outbox = slices.DeleteFunc(slices.Clone(r.outbox), func(e entry) bool { return slices.Contains(ids, e.event.EventID) })
		return r, presence.Effects{}, nil
	})
	return err
}

// Stick keeps transitions the relay could not publish in the user's outbox, stuck, so
// they outlive the stream's record: the reconciler publishes them past the outbox age
// (with their ids) and removes them. Sticking one already there changes nothing.
func (st *Store) Stick(ctx context.Context, userID string, evs ...events.Published) error {
	_, err := st.mutate(ctx, userID, "stick outbox of "+userID, func(r record) (record, presence.Effects, error) {
		r.outbox = slices.Clone(r.outbox)
		for _, p := range evs {
			stored, err := events.Store(p)
			if err != nil {
				return r, presence.Effects{}, err
			}
			i := slices.IndexFunc(r.outbox, func(e entry) bool { return e.event.EventID == stored.EventID })
			switch {
			case i < 0:
				r.outbox = append(r.outbox, entry{event: stored, version: r.version, at: st.now(), stuck: true})
			case !r.outbox[i].stuck:
				r.outbox[i].stuck, r.outbox[i].at = true, st.now()
			}
		}
		return r, presence.Effects{}, nil
	})
	return err
}

// FlagGrace records that the timer of the user's pending grace period could not be
// started: the item enters the repair index at the period's deadline plus the margin, and
// the reconciler ends the period then. A user with no pending period is left alone.
func (st *Store) FlagGrace(ctx context.Context, userID string) error {
	_, err := st.mutate(ctx, userID, "flag grace of "+userID, func(r record) (record, presence.Effects, error) {
		if u := r.state.User; u.GracePending() {
			r.graceFlag = u.OfflineSince
		}
		return r, presence.Effects{}, nil
	})
	return err
}

// Compact forgets the user's connections closed before cutoff (no reordered record of
// them can arrive any more).
func (st *Store) Compact(ctx context.Context, userID string, cutoff time.Time) (int, error) {
	forgot := 0
	_, err := st.mutate(ctx, userID, "compact "+userID, func(r record) (record, presence.Effects, error) {
		r.state, forgot = r.state.Compact(cutoff, 0)
		return r, presence.Effects{}, nil
	})
	return forgot, err
}

// sameState reports whether a and b are stored as the same item (times compare as
// instants, whatever their location).
func sameState(a, b presence.State) bool {
	return reflect.DeepEqual(encodeState(a, 0), encodeState(b, 0))
}

func (st *Store) retention() time.Duration {
	return or(st.TombstoneRetention, DefaultTombstoneRetention)
}
func (st *Store) staleAfter() time.Duration  { return or(st.StaleAfter, DefaultStaleAfter) }
func (st *Store) graceMargin() time.Duration { return or(st.GraceMargin, DefaultGraceMargin) }
func (st *Store) outboxAge() time.Duration   { return or(st.OutboxAge, DefaultOutboxAge) }

func or(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func (st *Store) onlineShards() int {
	if st.OnlineShards > 0 {
		return st.OnlineShards
	}
	return DefaultOnlineShards
}

func (st *Store) maxTombstones() int {
	if st.MaxTombstones > 0 {
		return st.MaxTombstones
	}
	return DefaultMaxTombstones
}

func (st *Store) now() time.Time {
	if st.Now != nil {
		return st.Now()
	}
	return time.Now()
}

// due is when the reconciler must look at r (zero: never, the item is not in the repair
// index): a flagged grace period still pending, at its deadline plus the margin, and a
// stuck transition, at its recording plus the outbox age. Only failures put an item
// there; the happy path never writes the index.
func (st *Store) due(r record) time.Time {
	var due time.Time
	earlier := func(t time.Time) {
		if due.IsZero() || t.Before(due) {
			due = t
		}
	}
	if u := r.state.User; u.GracePending() && !r.graceFlag.IsZero() {
		earlier(u.GraceDeadline(st.Grace).Add(st.graceMargin()))
	}
	for _, e := range r.outbox {
		if e.stuck {
			earlier(e.at.Add(st.outboxAge()))
		}
	}
	return due
}

// State reads a user's state (a consistent read; the empty state of a user never seen).
func (st *Store) State(ctx context.Context, userID string) (presence.State, error) {
	r, err := st.load(ctx, userID)
	return r.state, err
}

func (st *Store) load(ctx context.Context, userID string) (record, error) {
	out, err := st.db.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(st.tables.View), Key: userKey(userID), ConsistentRead: aws.Bool(true)})
	if err != nil {
		return record{}, awsfail.Wrap("read user "+userID, err)
	}
	return decode(userID, out.Item), nil
}

// mutate loads the user's item, runs fold on it and, when the item changed, writes it
// back if its version is still the one read, retrying the whole step on a conflict. The
// write records fold's transitions in the item's outbox and places the item in the repair
// index. An error of fold is returned as it is, with nothing written.
func (st *Store) mutate(ctx context.Context, userID, op string, fold func(record) (record, presence.Effects, error)) (presence.Effects, error) {
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if attempt > maxRetries {
				return presence.Effects{}, fmt.Errorf("%s: %d conflicting writes in a row: %w", op, maxRetries, failure.ErrThrottled)
			}
			if err := retry.Sleep(ctx, retry.Backoff(5*time.Millisecond, attempt)); err != nil {
				return presence.Effects{}, err
			}
		}
		cur, err := st.load(ctx, userID)
		if err != nil {
			return presence.Effects{}, err
		}
		next, eff, err := fold(cur)
		if err != nil {
			return presence.Effects{}, err
		}
		next.version = cur.version + 1
		// The transitions of earlier writes travel in those writes' stream records; only
		// the stuck ones stay, until published.
		next.outbox = slices.DeleteFunc(slices.Clone(next.outbox), func(e entry) bool { return !e.stuck })
		if u := next.state.User; !next.graceFlag.IsZero() && (!u.GracePending() || !u.OfflineSince.Equal(next.graceFlag)) {
			next.graceFlag = time.Time{}
		}
		if len(eff.Publish) > 0 {
			now := st.now()
			next.outbox = slices.Clone(next.outbox)
			for _, p := range eff.Publish {
				stored, err := events.Store(p)
				if err != nil {
					return presence.Effects{}, err
				}
				next.outbox = append(next.outbox, entry{event: stored, version: next.version, at: now})
			}
		}
		item := encode(next, st.due(next), st.onlineShards())
		if _, online := item["online"]; online {
			if err := st.recordShards(ctx); err != nil {
				return presence.Effects{}, err
			}
		}
		unchanged := cur
		unchanged.version = next.version
		unchanged.outbox = slices.DeleteFunc(slices.Clone(cur.outbox), func(e entry) bool { return !e.stuck })
		if len(eff.Publish) == 0 && reflect.DeepEqual(item, encode(unchanged, st.due(unchanged), st.onlineShards())) {
			return eff, nil
		}
		in := &dynamodb.PutItemInput{TableName: aws.String(st.tables.View), Item: item,
			ConditionExpression: aws.String("attribute_not_exists(pk)"),
		}
		if cur.version > 0 {
			in.ConditionExpression = aws.String("#v = :v")
			in.ExpressionAttributeNames = map[string]string{"#v": attrVersion}
			in.ExpressionAttributeValues = map[string]types.AttributeValue{":v": num(cur.version)}
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

// Due lists the users the reconciler must look at by now, earliest first, at most limit:
// a query of each shard of the repair index (never a scan). Users it repairs leave the
// index or move later in it, so the next call resumes where this one's work ends.
func (st *Store) Due(ctx context.Context, now time.Time, limit int) ([]string, error) {
	type due struct {
		user string
		at   time.Time
	}
	var all []due
	for shard := range RepairShards {
		var start map[string]types.AttributeValue
		got := 0
		for got < limit {
			page, err := st.dueShard(ctx, shard, now, limit-got, start)
			if err != nil {
				return nil, err
			}
			for _, item := range page.Items {
				if str(item, "sk") == userSK {
					all = append(all, due{user: str(item, "pk"), at: tm(item, attrDue)})
					got++
				}
			}
			if page.LastEvaluatedKey == nil {
				break
			}
			start = page.LastEvaluatedKey
		}
	}
	sort.Slice(all, func(i, j int) bool {
		if !all[i].at.Equal(all[j].at) {
			return all[i].at.Before(all[j].at)
		}
		return all[i].user < all[j].user
	})
	out := make([]string, 0, min(limit, len(all)))
	for _, d := range all[:min(limit, len(all))] {
		out = append(out, d.user)
	}
	return out, nil
}

// dueShard queries one shard of the repair index for at most limit entries due by now,
// earliest first, from start.
func (st *Store) dueShard(ctx context.Context, shard int, now time.Time, limit int, start map[string]types.AttributeValue) (*dynamodb.QueryOutput, error) {
	page, err := st.db.Query(ctx, &dynamodb.QueryInput{
		TableName:                 aws.String(st.tables.View),
		IndexName:                 aws.String(RepairIndex),
		KeyConditionExpression:    aws.String("#rs = :rs AND #due <= :now"),
		ExpressionAttributeNames:  map[string]string{"#rs": attrShard, "#due": attrDue},
		ExpressionAttributeValues: map[string]types.AttributeValue{":rs": s(strconv.Itoa(shard)), ":now": n(now)},
		Limit:                     aws.Int32(int32(min(limit, math.MaxInt32))),
		ExclusiveStartKey:         start,
	})
	if err != nil {
		return nil, awsfail.Wrap("query the repair index", err)
	}
	return page, nil
}

// OldestDue returns the earliest due time of the repair index not after now (zero when
// nothing is due): one query of each shard, its first entry.
func (st *Store) OldestDue(ctx context.Context, now time.Time) (time.Time, error) {
	var oldest time.Time
	for shard := range RepairShards {
		page, err := st.dueShard(ctx, shard, now, 1, nil)
		if err != nil {
			return time.Time{}, err
		}
		for _, item := range page.Items {
			if due := tm(item, attrDue); oldest.IsZero() || due.Before(oldest) {
				oldest = due
			}
		}
	}
	return oldest, nil
}

// PruneTombstones forgets connections closed before cutoff in the items of the users online
// and of those in the repair index, and returns how many it forgot: it reads the two
// indexes, never the whole table. An offline user's tombstones are compacted by the user's
// next write (at most MaxTombstones remain meanwhile).
func (st *Store) PruneTombstones(ctx context.Context, cutoff time.Time) (int, error) {
	users, err := st.Due(ctx, time.Unix(0, math.MaxInt64), math.MaxInt32)
	if err != nil {
		return 0, err
	}
	for after := ""; ; {
		page, err := st.OnlineUsers(ctx, after, 1000) // every shard ever written
		if err != nil {
			return 0, err
		}
		for _, u := range page {
			users = append(users, u.UserID)
		}
		if len(page) < 1000 {
			break
		}
		after = page[len(page)-1].UserID
	}
	slices.Sort(users)
	pruned := 0
	for _, u := range slices.Compact(users) {
		n, err := st.Compact(ctx, u, cutoff)
		pruned += n
		if err != nil {
			return pruned, err
		}
	}
	return pruned, nil
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
			{AttributeName: aws.String(attrShard), AttributeType: str},
			{AttributeName: aws.String(attrDue), AttributeType: types.ScalarAttributeTypeN},
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
		}, {
			IndexName: aws.String(RepairIndex),
			KeySchema: []types.KeySchemaElement{
				{AttributeName: aws.String(attrShard), KeyType: types.KeyTypeHash},
				{AttributeName: aws.String(attrDue), KeyType: types.KeyTypeRange},
			},
			Projection: &types.Projection{ProjectionType: types.ProjectionTypeKeysOnly},
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
