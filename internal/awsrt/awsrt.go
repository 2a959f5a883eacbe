// Package awsrt wires the Lambda functions of the AWS runtime: it turns the settings a
// function's main reads from its environment into AWS clients, adapters and a handler.
// Nothing here reads the environment itself, except the AWS SDK's own configuration
// chain (region, credentials, AWS_ENDPOINT_URL_*).
package awsrt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/apigatewaymanagementapi"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodbstreams"
	awseventbridge "github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/bus/eventbridge"
	"github.com/wspresence/wspresence/internal/delivery"
	"github.com/wspresence/wspresence/internal/emf"
	"github.com/wspresence/wspresence/internal/gateway/apigw"
	"github.com/wspresence/wspresence/internal/grace/sqsdelay"
	"github.com/wspresence/wspresence/internal/lambda/apikey"
	"github.com/wspresence/wspresence/internal/lambda/authorizer"
	"github.com/wspresence/wspresence/internal/lambda/connection"
	"github.com/wspresence/wspresence/internal/lambda/grace"
	"github.com/wspresence/wspresence/internal/lambda/online"
	"github.com/wspresence/wspresence/internal/lambda/projector"
	"github.com/wspresence/wspresence/internal/lambda/publisher"
	"github.com/wspresence/wspresence/internal/lambda/sender"
	"github.com/wspresence/wspresence/internal/lambda/sweeper"
	"github.com/wspresence/wspresence/internal/recovery/sqshold"
	secretssm "github.com/wspresence/wspresence/internal/secret/ssm"
	"github.com/wspresence/wspresence/internal/store/dynamo"
	"github.com/wspresence/wspresence/internal/stream/ddbstreams"
	"github.com/wspresence/wspresence/internal/stream/failures"
)

// Config holds the functions' settings as their environment gives them (strings; empty
// means the default). Each constructor checks the ones it needs and reports every
// problem at once.
type Config struct {
	// EventsTable and ViewTable name the tables (EVENTS_TABLE, VIEW_TABLE).
	EventsTable, ViewTable string
	// EventBus names the EventBridge bus (EVENT_BUS_NAME).
	EventBus string
	// GraceQueueURL is the queue of the offline grace timers (GRACE_QUEUE_URL).
	GraceQueueURL string
	// GraceDeadLetterURL is that queue's dead-letter queue, which the reconciler drains
	// (GRACE_DLQ_URL).
	GraceDeadLetterURL string
	// EventRetentionDays is how long the event table keeps an event (EVENT_RETENTION_DAYS,
	// default 30, at least 2): its items expire by TTL.
	EventRetentionDays string
	// ViewStreamARN is the view table's stream, which the reconciler reads in the relay's
	// place while the relay does not run (VIEW_STREAM_ARN).
	ViewStreamARN string
	// StreamFailureQueueURL is the streams' on-failure destination, which the reconciler
	// replays (STREAM_FAILURE_QUEUE_URL).
	StreamFailureQueueURL string
	// OfflineGraceSeconds is the grace period (OFFLINE_GRACE_SECONDS, default 5).
	OfflineGraceSeconds string
	// JWTSecretParameter is the SSM parameter of the JWT secret (JWT_SECRET_PARAMETER,
	// default /WebSocketAdapter/JwtSecret).
	JWTSecretParameter string
	// JWTSecretTTL is how long the secret is cached (JWT_SECRET_TTL, default 5m).
	JWTSecretTTL string
	// JWTAlgorithms lists the accepted token algorithms, comma-separated, among HS256,
	// HS384 and HS512 (JWT_ALGORITHMS, default HS256).
	JWTAlgorithms string
	// JWTExpiryRequired is "true" (default) or "false": whether tokens must carry exp
	// (JWT_EXPIRY_REQUIRED).
	JWTExpiryRequired string
	// APIKeyParameter is the SSM SecureString parameter of the backend API key
	// (API_KEY_PARAMETER), read by the REST API-key authorizer.
	APIKeyParameter string
	// APIKeyTTL is how long the API key is cached (API_KEY_TTL, default 5m).
	APIKeyTTL string
	// WebSocketEndpoint is the Management API endpoint of the WebSocket stage,
	// https://{api-id}.execute-api.{region}.amazonaws.com/{stage} (WEBSOCKET_ENDPOINT).
	WebSocketEndpoint string
	// MaxReceives is the queue's maxReceiveCount (MAX_RECEIVES, default 5).
	MaxReceives string
	// OnlineShards is the number of keys the online index is written under
	// (ONLINE_SHARDS, default 10; lists read the highest count ever written with).
	OnlineShards string
	// ReconcileLimit bounds the users one reconciler run repairs (RECONCILE_LIMIT,
	// default 1000).
	ReconcileLimit string
	// MaxConnectionsPerUser caps a user's live connections at $connect
	// (MAX_CONNECTIONS_PER_USER, default 10, as the local runtime's).
	MaxConnectionsPerUser string
	// RecoveryWindowSeconds is how long messages are kept for recovering clients
	// (RECOVERY_WINDOW_SECONDS, default 120, at most 900: the held messages' timer is an
	// SQS delay; 0 keeps none).
	RecoveryWindowSeconds string
	// HeldQueueURL and HeldQueueARN are the queue of the held messages' timers
	// (HELD_QUEUE_URL, HELD_QUEUE_ARN): the sender sends them and consumes them.
	HeldQueueURL, HeldQueueARN string
}

