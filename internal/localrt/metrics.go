package localrt

import (
	"context"
	"math"
	"net/http"
	"regexp"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// metrics are the local runtime's Prometheus metrics, on a registry of their own.
type metrics struct {
	registry        *prometheus.Registry
	appended        *prometheus.CounterVec
	projectorLag    prometheus.Histogram
	messages        *prometheus.CounterVec
	deliveryLatency prometheus.Histogram
	authFailures    *prometheus.CounterVec
	commitBatch     prometheus.Histogram
	commitSync      prometheus.Histogram
	walBytes        prometheus.Gauge
	storeQueued     prometheus.Gauge
	webhookMissed   prometheus.Counter
	recoveries      *prometheus.CounterVec
	replayed        prometheus.Counter
	pruned          *prometheus.CounterVec
	packed          prometheus.Counter
}

// schedLatencies adds the Go runtime's /sched/latencies:seconds to the Go collector's
// defaults, as go_sched_latencies_seconds: how long goroutines waited, runnable, for a CPU.
// It is the CPU's share of a request's wait, as wspresence_store_commit_sync_seconds is the
// disk's: a POST /messages answered by its commit still waits for the CPU to write the 202.
var schedLatencies = collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/sched/latencies:seconds$`)}

// onlineCounter counts online users (the view).
type onlineCounter interface {
	OnlineCount(ctx context.Context) (int, error)
}

// storeState is what the metrics read of the store's room and of the closes waiting for it.
type storeState interface {
	storeSpace() sqlite.Space
	closesPending() int
}

func newMetrics(connections func() int, view onlineCounter, imageUsers, held func() int, st storeState) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		registry: reg,
		appended: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wspresence_events_appended_total",
			Help: "Connection events appended to the log, by type (duplicates by natural key are not counted)."}, []string{"type"}),
		projectorLag: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "wspresence_projector_lag_seconds",
			Help: "Time from an event to its fold into the view.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wspresence_messages_total",
			Help: "Messages processed per user, by outcome (delivered, undeliverable)."}, []string{"outcome"}),
		deliveryLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "wspresence_delivery_latency_seconds",
			Help: "Time from a message's acceptance to its delivery outcome.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wspresence_auth_failures_total",
			Help: "Refused connection attempts and backend requests, by reason."}, []string{"reason"}),
		commitBatch: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "wspresence_store_commit_batch_size",
			Help: "Write requests group-committed per transaction.", Buckets: prometheus.ExponentialBuckets(1, 2, 11)}),
		commitSync: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "wspresence_store_commit_sync_seconds",
			Help:    "How long a commit synced to disk took to write its pages to the write-ahead log and sync it: the disk's share of the wait of a POST /messages, a connect or a close (--sync full).",
			Buckets: prometheus.ExponentialBuckets(0.0001, math.Sqrt2, 28)}),
		webhookMissed: prometheus.NewCounter(prometheus.CounterOpts{Name: "wspresence_webhook_events_missed_total",
			Help: "Published events webhooks skipped because the outbox pruned them before they were taken."}),
		pruned: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wspresence_pruned_total",
			Help: "Rows forgotten past their retention, by what (tombstones, messages, outbox, log, users)."}, []string{"what"}),
		packed: prometheus.NewCounter(prometheus.CounterOpts{Name: "wspresence_users_packed_total",
			Help: "Users offline past the tombstone retention moved from their rows to blocks of packed users (a user who returns and leaves again is counted again)."}),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wspresence_recoveries_total",
			Help: "Recover requests answered, by outcome (recovered, or the reason it did not)."}, []string{"outcome"}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{Name: "wspresence_messages_replayed_total",
			Help: "Message frames replayed to recovering connections."}),
		walBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "wspresence_store_wal_bytes",
			Help: "Size of the store's write-ahead log (bounded by wspresence_store_wal_limit_bytes)."}),
		storeQueued: prometheus.NewGauge(prometheus.GaugeOpts{Name: "wspresence_store_queued_message_bytes",
			Help: "Bytes of accepted messages handed to the store and not yet committed (at most 1 MiB, or one larger request; the others wait within the body budget)."}),
	}
	reg.MustRegister(m.appended, m.projectorLag, m.messages, m.deliveryLatency, m.authFailures, m.commitBatch, m.commitSync, m.walBytes, m.storeQueued, m.webhookMissed, m.pruned, m.packed,
		m.recoveries, m.replayed,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wspresence_messages_held",
			Help: "Messages held for a recovering user's reconnect (their window, at most --max-held-messages-per-user per user and --max-held-messages in all: past them new messages get 503)."}, func() float64 { return float64(held()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wspresence_connections",
			Help: "Live WebSocket connections held by this process."}, func() float64 { return float64(connections()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wspresence_online_users",
			Help: "Users with at least one live connection (the view)."}, func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			n, err := view.OnlineCount(ctx)
			if err != nil {
				return -1
			}
			return float64(n)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wspresence_image_users",
			Help: "Users the store's memory image holds: online, in their grace period, or changed since the last snapshot."},
			func() float64 { return float64(imageUsers()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wspresence_store_wal_limit_bytes",
			Help: "The WAL's bound: 64 MiB, or a quarter of the free space when that is less (at least 1 MiB)."},
			func() float64 { return float64(st.storeSpace().WALLimit) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wspresence_store_free_bytes",
			Help: "Free space of the store's filesystem, as last read (-1: unknown)."},
			func() float64 { return float64(st.storeSpace().Free) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wspresence_store_reserve_bytes",
			Help: "Size of the store's reserve file (given back while the disk is full)."},
			func() float64 { return float64(st.storeSpace().Reserve) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wspresence_store_full",
			Help: "1 while the store refuses writes for want of space, else 0."},
			func() float64 {
				if st.storeSpace().Full {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wspresence_closes_pending",
			Help: "Connection closes not yet written (the store cannot write): shown closed, written once it can."},
			func() float64 { return float64(st.closesPending()) }),
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(schedLatencies)),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	for _, t := range []events.Type{events.TypeConnectionOpened, events.TypeConnectionClosed, events.TypeActivityRecorded} {
		m.appended.WithLabelValues(string(t))
	}
	for _, w := range []string{"tombstones", "messages", "outbox", "log", "users"} {
		m.pruned.WithLabelValues(w)
	}
	for _, o := range []string{"delivered", "undeliverable"} {
		m.messages.WithLabelValues(o)
	}
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

// outcome records one message outcome and its latency from acceptance to the decision.
func (m *metrics) outcome(p events.Published, enqueuedAt, decided time.Time) {
	switch p.(type) {
	case events.MessageDelivered:
		m.messages.WithLabelValues("delivered").Inc()
	case events.MessageUndeliverable:
		m.messages.WithLabelValues("undeliverable").Inc()
	}
	m.deliveryLatency.Observe(decided.Sub(enqueuedAt).Seconds())
}
