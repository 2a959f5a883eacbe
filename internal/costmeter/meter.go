package costmeter

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go/middleware"
	"github.com/wspresence/wspresence/internal/store/dynamo"
	"github.com/wspresence/wspresence/internal/store/dynamo/dynamotest"
)

// Index describes a global secondary index for counting its writes: its key attributes
// and the non-key attributes it projects (none for KEYS_ONLY).
type Index struct {
	Name       string
	Hash       string
	Range      string
	Projection []string
}

// Meter counts billable usage. Its methods are safe for concurrent use.
type Meter struct {
	mu sync.Mutex
	// invocations and billedMs (each invocation's, rounded up to the ms) are per
	// function; memoryMB is each function's memory.
	invocations map[string]int
	billedMs    map[string][]float64
	memoryMB    map[string]int
	rru, wru    float64
	indexWrites map[string]float64
	counts      map[string]float64
	images      map[string]map[string]types.AttributeValue
	indexes     []Index
	viewTable   string
	viewRecords []lambdaevents.DynamoDBEventRecord
	seq         int64
	// sparse counts what the same traffic costs when every batched invocation carries
	// one record: invocations and batched requests.
	sparseInv    map[string]int
	sparseCounts map[string]float64
	// logBytes is what CloudWatch Logs ingests, per function; appLevel and systemLevel
	// are the functions' log levels (INFO when unset).
	logBytes           map[string]float64
	appLevel, sysLevel map[string]string
	retained           map[string]float64 // table -> months its items are kept
	storedGBMonths     float64
	metrics            map[string]bool // custom metrics seen (namespace, name, dimensions)
}

// PlatformLogBytes is what Lambda writes per invocation at system log level INFO (its
// START and REPORT lines, JSON); at WARN, nothing.
const PlatformLogBytes = 400

// logEventOverhead is what CloudWatch Logs counts per log event beside its text.
const logEventOverhead = 26

// New returns a meter of functions with the given memory (MB), counting index writes of
// the view table's indexes.
func New(memoryMB map[string]int, viewTable string, indexes []Index) *Meter {
	return &Meter{invocations: map[string]int{}, billedMs: map[string][]float64{}, memoryMB: memoryMB,
		indexWrites: map[string]float64{}, counts: map[string]float64{}, images: map[string]map[string]types.AttributeValue{},
		indexes: indexes, viewTable: viewTable, sparseInv: map[string]int{}, sparseCounts: map[string]float64{},
		logBytes: map[string]float64{}, appLevel: map[string]string{}, sysLevel: map[string]string{},
		retained: map[string]float64{}, metrics: map[string]bool{}}
}

// LogLevels sets each function's application and system log levels (as the template's
// LoggingConfig has them).
func (m *Meter) LogLevels(app, system map[string]string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.appLevel, m.sysLevel = app, system
}

// Retain bills the storage (and point-in-time recovery) of every item written to table
// for months; the name "logs" sets how long the log groups keep what they ingest.
func (m *Meter) Retain(table string, months float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.retained[table] = months
}

var levels = map[string]int{"TRACE": 0, "DEBUG": 1, "INFO": 2, "WARN": 3, "WARNING": 3, "ERROR": 4, "FATAL": 5}

func level(s string) int {
	if l, ok := levels[strings.ToUpper(s)]; ok {
		return l
	}
	return levels["INFO"]
}

// Logs returns the writer of a function's logs (its stdout and stderr): each JSON line
// is counted as CloudWatch Logs ingests it (its bytes and the event's overhead) when its
// level ("level"; INFO when there is none, as Lambda takes it) passes the function's
// application log level, as Lambda's filter does; the custom metrics of the metric
// records (EMF) ingested are noted (a metric that receives no data is not billed).
func (m *Meter) Logs(function string) io.Writer { return logWriter{m: m, fn: function} }

type logWriter struct {
	m  *Meter
	fn string
}

func (w logWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		var rec struct {
			Level string `json:"level"`
			AWS   struct {
				CloudWatchMetrics []struct {
					Namespace  string
					Dimensions [][]string
					Metrics    []struct{ Name string }
				}
			} `json:"_aws"`
		}
		_ = json.Unmarshal(line, &rec)
		w.m.mu.Lock()
		if level(rec.Level) >= level(w.m.appLevel[w.fn]) {
			w.m.logBytes[w.fn] += float64(len(line) + logEventOverhead)
			for _, cw := range rec.AWS.CloudWatchMetrics {
				for _, mt := range cw.Metrics {
					w.m.metrics[fmt.Sprint(cw.Namespace, mt.Name, cw.Dimensions)] = true
				}
			}
		}
		w.m.mu.Unlock()
	}
	return len(p), nil
}

