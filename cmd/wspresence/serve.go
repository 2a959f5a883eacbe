package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/localrt"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// sampleUser is the user of the sample token printed at start.
const sampleUser = "1234"

func serveFlags(cfg *localrt.Config, stderr io.Writer, getenv env) *flags {
	f := newFlags("serve", "serve [flags]", stderr, getenv)
	f.String(&cfg.Addr, "addr", "WSPRESENCE_ADDR", "listen address (port 0 picks a free port)")
	f.String(&cfg.DataDir, "data", "WSPRESENCE_DATA", "data directory: store, generated secrets")
	f.Duration(&cfg.OfflineGrace, "offline-grace", "WSPRESENCE_OFFLINE_GRACE", "time without connections before UserOffline")
	f.String(&cfg.JWTSecret, "jwt-secret", "WSPRESENCE_JWT_SECRET", "HS256 secret of user tokens (generated into the data dir if empty)")
	f.List(&cfg.JWTAlgorithms, "jwt-algorithms", "WSPRESENCE_JWT_ALGORITHMS", "accepted token algorithms among HS256, HS384, HS512 (comma-separated)")
	f.Bool(&cfg.JWTRequireExpiry, "jwt-require-exp", "WSPRESENCE_JWT_REQUIRE_EXP", "refuse tokens without exp (false accepts the original service's tokens that never expire)")
	f.String(&cfg.APIKey, "api-key", "WSPRESENCE_API_KEY", "API key of the backend endpoints (generated into the data dir if empty)")
	f.Int(&cfg.MaxConnectionsPerUser, "max-connections-per-user", "WSPRESENCE_MAX_CONNECTIONS_PER_USER", "simultaneous connections allowed per user")
	f.Duration(&cfg.PingInterval, "ping-interval", "WSPRESENCE_PING_INTERVAL", "server ping period; an unanswered ping expires the connection")
	f.Duration(&cfg.IdleTimeout, "idle-timeout", "WSPRESENCE_IDLE_TIMEOUT", "close connections silent for this long")
	f.Duration(&cfg.ActivityInterval, "activity-interval", "WSPRESENCE_ACTIVITY_INTERVAL", "record client activity at most once per connection per interval")
	f.Int(&cfg.SendQueue, "send-queue", "WSPRESENCE_SEND_QUEUE", "frames that may wait for a slow reader before it is closed (1013)")
	f.Int64(&cfg.BodyBudget, "body-budget", "WSPRESENCE_BODY_BUDGET", "bytes of request bodies read at once (POST /messages, the queue); past it 503")
	f.Int64(&cfg.StoreReserve, "store-reserve", "WSPRESENCE_STORE_RESERVE", "bytes of the reserve file kept beside the store for a full disk (0: a 32nd of the filesystem, 1 to 16 MiB; negative: none)")
	f.Duration(&cfg.WriteTimeout, "write-timeout", "WSPRESENCE_WRITE_TIMEOUT", "bound of one frame's write")
	f.Duration(&cfg.ReadHeaderTimeout, "read-header-timeout", "WSPRESENCE_READ_HEADER_TIMEOUT", "bound of reading an HTTP request's headers (WebSocket handshake included)")
	f.Duration(&cfg.ReadTimeout, "read-timeout", "WSPRESENCE_READ_TIMEOUT", "bound of reading a whole HTTP request (not applied to WebSockets and /events once open)")
	f.Duration(&cfg.KeepAliveTimeout, "keepalive-timeout", "WSPRESENCE_KEEPALIVE_TIMEOUT", "close HTTP keep-alive connections idle for this long")
	f.Duration(&cfg.EventsHeartbeat, "events-heartbeat", "WSPRESENCE_EVENTS_HEARTBEAT", "period of the comment line that keeps GET /events open")
	f.Float(&cfg.InboundRate, "inbound-rate", "WSPRESENCE_INBOUND_RATE", "client frames per second allowed per connection (then closed with 1008)")
	f.Int(&cfg.InboundBurst, "inbound-burst", "WSPRESENCE_INBOUND_BURST", "burst of client frames allowed per connection")
	f.Duration(&cfg.ShutdownTimeout, "shutdown-timeout", "WSPRESENCE_SHUTDOWN_TIMEOUT", "bound of the graceful shutdown")
	f.Duration(&cfg.TombstoneRetention, "tombstone-retention", "WSPRESENCE_TOMBSTONE_RETENTION", "how long closed connections stay in the view")
	f.Duration(&cfg.RecoveryWindow, "recovery-window", "WSPRESENCE_RECOVERY_WINDOW", "how long messages are kept for recovering clients (wspresence.v1) to replay after a reconnect; 0 keeps none")
	f.Int(&cfg.MaxHeldMessages, "max-held-messages", "WSPRESENCE_MAX_HELD_MESSAGES", "messages held in memory for recovering clients' reconnects; at the bound new messages get 503 messages_held_full")
	f.Int(&cfg.MaxHeldMessagesPerUser, "max-held-messages-per-user", "WSPRESENCE_MAX_HELD_MESSAGES_PER_USER", "messages held in memory for one recovering client's reconnect; at the bound new messages to that user get 503 messages_held_full, others are still held")
	f.Duration(&cfg.OutboxRetention, "outbox-retention", "WSPRESENCE_OUTBOX_RETENTION", "how long published events stay readable by /events and webhooks")
	f.Duration(&cfg.LogRetention, "log-retention", "WSPRESENCE_LOG_RETENTION", "how long the connection log keeps what the view's snapshot holds")
	f.Duration(&cfg.UserRetention, "user-retention", "WSPRESENCE_USER_RETENTION", "how long an offline user's row (its last activity) is kept past that activity; 0 keeps it forever")
	f.List(&cfg.AllowedOrigins, "allowed-origins", "WSPRESENCE_ALLOWED_ORIGINS", "browser origins allowed to connect (host patterns, * for any)")
	f.String(&cfg.LogLevel, "log-level", "WSPRESENCE_LOG_LEVEL", "debug, info, warn or error")
	f.List(&cfg.Webhooks, "webhooks", "WSPRESENCE_WEBHOOKS", "URLs every published event is POSTed to (comma-separated), signed with the webhook secret")
	f.String(&cfg.WebhookSecret, "webhook-secret", "WSPRESENCE_WEBHOOK_SECRET", "HMAC-SHA256 key of the webhook signatures (generated into the data dir if empty)")
	f.String(&cfg.Sync, "sync", "WSPRESENCE_SYNC", "store durability: full (survives power loss) or normal (survives a process crash, fewer fsyncs)")
	f.Duration(&cfg.CommitDelay, "commit-delay", "WSPRESENCE_COMMIT_DELAY", "most a store commit is held for the requests the arrival rate says are coming, while writers are concurrent (0: never past the 2ms pacing)")
	f.Bool(&cfg.Pprof, "pprof", "WSPRESENCE_PPROF", "serve the Go profiler at /debug/pprof/ (behind the API key)")
	f.Int(&cfg.GCPercentUnderLoad, "gc-percent-under-load", "WSPRESENCE_GC_PERCENT_UNDER_LOAD", "the collector's GOGC while messages are accepted at load (0: the runtime's always; a GOGC variable wins)")
	f.Int64(&cfg.MemoryUnderLoad, "memory-under-load", "WSPRESENCE_MEMORY_UNDER_LOAD", "bytes the collector lets the process reach while messages are accepted at load, unless the live heap at --gc-percent-under-load asks more (never above GOMEMLIMIT)")
	f.Bool(&cfg.AcceptLoss, "accept-loss", "WSPRESENCE_ACCEPT_LOSS", "start on a store whose committed tail was lost after an unclean stop (otherwise refused), under a new event epoch")
	return f
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) error {
	cfg := localrt.DefaultConfig()
	f := serveFlags(&cfg, stderr, getenv)
	parseErr := f.parse(args)
	if errors.Is(parseErr, errUsage) || errors.Is(parseErr, flagErrHelp) {
		return parseErr
	}
	// Every problem at once: bad values from flags or environment, then Validate's.
	if err := errors.Join(parseErr, cfg.Validate()); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	log := newLogger(stderr, cfg.LogLevel)
	atLeastTwoProcs(getenv)
	srv, err := localrt.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	if err := srv.Start(ctx); err != nil {
		_ = srv.Shutdown(context.Background())
		return err
	}
	if cfg.GCPercentUnderLoad > 0 && getenv("GOGC") == "" {
		gctx, stopGC := context.WithCancel(ctx)
		defer stopGC()
		go governCollector(gctx, srv.MessagesAccepted, cfg.GCPercentUnderLoad, cfg.MemoryUnderLoad, log)
	}
	tok, err := auth.Mint([]byte(srv.JWTSecret()), sampleUser, time.Hour, time.Now())
	if err != nil {
		_ = srv.Shutdown(context.Background())
		return err
	}
	addr := srv.Addr().String()
	fmt.Fprintf(stdout, `wspresence is listening on %[1]s (data in %[2]s)
  WebSocket   ws://%[1]s/?Authorization=<JWT>
  REST        http://%[1]s/user/online       (header X-Api-Key: <API key>)
  Messages    POST http://%[1]s/messages
  SQS         %[6]s  (AWS SDK: endpoint http://%[1]s, secret access key = API key)
  Events      http://%[1]s/events            (Server-Sent Events)
  Dashboard   http://%[1]s/ui/#key=%[3]s
  Metrics     http://%[1]s/metrics
  API key     %[3]s
  Sample token for user %[4]s (valid 1h):
    %[5]s
  Try: wscat -c "ws://%[1]s/?Authorization=%[5]s"
`, addr, cfg.DataDir, srv.APIKey(), sampleUser, tok, localrt.QueueURL(addr))
	select {
	case <-ctx.Done():
	case <-waitChan(srv):
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("stopped")
	return srv.Wait()
}

func waitChan(srv *localrt.Server) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- srv.Wait() }()
	return ch
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}

