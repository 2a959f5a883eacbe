package localrt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/store/sqlite"
	"golang.org/x/sync/semaphore"
)

// StoreFile is the name of the SQLite file in the data dir.
const StoreFile = "wspresence.db"

// StoreIDFile, in the data dir, records the id of the store the dir holds.
const StoreIDFile = "store-id"

// ErrStoreReplaced is returned by New when the data dir's store is not the one it held: an
// empty file where state was, or another store.
var ErrStoreReplaced = errors.New("the store is not the one this data dir held")

// checkStoreIdentity compares the store's id with the one the data dir recorded (and
// records it the first time): a store that was emptied or replaced is refused, never
// served as if the history it held had not happened.
func checkStoreIdentity(dir string, store *sqlite.Store) error {
	id, created := store.Identity()
	recorded, err := os.ReadFile(filepath.Join(dir, StoreIDFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		_, err = writeAtomically(dir, StoreIDFile, []byte(id+"\n"), false)
		return err
	case err != nil:
		return err
	}
	if want := strings.TrimSpace(string(recorded)); want != id {
		what := "another store"
		if created {
			what = "an empty store"
		}
		return fmt.Errorf("%w: %s holds %s where store %s was (its history, /events ids and queued messages are not there): "+
			"restore %s from a backup (docs/operations.md, \"Backup and restore\"), or move the data dir away to start empty",
			ErrStoreReplaced, filepath.Join(dir, StoreFile), what, want, StoreFile)
	}
	return nil
}

// Errors a connection attempt can meet before the upgrade.
var (
	errTooManyConnections = errors.New("too many connections for this user")
	errClosing            = errors.New("server is shutting down")
)

// closeHandshakeWait is how long Shutdown waits for clients to answer the close frame.
const closeHandshakeWait = time.Second

// Server is the local runtime. Create it with New, then Start, then Shutdown.
type Server struct {
	cfg Config
	log *slog.Logger
	// store is the SQLite store, opened and closed here; the code reaches it through the
	// ports below (ports.go).
	store    *sqlite.Store
	events   connectionLog
	queue    messageQueue
	outbox   outboxReader
	view     presenceView
	verifier *auth.Verifier
	hub      *hub
	// accepted counts the messages accepted since start (MessagesAccepted).
	accepted atomic.Int64
	bus      *broadcaster
	graces   *graceTimers
	// outcomes carries the decided outcomes of dispatched messages to the completer.
	outcomes *outcomeQueue
	// queued holds the messages committed and not yet dispatched.
	queued queuedFeed
	// streams reads the users' streams for recovering connections; held is what waits
	// for their reconnect.
	streams streamReader
	held    *heldMessages
	// closing holds the closes the store could not write yet (closes.go).
	closing *pendingCloses
	metrics *metrics
	// bodies is the bytes of request bodies being read (Config.BodyBudget bounds it).
	bodies atomic.Int64
	// bodyReads holds a token per request body being decoded (bodyDecodes).
	bodyReads chan struct{}
	// storeBytes bounds the message bytes handed to the store and not yet committed
	// (storeQueueBytes).
	storeBytes *semaphore.Weighted
	lock       *os.File
	now        func() time.Time

	httpSrv  *http.Server
	ln       net.Listener
	served   chan error
	stopping chan struct{}
	stopOnce sync.Once
	conns    sync.WaitGroup
	loops    sync.WaitGroup
	loopStop context.CancelFunc
	kick     chan struct{}
	started  atomic.Bool
	// completerStop and completerDone end the completer after the connections and loops.
	completerStop context.CancelFunc
	completerDone chan struct{}
}

// storeCommitDelay is the store's CommitDelay for Config.CommitDelay: 0 (none) is the
// store's negative, its zero being its default.
func storeCommitDelay(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// New validates cfg, takes the data dir, loads or generates the secrets and opens the
// store. Nothing listens until Start.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	lock, err := LockDataDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Server, error) {
		lock.Close()
		return nil, err
	}
	if cfg.JWTSecret == "" {
		if cfg.JWTSecret, err = LoadOrCreateSecret(cfg.DataDir, JWTSecretFile, log); err != nil {
			return fail(err)
		}
	}
	if cfg.APIKey == "" {
		if cfg.APIKey, err = LoadOrCreateSecret(cfg.DataDir, APIKeyFile, log); err != nil {
			return fail(err)
		}
	}
	if len(cfg.Webhooks) > 0 && cfg.WebhookSecret == "" {
		if cfg.WebhookSecret, err = LoadOrCreateSecret(cfg.DataDir, WebhookSecretFile, log); err != nil {
			return fail(err)
		}
	}
	verifier, err := auth.NewVerifier([]byte(cfg.JWTSecret), cfg.TokenPolicy())
	if err != nil {
		return fail(err)
	}
	s := &Server{cfg: cfg, log: log, verifier: verifier, hub: newHub(cfg.MaxConnectionsPerUser),
		bus: newBroadcaster(), lock: lock, now: time.Now, stopping: make(chan struct{}), kick: make(chan struct{}, 1),
		bodyReads: make(chan struct{}, bodyDecodes()), storeBytes: semaphore.NewWeighted(storeQueueBytes)}
	s.held = newHeldMessages()
	s.closing = newPendingCloses()
	s.metrics = newMetrics(s.hub.count, storeCounter{s}, func() int {
		if s.store == nil {
			return 0
		}
		return s.store.ImageUsers()
	}, s.held.count, storeState(s))
	store, err := sqlite.Open(ctx, filepath.Join(cfg.DataDir, StoreFile), sqlite.Options{
		Grace:          cfg.OfflineGrace,
		Sync:           cfg.Sync,
		CommitDelay:    storeCommitDelay(cfg.CommitDelay),
		Logger:         log,
		OnCommit:       func(n int) { s.metrics.commitBatch.Observe(float64(n)) },
		OnSynced:       func(d time.Duration) { s.metrics.commitSync.Observe(d.Seconds()) },
		OnWAL:          func(n int64) { s.metrics.walBytes.Set(float64(n)) },
		OnAppended:     func(t events.Type) { s.metrics.appended.WithLabelValues(string(t)).Inc() },
		OnProjected:    func(lag time.Duration) { s.metrics.projectorLag.Observe(lag.Seconds()) },
		OnFolded:       func(p sqlite.Projection) { s.folded(p) },
		OnQueued:       func(m []sqlite.QueuedMessage) { s.queued.push(m); s.wake() },
		RecoveryWindow: cfg.RecoveryWindow,
		AcceptLoss:     cfg.AcceptLoss,
		Reserve:        cfg.StoreReserve,
		Fault:          cfg.storeFault,
	})
	if tl := (*sqlite.TailLost)(nil); errors.As(err, &tl) && tl.Emptied {
		err = fmt.Errorf("%w: %w", ErrStoreReplaced, err)
	}
	if err != nil {
		return fail(err)
	}
	if err := checkStoreIdentity(cfg.DataDir, store); err != nil {
		if !cfg.AcceptLoss || !errors.Is(err, ErrStoreReplaced) {
			store.Close()
			return fail(err)
		}
		// The loss of the whole file's history (a WAL lost before any checkpoint) was
		// accepted: the data dir records the store it holds now.
		log.Error("serving a store that is not the one this data dir held, as asked (--accept-loss)", "err", err)
		id, _ := store.Identity()
		if _, err := writeAtomically(cfg.DataDir, StoreIDFile, []byte(id+"\n"), true); err != nil {
			store.Close()
			return fail(err)
		}
	}
	s.graces = newGraceTimers(cfg.OfflineGrace, s.expireGrace)
	s.store = store
	s.events, s.queue, s.outbox, s.streams = store, store, store, store
	s.view = closingView{presenceView: store, pending: s.closing}
	s.outcomes = newOutcomeQueue()
	return s, nil
}