// CustomMetrics returns the distinct custom metrics (namespace, name and dimensions) of
// the metric records ingested.
func (m *Meter) CustomMetrics() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.metrics))
	for k := range m.metrics {
		out = append(out, k)
	}
	return out
}

// Reset forgets everything counted so far (the index state is kept: it is the tables').
func (m *Meter) Reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.invocations, m.billedMs = map[string]int{}, map[string][]float64{}
	m.rru, m.wru = 0, 0
	m.indexWrites, m.counts = map[string]float64{}, map[string]float64{}
	m.sparseInv, m.sparseCounts, m.logBytes, m.storedGBMonths = map[string]int{}, map[string]float64{}, map[string]float64{}, 0
	m.viewRecords = nil
}

// Invoke runs one invocation of a function and measures its duration, rounded up to the
// millisecond as Lambda bills it. The bill prices every invocation at the median measured
// (in-process durations on a shared machine vary by half between runs; the median does
// not follow the outliers) and prints the spread.
func (m *Meter) Invoke(function string, run func()) { m.InvokeBatch(function, 1, run) }

// InvokeBatch runs one invocation of a function that carries records records (a stream
// or queue batch): the sparse count has records invocations.
func (m *Meter) InvokeBatch(function string, records int, run func()) {
	start := time.Now()
	run()
	ms := math.Ceil(float64(time.Since(start).Microseconds()) / 1000)
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.memoryMB[function]; !ok {
		panic("costmeter: no memory size for function " + function)
	}
	m.invocations[function]++
	m.sparseInv[function] += max(records, 1)
	m.billedMs[function] = append(m.billedMs[function], max(ms, 1))
	if level(m.sysLevel[function]) <= level("INFO") {
		m.logBytes[function] += PlatformLogBytes + 2*logEventOverhead
	}
}

// Add counts n units of a billed item: "eventbridge" (entries), "sqs" (requests),
// "apigw-messages", "connection-minutes", "express-executions", "express-gb-s".
func (m *Meter) Add(item string, n float64) { m.AddBatch(item, n, 1) }

// AddBatch counts n units of an item done once per batch of records records (a receive
// and a delete of a queue batch): the sparse count has n per record.
func (m *Meter) AddBatch(item string, n float64, records int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.counts[item] += n
	m.sparseCounts[item] += n * float64(max(records, 1))
}

// Count returns what Add counted for an item.
func (m *Meter) Count(item string) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counts[item]
}

// Invocations returns the invocations of a function.
func (m *Meter) Invocations(function string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.invocations[function]
}

// ViewRecords returns the stream records (NEW_IMAGE) of the view table's item writes since
// the last call, in the order the writes completed.
func (m *Meter) ViewRecords() []lambdaevents.DynamoDBEventRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := m.viewRecords
	m.viewRecords = nil
	return out
}

// DynamoDB returns the client option that makes every call report its consumed capacity
// to the meter. A conditional write that fails is billed as DynamoDB bills it (the item's
// write units); an index write is counted when a view item enters an index, leaves it, or
// changes its key or a projected attribute. newImage reads an item after an update whose
// input does not hold it (uncounted).
func (m *Meter) DynamoDB(newImage func(ctx context.Context, table string, key map[string]types.AttributeValue) map[string]types.AttributeValue) func(*dynamodb.Options) {
	return func(o *dynamodb.Options) {
		o.APIOptions = append(o.APIOptions, func(stack *middleware.Stack) error {
			return stack.Initialize.Add(middleware.InitializeMiddlewareFunc("costmeter",
				func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
					total := types.ReturnConsumedCapacityTotal
					switch p := in.Parameters.(type) {
					case *dynamodb.PutItemInput:
						p.ReturnConsumedCapacity = total
					case *dynamodb.GetItemInput:
						p.ReturnConsumedCapacity = total
					case *dynamodb.UpdateItemInput:
						p.ReturnConsumedCapacity = total
					case *dynamodb.DeleteItemInput:
						p.ReturnConsumedCapacity = total
					case *dynamodb.QueryInput:
						p.ReturnConsumedCapacity = total
					case *dynamodb.BatchGetItemInput:
						p.ReturnConsumedCapacity = total
					case *dynamodb.BatchWriteItemInput:
						p.ReturnConsumedCapacity = total
					}
					out, md, err := next.HandleInitialize(ctx, in)
					m.account(ctx, in.Parameters, out.Result, err, newImage)
					return out, md, err
				}), middleware.After)
		})
	}
}