// Namespace is the CloudWatch namespace of the functions' embedded metrics.
const Namespace = "wspresence"

// metricsOut receives the functions' embedded metric records (Lambda ships stdout to
// CloudWatch Logs, which extracts them).
var metricsOut = emf.New(os.Stdout, Namespace)

// DefaultJWTSecretParameter is the original service's parameter name.
const DefaultJWTSecretParameter = "/WebSocketAdapter/JwtSecret"

// Start wires a function with newHandler from c, then runs the Lambda runtime loop with
// the handler method handle; a function that cannot be wired logs why and exits.
func Start[H, TIn, TOut any](newHandler func(context.Context, Config, *slog.Logger) (H, error), c Config,
	handle func(H, context.Context, TIn) (TOut, error)) {
	log := Logger()
	h, err := newHandler(context.Background(), c, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		os.Exit(1)
	}
	lambda.StartHandlerFunc(func(ctx context.Context, in TIn) (TOut, error) { return handle(h, ctx, in) })
}

// Logger returns the functions' logger (log/slog), with the Lambda request id on every
// record; it writes JSON when the function's log format is JSON (AWS_LAMBDA_LOG_FORMAT,
// which Lambda sets from the function's LoggingConfig).
func Logger() *slog.Logger { return lambdacontext.NewLogger() }

type checker struct{ errs []error }

func (c *checker) need(name, v string) string {
	if v == "" {
		c.errs = append(c.errs, fmt.Errorf("%s is required", name))
	}
	return v
}

func (c *checker) duration(name, v string, def time.Duration) time.Duration {
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		c.errs = append(c.errs, fmt.Errorf("%s=%q: want a positive duration such as 30s", name, v))
	}
	return d
}

func (c *checker) integer(name, v string, def int) int {
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		c.errs = append(c.errs, fmt.Errorf("%s=%q: want a non-negative integer", name, v))
	}
	return n
}

func (c *checker) add(name string, err error) {
	if err != nil {
		c.errs = append(c.errs, fmt.Errorf("%s: %w", name, err))
	}
}

func (c *checker) boolean(name, v string, def bool) bool {
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		c.errs = append(c.errs, fmt.Errorf("%s=%q: want true or false", name, v))
		return def
	}
	return b
}

func (c *checker) err() error {
	if len(c.errs) == 0 {
		return nil
	}
	return fmt.Errorf("invalid configuration: %w", errors.Join(c.errs...))
}

func load(ctx context.Context) (aws.Config, error) {
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return cfg, fmt.Errorf("load AWS configuration: %w", err)
	}
	return cfg, nil
}

func (c Config) store(ck *checker, awsCfg aws.Config) *dynamo.Store {
	st := dynamo.New(dynamodb.NewFromConfig(awsCfg), dynamo.Tables{
		Events: ck.need("EVENTS_TABLE", c.EventsTable), View: ck.need("VIEW_TABLE", c.ViewTable)})
	st.OnlineShards = c.onlineShards(ck)
	days := ck.integer("EVENT_RETENTION_DAYS", c.EventRetentionDays, dynamo.DefaultEventRetentionDays)
	if days < dynamo.MinEventRetentionDays {
		ck.errs = append(ck.errs, fmt.Errorf("EVENT_RETENTION_DAYS=%q: at least %d", c.EventRetentionDays, dynamo.MinEventRetentionDays))
	}
	st.EventRetention = time.Duration(days) * 24 * time.Hour
	return st
}

