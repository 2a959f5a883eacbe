package localrt

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/wspresence/wspresence/internal/auth"
)

// Config configures the local runtime. DefaultConfig gives the documented defaults; every
// field can be set by a flag of `wspresence serve` or a WSPRESENCE_* environment variable.
type Config struct {
	// Addr is the listen address (WSPRESENCE_ADDR, default 127.0.0.1:8080). Port 0 picks one.
	Addr string
	// DataDir holds the store, the generated secrets and the lock (WSPRESENCE_DATA,
	// default ./wspresence-data).
	DataDir string
	// OfflineGrace is how long a user must stay without connections before UserOffline
	// (WSPRESENCE_OFFLINE_GRACE, default 5s).
	OfflineGrace time.Duration
	// JWTSecret signs user tokens (WSPRESENCE_JWT_SECRET); generated and kept in DataDir
	// when empty.
	JWTSecret string
	// JWTAlgorithms lists the accepted token algorithms among HS256, HS384 and HS512
	// (WSPRESENCE_JWT_ALGORITHMS, comma-separated, default HS256). "none" and asymmetric
	// algorithms are never accepted.
	JWTAlgorithms []string
	// JWTRequireExpiry refuses tokens without exp (WSPRESENCE_JWT_REQUIRE_EXP, default
	// true); false accepts the original service's tokens that never expire.
	JWTRequireExpiry bool
	// APIKey guards the backend endpoints (WSPRESENCE_API_KEY); generated and kept in
	// DataDir when empty.
	APIKey string
	// MaxConnectionsPerUser caps a user's simultaneous connections
	// (WSPRESENCE_MAX_CONNECTIONS_PER_USER, default 10).
	MaxConnectionsPerUser int
	// PingInterval is how often the server pings each connection
	// (WSPRESENCE_PING_INTERVAL, default 30s); a ping unanswered within PingInterval
	// closes the connection as expired.
	PingInterval time.Duration
	// IdleTimeout closes a connection that sent nothing for that long, as API Gateway does
	// (WSPRESENCE_IDLE_TIMEOUT, default 10m).
	IdleTimeout time.Duration
	// ActivityInterval throttles ActivityRecorded to one per connection per interval
	// (WSPRESENCE_ACTIVITY_INTERVAL, default 30s).
	ActivityInterval time.Duration
	// SendQueue is how many frames may wait for a slow reader; when full the connection is
	// closed (1013) as expired, so one slow client never stalls delivery to the others
	// (WSPRESENCE_SEND_QUEUE, default 256).
	SendQueue int
	// BodyBudget bounds the bytes of request bodies read at once by POST /messages and the
	// queue protocol (WSPRESENCE_BODY_BUDGET, default 64 MiB): a request that would pass
	// it gets 503 with Retry-After before its body is read, so hostile volume cannot
	// exhaust the memory.
	BodyBudget int64
	// StoreReserve is the size of the reserve file kept beside the store, given back when
	// its filesystem is full so the store can checkpoint and start, retaken when space
	// returns (sqlite.Options.Reserve): 0 for a 32nd of the filesystem (1 to 16 MiB),
	// negative for none.
	StoreReserve int64
	// WriteTimeout bounds one frame's write (WSPRESENCE_WRITE_TIMEOUT, default 10s).
	WriteTimeout time.Duration
	// InboundRate and InboundBurst limit the frames a client may send per second; past
	// them the connection is closed (1008) as expired (WSPRESENCE_INBOUND_RATE, default 20;
	// WSPRESENCE_INBOUND_BURST, default 40).
	InboundRate  float64
	InboundBurst int
	// ShutdownTimeout bounds the graceful shutdown (WSPRESENCE_SHUTDOWN_TIMEOUT, default 10s).
	ShutdownTimeout time.Duration
	// TombstoneRetention is how long closed connections are remembered in the view
	// (WSPRESENCE_TOMBSTONE_RETENTION, default 24h).
	TombstoneRetention time.Duration
	// LogRetention is how long the connection log keeps a record the view's snapshot holds
	// (WSPRESENCE_LOG_RETENTION, default 720h): older ones are deleted (the view keeps each
	// user's state and last activity), so `wspresence rebuild` folds from the snapshot and
	// the log kept after it.
	LogRetention time.Duration
	// UserRetention is how long the view keeps the row of a user offline since (its last
	// activity, answered by GET /user/online) past that activity (WSPRESENCE_USER_RETENTION,
	// default 8760h, a year: a "last seen" a year old still answers, and the rows kept are
	// those of the users seen in the past year; 0 keeps them forever). A user past it is
	// answered as one never seen: offline, no last activity.
	UserRetention time.Duration
	// OutboxRetention is how long published events stay readable by /events and webhooks
	// (WSPRESENCE_OUTBOX_RETENTION, default 168h): older ones are pruned whatever reads
	// them; a webhook lagging further skips them (counted), an /events reader asking for
	// them gets 410.
	OutboxRetention time.Duration
	// RecoveryWindow is how long accepted messages are kept for clients that opt in to
	// recovery (the wspresence.v1 subprotocol) to replay after a reconnect, and how long a
	// message for such a client, reached by no connection, waits for it before it is
	// MessageUndeliverable (WSPRESENCE_RECOVERY_WINDOW, default 2m; 0 keeps nothing: every
	// recover is answered too_old and today's outcomes stay).
	RecoveryWindow time.Duration
	// MaxHeldMessages bounds the messages held in memory for recovering users' reconnects
	// (WSPRESENCE_MAX_HELD_MESSAGES, default 100,000; about 200 bytes each, the body not
	// among them: the replay reads it from the store). At the bound, POST /messages and the
	// queue answer 503 messages_held_full with Retry-After before accepting anything, until
	// replays or the window's end bring it below; a message accepted before is still held.
	MaxHeldMessages int
	// MaxHeldMessagesPerUser bounds the messages held for one user's reconnect
	// (WSPRESENCE_MAX_HELD_MESSAGES_PER_USER, default 1,000): a message to a user at it is
	// refused like one at MaxHeldMessages (503 messages_held_full, before anything of the
	// request is accepted) while messages to other users are still accepted and held, so
	// one user who stays away cannot fill MaxHeldMessages for everyone. The default is
	// about 8 messages a second to one user for the default 2-minute window, a replay of
	// four store reads (replayPage), and a hundredth of MaxHeldMessages' default.
	MaxHeldMessagesPerUser int
	// AllowedOrigins lists the browser origins (host patterns) allowed to open a WebSocket
	// (WSPRESENCE_ALLOWED_ORIGINS, comma-separated, default "*": tokens, not cookies,
	// authenticate connections).
	AllowedOrigins []string
	// LogLevel is debug, info, warn or error (WSPRESENCE_LOG_LEVEL, default info).
	LogLevel string
	// Sync is the store's durability: "full" (default: every commit survives power loss)
	// or "normal" (commits survive a crash of the process; far fewer fsyncs)
	// (WSPRESENCE_SYNC).
	Sync string
	// CommitDelay bounds how long the store holds a group commit for the requests the
	// measured arrival rate says are coming, while writers are concurrent (--commit-delay,
	// WSPRESENCE_COMMIT_DELAY, default 5ms; 0: never held past the 2 ms pacing of
	// concurrent writers): fewer commits per message, for a POST /messages that waits up
	// to that much longer. A writer alone never waits for it.
	CommitDelay time.Duration
	// Webhooks are URLs every published event is POSTed to, one event per request, in
	// order, at least once (WSPRESENCE_WEBHOOKS, comma-separated, default none).
	Webhooks []string
	// WebhookSecret signs the webhook requests (HMAC-SHA256); generated and kept in DataDir
	// when webhooks are set and it is empty (WSPRESENCE_WEBHOOK_SECRET).
	WebhookSecret string
	// ReadHeaderTimeout bounds reading a request's headers, the WebSocket handshake's
	// included (WSPRESENCE_READ_HEADER_TIMEOUT, default 10s).
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included. It bounds only the
	// reading: a WebSocket (hijacked) and GET /events (no body) stay open past it, watched
	// by their own pings and heartbeat (WSPRESENCE_READ_TIMEOUT, default 30s).
	ReadTimeout time.Duration
	// KeepAliveTimeout closes an HTTP keep-alive connection idle between requests for that
	// long (WSPRESENCE_KEEPALIVE_TIMEOUT, default 60s).
	KeepAliveTimeout time.Duration
	// EventsHeartbeat is how often GET /events sends a comment line when there is nothing
	// to send, so an idle stream stays open through proxies and the client can tell a
	// quiet stream from a dead one (WSPRESENCE_EVENTS_HEARTBEAT, default 15s).
	EventsHeartbeat time.Duration
	// Pprof serves the Go profiler at /debug/pprof/ behind the API key (WSPRESENCE_PPROF,
	// default off); the benchmark uses it.
	Pprof bool
	// AcceptLoss starts on a store whose committed tail was lost after an unclean stop (its
	// WAL deleted, cut or damaged), which is otherwise refused: the loss is logged and a new
	// event epoch starts (--accept-loss, WSPRESENCE_ACCEPT_LOSS; meant for one start).
	AcceptLoss bool
	// GCPercentUnderLoad is the collector's GOGC while messages are accepted at load
	// (--gc-percent-under-load, WSPRESENCE_GC_PERCENT_UNDER_LOAD): `serve` applies it and
	// sets the runtime's own back once the load has passed; 0 leaves the collector alone,
	// and so does a GOGC set in the environment.
	GCPercentUnderLoad int
	// MemoryUnderLoad is the memory limit in bytes that drives the collector while messages
	// are accepted at load (--memory-under-load, WSPRESENCE_MEMORY_UNDER_LOAD), GOGC off
	// meanwhile: `serve` raises it to the heap goal GCPercentUnderLoad gives when the live
	// heap asks more, keeps it under GOMEMLIMIT, and removes it once the load has passed.
	MemoryUnderLoad int64

	// storeFault is passed to the store as its fault hook (tests only).
	storeFault func() error
	// reconcileInterval spaces the passes that close view connections with no socket
	// (default 1m; tests shorten it).
	reconcileInterval time.Duration
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Addr:                   "127.0.0.1:8080",
		DataDir:                "./wspresence-data",
		OfflineGrace:           5 * time.Second,
		JWTAlgorithms:          []string{"HS256"},
		JWTRequireExpiry:       true,
		MaxConnectionsPerUser:  10,
		PingInterval:           30 * time.Second,
		IdleTimeout:            10 * time.Minute,
		ActivityInterval:       30 * time.Second,
		SendQueue:              256,
		BodyBudget:             64 << 20,
		WriteTimeout:           10 * time.Second,
		InboundRate:            20,
		InboundBurst:           40,
		ShutdownTimeout:        10 * time.Second,
		TombstoneRetention:     24 * time.Hour,
		OutboxRetention:        7 * 24 * time.Hour,
		RecoveryWindow:         2 * time.Minute,
		MaxHeldMessages:        100_000,
		MaxHeldMessagesPerUser: 1_000,
		LogRetention:           30 * 24 * time.Hour,
		UserRetention:          365 * 24 * time.Hour,
		AllowedOrigins:         []string{"*"},
		LogLevel:               "info",
		Sync:                   "full",
		CommitDelay:            5 * time.Millisecond,
		ReadHeaderTimeout:      10 * time.Second,
		ReadTimeout:            30 * time.Second,
		KeepAliveTimeout:       60 * time.Second,
		GCPercentUnderLoad:     400,
		MemoryUnderLoad:        64 << 20,
		EventsHeartbeat:        15 * time.Second,
	}
}