func capacity(c *types.ConsumedCapacity) float64 {
	if c == nil || c.CapacityUnits == nil {
		return 0
	}
	return *c.CapacityUnits
}

func (m *Meter) account(ctx context.Context, params, result any, err error, newImage func(context.Context, string, map[string]types.AttributeValue) map[string]types.AttributeValue) {
	var ccf *types.ConditionalCheckFailedException
	failed := errors.As(err, &ccf)
	m.mu.Lock()
	defer m.mu.Unlock()
	switch p := params.(type) {
	case *dynamodb.PutItemInput:
		if failed {
			m.wru += math.Ceil(float64(itemSize(p.Item)) / 1024)
			return
		}
		if r, ok := result.(*dynamodb.PutItemOutput); ok {
			m.wru += capacity(r.ConsumedCapacity)
		}
		if err == nil && aws.ToString(p.TableName) == m.viewTable {
			m.written(p.Item)
		}
		if months, ok := m.retained[aws.ToString(p.TableName)]; ok && err == nil {
			m.storedGBMonths += float64(itemSize(p.Item)+100) / 1e9 * months // 100 B: DynamoDB's per-item overhead
		}
	case *dynamodb.UpdateItemInput:
		if failed {
			m.wru++
			return
		}
		if r, ok := result.(*dynamodb.UpdateItemOutput); ok {
			m.wru += capacity(r.ConsumedCapacity)
		}
		if err == nil && aws.ToString(p.TableName) == m.viewTable {
			m.mu.Unlock()
			img := newImage(ctx, m.viewTable, p.Key)
			m.mu.Lock()
			m.written(img)
		}
	case *dynamodb.GetItemInput:
		if r, ok := result.(*dynamodb.GetItemOutput); ok {
			m.rru += capacity(r.ConsumedCapacity)
		}
	case *dynamodb.QueryInput:
		if r, ok := result.(*dynamodb.QueryOutput); ok {
			m.rru += capacity(r.ConsumedCapacity)
		}
	case *dynamodb.BatchGetItemInput:
		if r, ok := result.(*dynamodb.BatchGetItemOutput); ok {
			for _, c := range r.ConsumedCapacity {
				m.rru += capacity(&c)
			}
		}
	}
}

// written records a view item's new image: its index writes and its stream record.
func (m *Meter) written(img map[string]types.AttributeValue) {
	if img == nil {
		return
	}
	key := str(img["pk"]) + "\x00" + str(img["sk"])
	old := m.images[key]
	m.images[key] = img
	for _, ix := range m.indexes {
		m.indexWrites[ix.Name] += indexWrites(ix, old, img)
	}
	m.seq++
	m.viewRecords = append(m.viewRecords, dynamotest.ViewRecord(img, m.seq))
}

// indexWrites is the write units an item change costs an index: 1 KB units of the index
// entry written, and one more when the old entry is deleted for a new key.
func indexWrites(ix Index, old, cur map[string]types.AttributeValue) float64 {
	in := func(img map[string]types.AttributeValue) bool {
		return img != nil && img[ix.Hash] != nil && (ix.Range == "" || img[ix.Range] != nil)
	}
	entry := func(img map[string]types.AttributeValue) string {
		var b strings.Builder
		for _, a := range append([]string{ix.Hash, ix.Range}, ix.Projection...) {
			fmt.Fprintf(&b, "%s=%v;", a, flat(img[a]))
		}
		return b.String()
	}
	size := func(img map[string]types.AttributeValue) float64 {
		n := 100 // the index entry's overhead, as DynamoDB counts it
		for _, a := range append([]string{ix.Hash, ix.Range, "pk", "sk"}, ix.Projection...) {
			if v, ok := img[a]; ok {
				n += len(a) + valueSize(v)
			}
		}
		return math.Ceil(float64(n) / 1024)
	}
	switch wasIn, isIn := in(old), in(cur); {
	case !wasIn && !isIn:
		return 0
	case wasIn && !isIn:
		return size(old)
	case !wasIn && isIn:
		return size(cur)
	case flat(old[ix.Hash]) != flat(cur[ix.Hash]) || (ix.Range != "" && flat(old[ix.Range]) != flat(cur[ix.Range])):
		return size(old) + size(cur)
	case entry(old) != entry(cur):
		return size(cur)
	}
	return 0
}