func (c Config) onlineShards(ck *checker) int {
	n := ck.integer("ONLINE_SHARDS", c.OnlineShards, dynamo.DefaultOnlineShards)
	if n < 1 || n > 100 {
		ck.errs = append(ck.errs, fmt.Errorf("ONLINE_SHARDS=%q: from 1 to 100", c.OnlineShards))
	}
	return n
}

// folding is a store that folds events through the core: it needs the grace period,
// which the offline-grace timer bounds (grace.MaxGraceSeconds).
func (c Config) folding(ck *checker, awsCfg aws.Config) *dynamo.Store {
	st := c.store(ck, awsCfg)
	c.setGrace(ck, st)
	return st
}

func (c Config) setGrace(ck *checker, st *dynamo.Store) {
	secs := ck.integer("OFFLINE_GRACE_SECONDS", c.OfflineGraceSeconds, 5)
	if secs > grace.MaxGraceSeconds {
		ck.errs = append(ck.errs, fmt.Errorf("OFFLINE_GRACE_SECONDS=%d: at most %d (the grace timer's bound)", secs, grace.MaxGraceSeconds))
	}
	st.Grace = time.Duration(secs) * time.Second
}

// viewWriter is a store that writes user items of the view table only (the outbox relay,
// the grace timer): it needs the grace period, which places an item in the repair index.
func (c Config) viewWriter(ck *checker, awsCfg aws.Config) *dynamo.Store {
	st := dynamo.New(dynamodb.NewFromConfig(awsCfg), dynamo.Tables{View: ck.need("VIEW_TABLE", c.ViewTable)})
	st.OnlineShards = c.onlineShards(ck)
	c.setGrace(ck, st)
	return st
}

// view is a store that only reads the view table.
func (c Config) view(ck *checker, awsCfg aws.Config) *dynamo.Store {
	st := dynamo.New(dynamodb.NewFromConfig(awsCfg), dynamo.Tables{View: ck.need("VIEW_TABLE", c.ViewTable)})
	st.OnlineShards = c.onlineShards(ck)
	return st
}

// recoveryWindow reads the recovery window and sets it on st.
func (c Config) recoveryWindow(ck *checker, st *dynamo.Store) time.Duration {
	secs := ck.integer("RECOVERY_WINDOW_SECONDS", c.RecoveryWindowSeconds, 120)
	if w := time.Duration(secs) * time.Second; w > sqshold.MaxWindow {
		ck.errs = append(ck.errs, fmt.Errorf("RECOVERY_WINDOW_SECONDS=%d: at most %d (the held messages' timer is an SQS delay)", secs, int(sqshold.MaxWindow/time.Second)))
	}
	st.RecoveryWindow = time.Duration(secs) * time.Second
	return st.RecoveryWindow
}

func (c Config) gateway(ck *checker, awsCfg aws.Config) *apigw.Gateway {
	endpoint := ck.need("WEBSOCKET_ENDPOINT", c.WebSocketEndpoint)
	return apigw.New(apigatewaymanagementapi.NewFromConfig(awsCfg, func(o *apigatewaymanagementapi.Options) {
		o.BaseEndpoint = aws.String(endpoint)
		o.RetryMaxAttempts = 1 // the gateway retries throttling itself, with jitter
	}))
}

func (c Config) publisher(ck *checker, awsCfg aws.Config) *eventbridge.Publisher {
	client := awseventbridge.NewFromConfig(awsCfg, func(o *awseventbridge.Options) {
		o.RetryMaxAttempts = 1 // the publisher resends failed entries itself
	})
	return eventbridge.New(client, ck.need("EVENT_BUS_NAME", c.EventBus))
}