// TokenPolicy is what user tokens must meet, from JWTAlgorithms and JWTRequireExpiry.
func (c Config) TokenPolicy() auth.Policy {
	p := auth.DefaultPolicy()
	p.Algorithms = c.JWTAlgorithms
	p.ExpiryOptional = !c.JWTRequireExpiry
	return p
}

// Validate reports every problem of c at once.
func (c Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		errs = append(errs, fmt.Errorf("addr %q: want host:port", c.Addr))
	}
	if strings.TrimSpace(c.DataDir) == "" {
		errs = append(errs, errors.New("data dir is empty"))
	}
	if c.JWTSecret != "" && len(c.JWTSecret) < auth.MinSecretBytes {
		errs = append(errs, fmt.Errorf("jwt secret is %d bytes, at least %d needed", len(c.JWTSecret), auth.MinSecretBytes))
	}
	if err := c.TokenPolicy().Validate(); err != nil {
		errs = append(errs, err)
	}
	if len(c.JWTAlgorithms) == 0 {
		errs = append(errs, errors.New("jwt algorithms is empty (HS256 is the default)"))
	}
	if c.APIKey != "" && len(c.APIKey) < 16 {
		errs = append(errs, fmt.Errorf("api key is %d bytes, at least 16 needed", len(c.APIKey)))
	}
	positive := []struct {
		name string
		d    time.Duration
	}{
		{"ping interval", c.PingInterval}, {"idle timeout", c.IdleTimeout},
		{"activity interval", c.ActivityInterval}, {"shutdown timeout", c.ShutdownTimeout},
		{"tombstone retention", c.TombstoneRetention}, {"outbox retention", c.OutboxRetention}, {"log retention", c.LogRetention}, {"write timeout", c.WriteTimeout},
		{"read header timeout", c.ReadHeaderTimeout}, {"read timeout", c.ReadTimeout},
		{"keep-alive timeout", c.KeepAliveTimeout}, {"events heartbeat", c.EventsHeartbeat},
	}
	for _, p := range positive {
		if p.d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %s", p.name, p.d))
		}
	}
	if c.UserRetention < 0 {
		errs = append(errs, fmt.Errorf("user retention must not be negative (0 keeps users forever), got %s", c.UserRetention))
	}
	if c.RecoveryWindow < 0 {
		errs = append(errs, fmt.Errorf("recovery window must not be negative, got %s", c.RecoveryWindow))
	}
	if c.CommitDelay < 0 || c.CommitDelay > time.Second {
		errs = append(errs, fmt.Errorf("commit delay must be between 0 and 1s, got %s", c.CommitDelay))
	}
	if c.OfflineGrace < 0 {
		errs = append(errs, fmt.Errorf("offline grace must not be negative, got %s", c.OfflineGrace))
	}
	if c.MaxHeldMessages < 1 {
		errs = append(errs, fmt.Errorf("max held messages must be at least 1, got %d", c.MaxHeldMessages))
	}
	if c.MaxHeldMessagesPerUser < 1 {
		errs = append(errs, fmt.Errorf("max held messages per user must be at least 1, got %d", c.MaxHeldMessagesPerUser))
	}
	if c.BodyBudget < MaxRequestBytes {
		errs = append(errs, fmt.Errorf("body budget must hold at least one request of %d bytes, got %d", MaxRequestBytes, c.BodyBudget))
	}
	if c.MemoryUnderLoad < 0 {
		errs = append(errs, fmt.Errorf("memory under load must be 0 or more bytes, got %d", c.MemoryUnderLoad))
	}
	if c.GCPercentUnderLoad < 0 {
		errs = append(errs, fmt.Errorf("gc percent under load must be 0 (off) or more, got %d", c.GCPercentUnderLoad))
	}
	if c.SendQueue < 1 {
		errs = append(errs, fmt.Errorf("send queue must be at least 1 frame, got %d", c.SendQueue))
	}
	if c.InboundRate <= 0 || c.InboundBurst < 1 {
		errs = append(errs, fmt.Errorf("inbound rate must be positive and burst at least 1, got %v/s and %d", c.InboundRate, c.InboundBurst))
	}
	if c.MaxConnectionsPerUser < 1 {
		errs = append(errs, fmt.Errorf("max connections per user must be at least 1, got %d", c.MaxConnectionsPerUser))
	}
	if len(c.AllowedOrigins) == 0 {
		errs = append(errs, errors.New("allowed origins is empty (use * to allow any)"))
	}
	for _, u := range c.Webhooks {
		if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			errs = append(errs, fmt.Errorf("webhook %q: want an http(s) URL", u))
		}
	}
	if c.Sync != "full" && c.Sync != "normal" {
		errs = append(errs, fmt.Errorf("sync %q: want full or normal", c.Sync))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log level %q: want debug, info, warn or error", c.LogLevel))
	}
	return errors.Join(errs...)
}