func str(v types.AttributeValue) string {
	if s, ok := v.(*types.AttributeValueMemberS); ok {
		return s.Value
	}
	return ""
}

func flat(v types.AttributeValue) string {
	switch x := v.(type) {
	case nil:
		return ""
	case *types.AttributeValueMemberS:
		return "S" + x.Value
	case *types.AttributeValueMemberN:
		return "N" + x.Value
	case *types.AttributeValueMemberSS:
		s := append([]string(nil), x.Value...)
		sort.Strings(s)
		return "SS" + strings.Join(s, ",")
	}
	return fmt.Sprintf("%#v", v)
}

func itemSize(item map[string]types.AttributeValue) int { return dynamo.SizeOf(item) }

func valueSize(v types.AttributeValue) int {
	return dynamo.SizeOf(map[string]types.AttributeValue{"": v})
}

// Line is one priced item of a bill.
type Line struct {
	Item     string
	Quantity float64
	Unit     string
	USD      float64
}

// Bill prices what was counted with p, batches as they were formed.
func (m *Meter) Bill(p PriceTable) []Line { return m.bill(p, false) }

// SparseBill prices the same traffic with every batched invocation carrying one record
// (each at the median measured duration of the batches: an upper bound).
func (m *Meter) SparseBill(p PriceTable) []Line { return m.bill(p, true) }

func (m *Meter) bill(p PriceTable, sparse bool) []Line {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Line
	var fns []string
	for fn := range m.invocations {
		fns = append(fns, fn)
	}
	sort.Strings(fns)
	counts := m.counts
	if sparse {
		counts = m.sparseCounts
	}
	for _, fn := range fns {
		n := float64(m.invocations[fn])
		if sparse {
			n = float64(m.sparseInv[fn])
		}
		ms := slices.Sorted(slices.Values(m.billedMs[fn]))
		median := ms[len(ms)/2]
		gbs := n * median / 1000 * float64(m.memoryMB[fn]) / 1024
		out = append(out, Line{"lambda " + fn + " requests", n, "invocations", n * p.LambdaRequest},
			Line{fmt.Sprintf("lambda %s duration (%d MB arm64, ms: median %.0f, min %.0f, p90 %.0f)", fn, m.memoryMB[fn],
				median, ms[0], ms[len(ms)*9/10]), gbs, "GB-s", gbs * p.LambdaGBSecond})
	}
	out = append(out, Line{"dynamodb reads", m.rru, "RRU", m.rru * p.DynamoRRU},
		Line{"dynamodb table writes", m.wru, "WRU", m.wru * p.DynamoWRU})
	var ixs []string
	for ix := range m.indexWrites {
		ixs = append(ixs, ix)
	}
	sort.Strings(ixs)
	for _, ix := range ixs {
		out = append(out, Line{"dynamodb index " + ix + " writes", m.indexWrites[ix], "WRU", m.indexWrites[ix] * p.DynamoWRU})
	}
	for _, c := range []struct {
		item, unit string
		price      float64
	}{
		{"eventbridge", "entries", p.EventBridgeEvent},
		{"sqs", "requests", p.SQSRequest},
		{"express-executions", "executions", p.ExpressExecution},
		{"express-gb-s", "GB-s", p.ExpressGBSecond},
		{"apigw-messages", "messages", p.APIGatewayMessage},
		{"connection-minutes", "minutes", p.APIGatewayConnectionMinute},
		{"apigw-management-calls", "calls", p.APIGatewayManagementCall},
	} {
		if n := counts[c.item]; n > 0 {
			out = append(out, Line{c.item, n, c.unit, n * c.price})
		}
	}
	if m.storedGBMonths > 0 {
		out = append(out, Line{"dynamodb storage and point-in-time recovery of retained items", m.storedGBMonths, "GB-months",
			m.storedGBMonths * (p.DynamoStorageGBMonth + p.DynamoPITRGBMonth)})
	}
	var logs float64
	for _, b := range m.logBytes {
		logs += b
	}
	if months := m.retained["logs"]; months > 0 {
		gb := logs / 1e9
		out = append(out, Line{"cloudwatch logs ingested", gb, "GB", gb * p.LogsIngestGB},
			Line{fmt.Sprintf("cloudwatch logs stored (%.0f days)", months*HoursPerMonth/24), gb * months, "GB-months", gb * months * p.LogsStoreGBMonth})
	}
	return out
}

// Total sums a bill.
func Total(lines []Line) float64 {
	t := 0.0
	for _, l := range lines {
		t += l.USD
	}
	return t
}