func rebuild(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) error {
	cfg := localrt.DefaultConfig()
	cfg.OfflineGrace = 0 // unless given: the grace period the store was last served with
	f := newFlags("rebuild", "rebuild [--data DIR]", stderr, getenv)
	f.String(&cfg.DataDir, "data", "WSPRESENCE_DATA", "data directory of the store")
	f.Duration(&cfg.OfflineGrace, "offline-grace", "WSPRESENCE_OFFLINE_GRACE", "grace period the view is folded with (default: the one the store was served with)")
	if err := f.parse(args); err != nil {
		return err
	}
	lock, err := localrt.LockDataDir(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("%w (stop the server first)", err)
	}
	defer lock.Close()
	store, err := sqlite.Open(ctx, filepath.Join(cfg.DataDir, localrt.StoreFile), sqlite.Options{Grace: cfg.OfflineGrace})
	if err != nil {
		return err
	}
	defer store.Close()
	p, err := store.Rebuild(ctx)
	if err != nil {
		return err
	}
	if p.From == 0 {
		fmt.Fprintf(stdout, "view rebuilt from the whole log: %d records (checkpoint %d)\n", p.Events, p.Checkpoint)
	} else {
		fmt.Fprintf(stdout, "view rebuilt from its snapshot at log position %d (the log before it is compacted) and the %d records after it (checkpoint %d)\n",
			p.From, p.Events, p.Checkpoint)
	}
	return nil
}