// NewAuthorizer wires the WebSocket REQUEST authorizer.
func NewAuthorizer(ctx context.Context, c Config, log *slog.Logger) (*authorizer.Handler, error) {
	var ck checker
	param := c.JWTSecretParameter
	if param == "" {
		param = DefaultJWTSecretParameter
	}
	ttl := ck.duration("JWT_SECRET_TTL", c.JWTSecretTTL, 5*time.Minute)
	policy := auth.DefaultPolicy()
	if c.JWTAlgorithms != "" {
		algs, err := auth.ParseAlgorithms(c.JWTAlgorithms)
		ck.add("JWT_ALGORITHMS", err)
		policy.Algorithms = algs
	}
	policy.ExpiryOptional = !ck.boolean("JWT_EXPIRY_REQUIRED", c.JWTExpiryRequired, true)
	if err := ck.err(); err != nil {
		return nil, err
	}
	awsCfg, err := load(ctx)
	if err != nil {
		return nil, err
	}
	return &authorizer.Handler{Secrets: secretssm.New(ssm.NewFromConfig(awsCfg), param, ttl),
		Policy: policy, Logger: log, Metrics: metricsOut}, nil
}

// NewAPIKeyAuthorizer wires the HTTP API's Lambda authorizer of the API-key REST auth mode.
func NewAPIKeyAuthorizer(ctx context.Context, c Config, log *slog.Logger) (*apikey.Handler, error) {
	var ck checker
	param := ck.need("API_KEY_PARAMETER", c.APIKeyParameter)
	ttl := ck.duration("API_KEY_TTL", c.APIKeyTTL, 5*time.Minute)
	if err := ck.err(); err != nil {
		return nil, err
	}
	awsCfg, err := load(ctx)
	if err != nil {
		return nil, err
	}
	return &apikey.Handler{Keys: secretssm.New(ssm.NewFromConfig(awsCfg), param, ttl), Logger: log, Metrics: metricsOut}, nil
}

// NewConnection wires the $connect and $disconnect handlers.
func NewConnection(ctx context.Context, c Config, log *slog.Logger) (*connection.Handler, error) {
	awsCfg, err := load(ctx)
	if err != nil {
		return nil, err
	}
	var ck checker
	st := c.folding(&ck, awsCfg)
	rec := &connection.Recovery{Streams: st, Connections: st, Poster: c.gateway(&ck, awsCfg), Log: closer{st},
		Publisher: c.publisher(&ck, awsCfg), Window: c.recoveryWindow(&ck, st)}
	return &connection.Handler{Log: st, Owners: st, View: st, Logger: log, Metrics: metricsOut, Recovery: rec,
		MaxConnectionsPerUser: ck.integer("MAX_CONNECTIONS_PER_USER", c.MaxConnectionsPerUser, 10)}, ck.err()
}

// NewDisconnect wires the $disconnect handler (it appends; the projector folds).
func NewDisconnect(ctx context.Context, c Config, log *slog.Logger) (*connection.Handler, error) {
	awsCfg, err := load(ctx)
	if err != nil {
		return nil, err
	}
	var ck checker
	st := c.store(&ck, awsCfg)
	return &connection.Handler{Log: st, Owners: st, Logger: log, Metrics: metricsOut}, ck.err()
}

// NewProjector wires the stream handler.
func NewProjector(ctx context.Context, c Config, log *slog.Logger) (*projector.Handler, error) {
	awsCfg, err := load(ctx)
	if err != nil {
		return nil, err
	}
	var ck checker
	st := c.folding(&ck, awsCfg)
	h := &projector.Handler{
		View:    st,
		Grace:   sqsdelay.New(sqs.NewFromConfig(awsCfg), ck.need("GRACE_QUEUE_URL", c.GraceQueueURL), st.Grace),
		Logger:  log,
		Metrics: metricsOut,
	}
	return h, ck.err()
}

// NewPublisher wires the outbox relay of the view table's stream.
func NewPublisher(ctx context.Context, c Config, log *slog.Logger) (*publisher.Handler, error) {
	awsCfg, err := load(ctx)
	if err != nil {
		return nil, err
	}
	var ck checker
	st := c.viewWriter(&ck, awsCfg)
	return &publisher.Handler{Publisher: c.publisher(&ck, awsCfg), Sticker: st, Probes: st, Logger: log, Metrics: metricsOut}, ck.err()
}