// storeSpace reports the store's filesystem space (zero before it opens).
func (s *Server) storeSpace() sqlite.Space {
	if s.store == nil {
		return sqlite.Space{}
	}
	return s.store.Space()
}

// closesPending counts the closes not written yet.
func (s *Server) closesPending() int { return s.closing.count() }

// storeCounter counts online users in the server's store, once it is open.
type storeCounter struct{ s *Server }

func (c storeCounter) OnlineCount(ctx context.Context) (int, error) {
	return c.s.view.OnlineCount(ctx)
}

// JWTSecret returns the secret user tokens are signed with.
func (s *Server) JWTSecret() string { return s.cfg.JWTSecret }

// APIKey returns the key of the backend endpoints.
func (s *Server) APIKey() string { return s.cfg.APIKey }

// Store returns the server's store (for tools and tests).
func (s *Server) Store() *sqlite.Store { return s.store }

// MessagesAccepted returns how many messages (one per recipient) were made durable since
// the server started: the load signal of the collector's settings.
func (s *Server) MessagesAccepted() int64 { return s.accepted.Load() }

// Addr returns the address the server listens on (after Start).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Start recovers the state a previous run left (folding the log, closing the connections
// that died with it, restoring grace timers), then listens and serves until Shutdown.
func (s *Server) Start(ctx context.Context) error {
	if err := s.recover(ctx); err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	s.ln = ln
	s.httpSrv = &http.Server{Handler: s.routes(),
		ConnContext:       withQuietConn,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout, // lifted by net/http once a request is read
		IdleTimeout:       s.cfg.KeepAliveTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	s.served = make(chan error, 1)
	go func() { s.served <- s.httpSrv.Serve(quietListener{ln}) }()
	loopCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.loopStop = cancel
	prunes := s.retentions()
	s.loops.Add(4 + len(prunes) + len(s.cfg.Webhooks))
	go func() { defer s.loops.Done(); s.writeCloses(loopCtx) }()
	go func() { defer s.loops.Done(); s.keepStreams(loopCtx) }()
	go func() { defer s.loops.Done(); s.pump(loopCtx) }()
	go func() { defer s.loops.Done(); s.reconcile(loopCtx) }()
	completerCtx, stopCompleter := context.WithCancel(context.WithoutCancel(ctx))
	s.completerStop = stopCompleter
	s.completerDone = make(chan struct{})
	go func() { defer close(s.completerDone); s.completer(completerCtx) }()
	for _, p := range prunes {
		go func() { defer s.loops.Done(); s.prune(loopCtx, p) }()
	}
	for _, u := range s.cfg.Webhooks {
		go func() { defer s.loops.Done(); s.webhook(loopCtx, u) }()
	}
	s.started.Store(true)
	s.log.Info("listening", "addr", ln.Addr().String(), "dataDir", s.cfg.DataDir)
	return nil
}

// recover appends ConnectionClosed{expired} for every connection the view still holds
// live (the store replayed the log's tail when it opened; this process holds no socket
// yet, so they died with the previous one) and restarts the pending grace timers.
func (s *Server) recover(ctx context.Context) error {
	dangling, err := s.view.AllLiveConnections(ctx)
	if err != nil {
		return err
	}
	if len(dangling) > 0 {
		at := s.now()
		closed := make([]events.ConnectionEvent, len(dangling))
		for i, c := range dangling {
			closed[i] = events.Closed(c.UserID, c.ID, at, events.ReasonExpired)
		}
		if _, err := s.events.Append(ctx, closed...); err != nil {
			if errors.Is(err, sqlite.ErrClosed) {
				return err
			}
			// A start on a full disk: they are shown closed at once and written once the
			// store can write.
			s.keepCloses(err, closed...)
		} else {
			s.log.Info("closed connections left by the previous run", "count", len(dangling))
		}
	}
	// The users of opted-in connections that died with the previous process get their
	// messages held as if those had just closed, and those whose opted-in connection
	// closed within the recovery window before it as of that close.
	recovering, err := s.streams.TakeRecovering(ctx)
	if err != nil {
		if errors.Is(err, sqlite.ErrClosed) || s.store.Writable() == nil {
			return err
		}
		// A start on a full disk: the records stay for the next start, and these users'
		// messages are not held meanwhile.
		s.log.Warn("the recovering connections of the previous run are not taken: the store cannot write", "err", err)
	}
	for _, u := range recovering {
		s.held.optedInClosed(u.UserID, u.ClosedAt)
	}
	graces, err := s.view.PendingGraces(ctx)
	if err != nil {
		return err
	}
	for _, g := range graces {
		s.graces.schedule(g)
	}
	return nil
}

// Wait returns when the HTTP server stops serving (after Shutdown, or on a listener error).
func (s *Server) Wait() error {
	err := <-s.served
	s.served <- err
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops the server: it refuses new connections, closes every WebSocket with a
// close frame and appends ConnectionClosed{shutdown} for each, lets the projector and the
// deliverer finish what is durable, and closes the store. Events whose grace period is
// still running are announced by the next start.
func (s *Server) Shutdown(ctx context.Context) error {
	var errs []error
	s.stopOnce.Do(func() {
		close(s.stopping)
		if !s.started.Load() {
			errs = append(errs, s.store.Close(), s.lock.Close())
			return
		}
		open := s.hub.closeAll()
		for _, c := range open {
			c.setReason(events.ReasonShutdown)
			if ws := c.socket(); ws != nil { // a pending one is closed once attached
				go ws.Close(websocketGoingAway, "server shutting down")
			}
		}
		done := make(chan struct{})
		go func() { s.conns.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(closeHandshakeWait):
			// Clients that do not answer the close frame are dropped.
			for _, c := range open {
				c.drop()
			}
			select {
			case <-done:
			case <-ctx.Done():
				errs = append(errs, fmt.Errorf("waiting for connections to close: %w", ctx.Err()))
			}
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("waiting for connections to close: %w", ctx.Err()))
		}
		if err := s.httpSrv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http shutdown: %w", err))
		}
		s.graces.stop()
		s.loopStop()
		s.loops.Wait()
		// Every connection has ended, so every dispatched frame has its receipt: record the
		// outcomes left before the store closes.
		s.completerStop()
		<-s.completerDone
		if !s.flushCloses(ctx) {
			s.log.Error("closes not written before the stop: the next start closes those connections", "count", s.closing.count())
		}
		errs = append(errs, s.store.Close(), s.lock.Close())
	})
	return errors.Join(errs...)
}