func backup(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) error {
	cfg := localrt.DefaultConfig()
	var to string
	var withoutSecrets bool
	f := newFlags("backup", "backup [--data DIR] --to FILE [--without-secrets]", stderr, getenv)
	f.String(&cfg.DataDir, "data", "WSPRESENCE_DATA", "data directory of the store")
	f.String(&to, "to", "", "the backup file to write (must not exist)")
	f.Bool(&withoutSecrets, "without-secrets", "", "leave the data dir's generated secrets (JWT secret, API key, webhook secret) out of the backup")
	if err := f.parse(args); err != nil {
		return err
	}
	if to == "" {
		return errors.New("--to is required")
	}
	carried, err := localrt.Backup(ctx, cfg.DataDir, to, !withoutSecrets)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "store copied to %s\n", to)
	switch {
	case withoutSecrets:
		fmt.Fprintf(stdout, "the data dir's secrets are not in it: a restore into a dir without them generates new ones, and every token and API key of these gets 401\n")
	case len(carried) > 0:
		fmt.Fprintf(stdout, "it carries the secrets %s (mode 0600: keep it as secret as they are)\n", strings.Join(carried, ", "))
	}
	return nil
}

func restore(ctx context.Context, args []string, stdout, stderr io.Writer, getenv env) error {
	cfg := localrt.DefaultConfig()
	var from string
	f := newFlags("restore", "restore [--data DIR] --from FILE", stderr, getenv)
	f.String(&cfg.DataDir, "data", "WSPRESENCE_DATA", "data directory of the store")
	f.String(&from, "from", "", "the backup file to restore")
	if err := f.parse(args); err != nil {
		return err
	}
	if from == "" {
		return errors.New("--from is required")
	}
	r, err := localrt.Restore(ctx, cfg.DataDir, from)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "store %s restored from %s into %s (new event epoch %s: /events ids read before answer 410)\n",
		r.StoreID, from, filepath.Join(cfg.DataDir, localrt.StoreFile), r.Epoch)
	for _, name := range r.Replaced {
		fmt.Fprintf(stdout, "the replaced store's file is kept as %s\n", filepath.Join(cfg.DataDir, name))
	}
	for _, name := range r.Secrets {
		fmt.Fprintf(stdout, "secret %s put in place from the backup\n", filepath.Join(cfg.DataDir, name))
	}
	for _, name := range r.Kept {
		if slices.Contains(r.Differs, name) {
			fmt.Fprintf(stdout, "secret %s kept as it was: it differs from the backup's (tokens or keys made with the backup's are refused)\n", filepath.Join(cfg.DataDir, name))
		} else {
			fmt.Fprintf(stdout, "secret %s kept as it was (the same as the backup's)\n", filepath.Join(cfg.DataDir, name))
		}
	}
	if len(r.Secrets)+len(r.Kept) == 0 {
		fmt.Fprintf(stdout, "the backup carries no secrets: those missing from %s are generated at the next start, and tokens and API keys made with the old ones get 401\n", cfg.DataDir)
	}
	return nil
}

// atLeastTwoProcs gives the scheduler a second P when the process may use one CPU (a
// container limit, taskset), unless GOMAXPROCS is set. A goroutine in a system call keeps
// its P until the runtime's system monitor takes it back, and the monitor naps up to 10 ms
// between looks: with one P, each fsync of the store's writer (0.4 ms at the median, tens of
// milliseconds when the disk stalls) stops every handler and frame of the server for as long
// as it lasts. With a second P they run on the same core meanwhile (bench/findings.md,
// 2026-12-05: publishers at 4,000 msg/s, POST p99 223-773 ms with one P, 18-35 ms with two,
// for the same CPU per message).
func atLeastTwoProcs(getenv env) {
	if getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) < 2 {
		runtime.GOMAXPROCS(2)
	}
}
