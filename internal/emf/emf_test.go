package emf_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/wspresence/wspresence/internal/emf"
)

func TestRecordShape(t *testing.T) {
	var buf bytes.Buffer
	l := emf.New(&buf, "wspresence")
	if err := l.Emit(map[string]string{"Function": "sender"}, emf.Metric{Name: "MessagesDelivered", Value: 3, Unit: emf.Count},
		emf.Metric{Name: "DeliveryLatency", Value: 12.5, Unit: emf.Milliseconds}); err != nil {
		t.Fatal(err)
	}
	var rec struct {
		AWS struct {
			Timestamp         int64
			CloudWatchMetrics []struct {
				Namespace  string
				Dimensions [][]string
				Metrics    []struct{ Name, Unit string }
			}
		} `json:"_aws"`
		Function          string
		MessagesDelivered float64
		DeliveryLatency   float64
	}
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("%s: %v", buf.Bytes(), err)
	}
	cw := rec.AWS.CloudWatchMetrics[0]
	if rec.AWS.Timestamp == 0 || cw.Namespace != "wspresence" || cw.Dimensions[0][0] != "Function" || rec.Function != "sender" ||
		len(cw.Metrics) != 2 || cw.Metrics[1].Unit != "Milliseconds" || rec.MessagesDelivered != 3 || rec.DeliveryLatency != 12.5 {
		t.Fatalf("record %s", buf.Bytes())
	}
	if bytes.Count(buf.Bytes(), []byte("\n")) != 1 {
		t.Fatal("a record is not one line")
	}
	var nilLogger *emf.Logger
	if err := nilLogger.Emit(nil, emf.Metric{Name: "x"}); err != nil {
		t.Fatal("a nil logger must be a no-op")
	}
}

// An alert carries level WARN, so Lambda's log filter keeps it above INFO; a plain record
// has no level (Lambda takes it for INFO).
func TestAlertLevel(t *testing.T) {
	var buf bytes.Buffer
	l := emf.New(&buf, "wspresence")
	_ = l.Emit(nil, emf.Metric{Name: "A", Value: 1})
	_ = l.Alert(nil, emf.Metric{Name: "B", Value: 1})
	lines := bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n"))
	var plain, alert map[string]any
	if len(lines) != 2 || json.Unmarshal(lines[0], &plain) != nil || json.Unmarshal(lines[1], &alert) != nil {
		t.Fatalf("records %s", buf.Bytes())
	}
	if _, ok := plain["level"]; ok || alert["level"] != "WARN" || alert["B"] != 1.0 {
		t.Fatalf("levels: %v / %v", plain, alert)
	}
}