// isStopping reports whether Shutdown began.
func (s *Server) isStopping() bool {
	select {
	case <-s.stopping:
		return true
	default:
		return false
	}
}

// secretFiles are the data dir's generated secrets a backup carries.
var secretFiles = []string{JWTSecretFile, APIKeyFile, WebhookSecretFile}

// Backup writes a consistent copy of the data dir's store to the new file to, the server
// running or not. With secrets, the copy also carries the data dir's secret files (the JWT
// secret, the API key, the webhook secret, those that exist), so a restore into another dir
// serves the same callers and tokens; the copy is then readable by its owner only. It
// returns the names of the secrets carried.
func Backup(ctx context.Context, dir, to string, secrets bool) ([]string, error) {
	extra := map[string]string{}
	var carried []string
	if secrets {
		for _, name := range secretFiles {
			v, err := ReadSecret(dir, name)
			if errors.Is(err, ErrNoSecret) {
				continue
			}
			if err != nil {
				return nil, err
			}
			extra[name] = v
			carried = append(carried, name)
		}
	}
	if err := sqlite.BackupWith(ctx, filepath.Join(dir, StoreFile), to, extra); err != nil {
		return nil, err
	}
	return carried, nil
}

// Restored says what Restore put in place.
type Restored struct {
	// StoreID and Epoch are the restored store's identity and its new epoch.
	StoreID, Epoch string
	// Replaced lists the files of the store it replaced, kept beside it under new names.
	Replaced []string
	// Secrets lists the secrets the backup carried and Restore wrote into the data dir;
	// Kept those the data dir already held (left as they were; Differs says which of them
	// differ from the backup's).
	Secrets, Kept, Differs []string
}