// NewGrace wires the end of an offline grace period, fed by the grace timers' queue.
func NewGrace(ctx context.Context, c Config, log *slog.Logger) (*grace.Handler, error) {
	awsCfg, err := load(ctx)
	if err != nil {
		return nil, err
	}
	var ck checker
	st := c.viewWriter(&ck, awsCfg)
	timers := sqsdelay.New(sqs.NewFromConfig(awsCfg), ck.need("GRACE_QUEUE_URL", c.GraceQueueURL), st.Grace)
	return &grace.Handler{View: st, Grace: st.Grace, Timers: timers, Now: time.Now, Logger: log}, ck.err()
}

// NewSender wires the SQS handler.
func NewSender(ctx context.Context, c Config, log *slog.Logger) (*sender.Handler, error) {
	awsCfg, err := load(ctx)
	if err != nil {
		return nil, err
	}
	var ck checker
	st := c.folding(&ck, awsCfg)
	gw := c.gateway(&ck, awsCfg)
	window := c.recoveryWindow(&ck, st)
	h := &sender.Handler{
		Deliverer: &delivery.Deliverer{Connections: st, Poster: gw, Log: closer{st}, Logger: log},
		Recovery: &sender.Recovery{Streams: st, Connections: st, Poster: gw, Log: closer{st}, Window: window,
			Timers:        sqshold.New(sqs.NewFromConfig(awsCfg), ck.need("HELD_QUEUE_URL", c.HeldQueueURL), window),
			TimerQueueARN: ck.need("HELD_QUEUE_ARN", c.HeldQueueARN)},
		Publisher:   c.publisher(&ck, awsCfg),
		Receipts:    st,
		MaxReceives: ck.integer("MAX_RECEIVES", c.MaxReceives, 5),
		Logger:      log,
		Metrics:     metricsOut,
	}
	return h, ck.err()
}

// NewOnline wires the GET /user/online handler.
func NewOnline(ctx context.Context, c Config, log *slog.Logger) (*online.Handler, error) {
	awsCfg, err := load(ctx)
	if err != nil {
		return nil, err
	}
	var ck checker
	return &online.Handler{View: c.view(&ck, awsCfg), Logger: log}, ck.err()
}

// closer records the connections a post found gone and folds their closes at once
// (dynamo.Store.Close), so a close whose stream record is lost is not left unfolded.
type closer struct{ st *dynamo.Store }

func (c closer) Append(ctx context.Context, evs ...events.ConnectionEvent) (int, error) {
	for i, e := range evs {
		if _, err := c.st.Close(ctx, e.UserID, e.ConnectionID, e.At, e.Reason); err != nil {
			return i, err
		}
	}
	return len(evs), nil
}

// NewSweeper wires the scheduled reconciler.
func NewSweeper(ctx context.Context, c Config, log *slog.Logger) (*sweeper.Handler, error) {
	awsCfg, err := load(ctx)
	if err != nil {
		return nil, err
	}
	var ck checker
	st := c.folding(&ck, awsCfg)
	h := &sweeper.Handler{
		View: st, Log: st, Gateway: c.gateway(&ck, awsCfg), Publisher: c.publisher(&ck, awsCfg),
		DeadTimers: sqsdelay.NewDeadLetters(sqs.NewFromConfig(awsCfg), ck.need("GRACE_DLQ_URL", c.GraceDeadLetterURL)),
		Failures:   failures.New(sqs.NewFromConfig(awsCfg), ck.need("STREAM_FAILURE_QUEUE_URL", c.StreamFailureQueueURL)),
		Streams:    ddbstreams.New(dynamodbstreams.NewFromConfig(awsCfg)),
		ViewStream: ck.need("VIEW_STREAM_ARN", c.ViewStreamARN),
		Grace:      st.Grace, GraceMargin: dynamo.DefaultGraceMargin, StaleAfter: dynamo.DefaultStaleAfter,
		OutboxAge: dynamo.DefaultOutboxAge, Retention: dynamo.DefaultTombstoneRetention,
		Limit: ck.integer("RECONCILE_LIMIT", c.ReconcileLimit, 1000),
		Now:   time.Now, Logger: log, Metrics: metricsOut,
	}
	if h.Limit < 1 {
		ck.errs = append(ck.errs, fmt.Errorf("RECONCILE_LIMIT=%q: at least 1", c.ReconcileLimit))
	}
	return h, ck.err()
}
