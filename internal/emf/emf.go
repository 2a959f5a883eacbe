// Package emf writes CloudWatch Embedded Metric Format records: one JSON log line per
// record, which CloudWatch Logs turns into metrics of the namespace without any API call.
// A Logger is safe for concurrent use.
package emf

import (
	"encoding/json"
	"io"
	"sort"
	"sync"
	"time"
)

// Unit is a CloudWatch metric unit.
type Unit string

// The units used here.
const (
	Count        Unit = "Count"
	Milliseconds Unit = "Milliseconds"
	Seconds      Unit = "Seconds"
)

// Metric is one value of a record.
type Metric struct {
	Name  string
	Value float64
	Unit  Unit
}

// Logger writes records to one writer (a Lambda function's stdout).
type Logger struct {
	mu        sync.Mutex
	w         io.Writer
	namespace string
	now       func() time.Time
}

// New returns a Logger of namespace writing to w.
func New(w io.Writer, namespace string) *Logger {
	return &Logger{w: w, namespace: namespace, now: time.Now}
}

// Emit writes one record: the metrics under the given dimensions (name to value). Metrics
// with a zero value are written too, so a figure that stays at zero is still a data point.
// The record has no level: Lambda's log filter takes it for INFO, and drops it when the
// function's application log level is above (the hot path's, by default).
func (l *Logger) Emit(dims map[string]string, metrics ...Metric) error {
	return l.emit("", dims, metrics)
}

// Alert writes a record as Emit does, at level WARN, so it reaches CloudWatch whatever
// the function's log level: the metrics an alarm watches, written when there is
// something to report.
func (l *Logger) Alert(dims map[string]string, metrics ...Metric) error {
	return l.emit("WARN", dims, metrics)
}

func (l *Logger) emit(level string, dims map[string]string, metrics []Metric) error {
	if l == nil || len(metrics) == 0 {
		return nil
	}
	keys := make([]string, 0, len(dims))
	for k := range dims {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	type def struct {
		Name string `json:"Name"`
		Unit Unit   `json:"Unit,omitempty"`
	}
	defs := make([]def, len(metrics))
	rec := map[string]any{}
	for k, v := range dims {
		rec[k] = v
	}
	for i, m := range metrics {
		defs[i] = def{Name: m.Name, Unit: m.Unit}
		rec[m.Name] = m.Value
	}
	if level != "" {
		rec["level"] = level
	}
	rec["_aws"] = map[string]any{
		"Timestamp": l.now().UnixMilli(),
		"CloudWatchMetrics": []any{map[string]any{
			"Namespace":  l.namespace,
			"Dimensions": [][]string{keys},
			"Metrics":    defs,
		}},
	}
	line, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	_, err = l.w.Write(append(line, '\n'))
	return err
}