// Restore puts the store backup at from in place of the data dir's store, the server
// stopped (it takes the data dir's lock): the backup is checked first, the store it
// replaces (and its WAL) is kept beside it with a .replaced-<time> suffix, the data dir
// records the restored store's identity, the store starts a new epoch (positions handed out
// since the backup name nothing in it), and the secrets the backup carries are written into
// the data dir where it has none (a secret it has is never replaced).
func Restore(ctx context.Context, dir, from string) (Restored, error) {
	var out Restored
	lock, err := LockDataDir(dir)
	if err != nil {
		return out, fmt.Errorf("%w (stop the server first)", err)
	}
	defer lock.Close()
	if err := sqlite.Check(ctx, from); err != nil {
		return out, fmt.Errorf("the backup cannot serve: %w", err)
	}
	suffix := ".replaced-" + time.Now().UTC().Format("20060102T150405Z")
	for _, f := range []string{StoreFile, StoreFile + "-wal", StoreFile + "-shm", StoreFile + sqlite.MarkSuffix} {
		err := os.Rename(filepath.Join(dir, f), filepath.Join(dir, f+suffix))
		switch {
		case err == nil:
			out.Replaced = append(out.Replaced, f+suffix)
		case !errors.Is(err, fs.ErrNotExist):
			return out, err
		}
	}
	if err := copyAtomically(from, dir, StoreFile); err != nil {
		return out, err
	}
	carried, err := sqlite.TakeCarried(ctx, filepath.Join(dir, StoreFile))
	if err != nil {
		return out, err
	}
	for _, name := range secretFiles {
		v, ok := carried[name]
		if !ok {
			continue
		}
		switch have, err := ReadSecret(dir, name); {
		case err == nil:
			out.Kept = append(out.Kept, name)
			if have != v {
				out.Differs = append(out.Differs, name)
			}
		case errors.Is(err, ErrNoSecret) || errors.Is(err, ErrUnusableSecret):
			if _, err := writeAtomically(dir, name, []byte(v+"\n"), true); err != nil {
				return out, fmt.Errorf("write %s: %w", name, err)
			}
			out.Secrets = append(out.Secrets, name)
		default:
			return out, err
		}
	}
	store, err := sqlite.Open(ctx, filepath.Join(dir, StoreFile), sqlite.Options{})
	if err != nil {
		return out, err
	}
	// Stream positions handed out since the backup cannot be trusted any more.
	if err := store.RenewEpoch(ctx); err != nil {
		store.Close()
		return out, err
	}
	out.StoreID, _ = store.Identity()
	out.Epoch = store.Epoch()
	if err := store.Close(); err != nil {
		return out, err
	}
	_, err = writeAtomically(dir, StoreIDFile, []byte(out.StoreID+"\n"), true)
	return out, err
}

// copyAtomically makes dir/name a durable copy of the file at from, streamed (a store may
// be larger than the memory), or leaves it as it was.
func copyAtomically(from, dir, name string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if _, err := io.Copy(tmp, src); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncDir(dir)
}
