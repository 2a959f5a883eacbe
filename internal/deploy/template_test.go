package deploy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wspresence/wspresence/internal/deploy"
	"github.com/wspresence/wspresence/internal/grace/sqsdelay"
	"github.com/wspresence/wspresence/internal/lambda/grace"
	"github.com/wspresence/wspresence/internal/lambdatest"
	"github.com/wspresence/wspresence/internal/store/dynamo"
)

func load(t *testing.T) (deploy.Template, string) {
	t.Helper()
	root := lambdatest.Root(t)
	tpl, err := deploy.Load(filepath.Join(root, "template.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return tpl, root
}

// res renders a resource expression in a short canonical form.
func res(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case map[string]any:
		for k, val := range x {
			switch k {
			case "Ref":
				return "Ref:" + val.(string)
			case "Fn::GetAtt":
				parts := val.([]any)
				return fmt.Sprintf("GetAtt:%s.%s", parts[0], parts[1])
			case "Fn::Sub":
				if s, ok := val.(string); ok {
					return "Sub:" + s
				}
			}
		}
	}
	b, _ := json.Marshal(v)
	return string(b)
}

type grant struct{ action, resource string }

// grants lists what a role allows, one entry per action and resource; Fn::If statements
// contribute their first branch.
func grants(t *testing.T, role map[string]any, skipPolicy string) []grant {
	t.Helper()
	var out []grant
	policies, _ := deploy.Props(role)["Policies"].([]any)
	for _, p := range policies {
		pm := p.(map[string]any)
		if pm["PolicyName"] == skipPolicy {
			continue
		}
		for _, st := range pm["PolicyDocument"].(map[string]any)["Statement"].([]any) {
			stm := st.(map[string]any)
			if iff, ok := stm["Fn::If"].([]any); ok {
				stm = iff[1].(map[string]any)
			}
			if stm["Effect"] != "Allow" {
				t.Fatalf("statement %v is not an Allow", stm)
			}
			actions, ok := stm["Action"].([]any)
			if !ok {
				actions = []any{stm["Action"]}
			}
			for _, a := range actions {
				out = append(out, grant{a.(string), res(stm["Resource"])})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].action+out[i].resource < out[j].action+out[j].resource })
	return out
}

// function is a function of the template with its build and role.
type function struct {
	logical, service string
	props            map[string]any
	role             map[string]any
}

var buildTarget = regexp.MustCompile(`(?m)^build-(\w+):\s*;\s*\$\(call lambda,(\w+)\)`)

func functions(t *testing.T, tpl deploy.Template, root string) map[string]function {
	t.Helper()
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	builds := map[string]string{}
	for _, m := range buildTarget.FindAllStringSubmatch(string(mk), -1) {
		builds[m[1]] = m[2]
	}
	out := map[string]function{}
	rs := tpl.Resources()
	for id, r := range rs {
		if r["Type"] != "AWS::Serverless::Function" {
			continue
		}
		svc, ok := builds[id]
		if !ok {
			t.Fatalf("function %s has no build-%s target in the Makefile", id, id)
		}
		if md, _ := r["Metadata"].(map[string]any); md["BuildMethod"] != "makefile" {
			t.Fatalf("function %s does not build with the Makefile", id)
		}
		roleRef := res(deploy.Props(r)["Role"])
		roleID := strings.TrimSuffix(strings.TrimPrefix(roleRef, "GetAtt:"), ".Arn")
		role, ok := rs[roleID]
		if !ok || role["Type"] != "AWS::IAM::Role" {
			t.Fatalf("function %s has no role of its own (%s)", id, roleRef)
		}
		out[svc] = function{logical: id, service: svc, props: deploy.Props(r), role: role}
	}
	return out
}

// TestEveryServiceIsAFunction: each folder under services/ is built into a function.
func TestEveryServiceIsAFunction(t *testing.T) {
	tpl, root := load(t)
	fns := functions(t, tpl, root)
	dirs, err := os.ReadDir(filepath.Join(root, "services"))
	if err != nil {
		t.Fatal(err)
	}
	var services []string
	for _, d := range dirs {
		if d.IsDir() {
			services = append(services, d.Name())
			if _, ok := fns[d.Name()]; !ok {
				t.Errorf("services/%s is not built into any function", d.Name())
			}
		}
	}
	if len(fns) != len(services) || len(fns) != 10 {
		t.Fatalf("%d functions for %d services", len(fns), len(services))
	}
	globals := tpl["Globals"].(map[string]any)["Function"].(map[string]any)
	if globals["Runtime"] != "provided.al2023" || !reflect.DeepEqual(globals["Architectures"], []any{"arm64"}) || globals["Handler"] != "bootstrap" {
		t.Fatalf("function globals %v", globals)
	}
	for _, f := range fns {
		if name := res(f.props["FunctionName"]); !strings.HasPrefix(name, "Sub:${AWS::StackName}-WebSocketAdaptor") {
			t.Errorf("%s is named %s: want the stack name and WebSocketAdaptor...", f.logical, name)
		}
	}
}

var getenv = regexp.MustCompile(`os\.Getenv\("(\w+)"\)`)

// TestEveryEnvironmentVariableIsSet: what a main reads, the template sets.
func TestEveryEnvironmentVariableIsSet(t *testing.T) {
	tpl, root := load(t)
	for svc, f := range functions(t, tpl, root) {
		src, err := os.ReadFile(filepath.Join(root, "services", svc, "main.go"))
		if err != nil {
			t.Fatal(err)
		}
		vars := f.props["Environment"].(map[string]any)["Variables"].(map[string]any)
		read := map[string]bool{}
		for _, m := range getenv.FindAllStringSubmatch(string(src), -1) {
			read[m[1]] = true
			if _, ok := vars[m[1]]; !ok {
				t.Errorf("%s reads %s, which the template does not set", f.logical, m[1])
			}
		}
		for k := range vars {
			if !read[k] {
				t.Errorf("%s sets %s, which services/%s does not read", f.logical, k, svc)
			}
		}
	}
}

// expected is what each function's adapters call (see docs/aws-runtime.md), as the role
// must allow it: the action and the resource.
var expected = map[string][]grant{
	"authorizer": {
		{"ssm:GetParameter", "Sub:arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${JwtSecretParameterName}"},
		{"kms:Decrypt", "Ref:JwtSecretKmsKeyArn"},
	},
	"restauthorizer": {
		{"ssm:GetParameter", "Sub:arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${ApiKeyParameterName}"},
		{"kms:Decrypt", "Ref:JwtSecretKmsKeyArn"},
	},
	"connect": {
		{"dynamodb:PutItem", "GetAtt:EventsTable.Arn"}, {"dynamodb:GetItem", "GetAtt:EventsTable.Arn"},
		// The fold of the open (read-your-connect) and the connection cap; the activity
		// register ($default frames, and the cap's reading of it).
		{"dynamodb:GetItem", "GetAtt:ViewTable.Arn"}, {"dynamodb:PutItem", "GetAtt:ViewTable.Arn"},
		{"dynamodb:UpdateItem", "GetAtt:ViewTable.Arn"}, {"dynamodb:BatchGetItem", "GetAtt:ViewTable.Arn"},
		// The recover route: the user's stream, the replay and the held messages' outcomes.
		{"dynamodb:Query", "GetAtt:ViewTable.Arn"}, {"events:PutEvents", "GetAtt:EventBus.Arn"},
		{"execute-api:ManageConnections", "Sub:arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${WebSocketApi}/${StageName}/POST/@connections/*"},
	},
	"disconnect": {
		{"dynamodb:PutItem", "GetAtt:EventsTable.Arn"}, {"dynamodb:GetItem", "GetAtt:EventsTable.Arn"},
	},
	"projector": {
		{"dynamodb:GetItem", "GetAtt:ViewTable.Arn"}, {"dynamodb:PutItem", "GetAtt:ViewTable.Arn"},
		{"sqs:SendMessage", "GetAtt:GraceQueue.Arn"},
		// The stream event source mapping and its on-failure destination.
		{"dynamodb:DescribeStream", "GetAtt:EventsTable.StreamArn"}, {"dynamodb:GetRecords", "GetAtt:EventsTable.StreamArn"},
		{"dynamodb:GetShardIterator", "GetAtt:EventsTable.StreamArn"}, {"dynamodb:ListStreams", "Sub:${EventsTable.Arn}/stream/*"},
		{"sqs:SendMessage", "GetAtt:StreamFailureQueue.Arn"},
	},
	"publisher": {
		{"events:PutEvents", "GetAtt:EventBus.Arn"},
		// Marks what it published in the user item's outbox.
		{"dynamodb:GetItem", "GetAtt:ViewTable.Arn"}, {"dynamodb:PutItem", "GetAtt:ViewTable.Arn"},
		// The view table's stream (the outbox) and its on-failure destination.
		{"dynamodb:DescribeStream", "GetAtt:ViewTable.StreamArn"}, {"dynamodb:GetRecords", "GetAtt:ViewTable.StreamArn"},
		{"dynamodb:GetShardIterator", "GetAtt:ViewTable.StreamArn"}, {"dynamodb:ListStreams", "Sub:${ViewTable.Arn}/stream/*"},
		{"sqs:SendMessage", "GetAtt:StreamFailureQueue.Arn"},
	},
	"grace": {
		{"dynamodb:GetItem", "GetAtt:ViewTable.Arn"}, {"dynamodb:PutItem", "GetAtt:ViewTable.Arn"},
		// The grace timers' queue mapping, and a timer that arrived early sent again.
		{"sqs:ReceiveMessage", "GetAtt:GraceQueue.Arn"}, {"sqs:DeleteMessage", "GetAtt:GraceQueue.Arn"},
		{"sqs:GetQueueAttributes", "GetAtt:GraceQueue.Arn"}, {"sqs:ChangeMessageVisibility", "GetAtt:GraceQueue.Arn"},
		{"sqs:SendMessage", "GetAtt:GraceQueue.Arn"},
	},
	"sender": {
		// The live set, the posts of a retried message, and the fold of a gone connection.
		{"dynamodb:GetItem", "GetAtt:ViewTable.Arn"}, {"dynamodb:PutItem", "GetAtt:ViewTable.Arn"},
		{"dynamodb:GetItem", "GetAtt:EventsTable.Arn"}, {"dynamodb:PutItem", "GetAtt:EventsTable.Arn"},
		{"events:PutEvents", "GetAtt:EventBus.Arn"},
		{"execute-api:ManageConnections", "Sub:arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${WebSocketApi}/${StageName}/POST/@connections/*"},
		// The queue event source mapping.
		{"sqs:ReceiveMessage", "GetAtt:MessageQueue.Arn"}, {"sqs:DeleteMessage", "GetAtt:MessageQueue.Arn"},
		{"sqs:GetQueueAttributes", "GetAtt:MessageQueue.Arn"}, {"sqs:ChangeMessageVisibility", "GetAtt:MessageQueue.Arn"},
		// The recovery streams (offsets, kept messages, held outcomes) and the held
		// messages' timers, sent and consumed.
		{"dynamodb:UpdateItem", "GetAtt:ViewTable.Arn"}, {"dynamodb:Query", "GetAtt:ViewTable.Arn"},
		{"sqs:SendMessage", "GetAtt:HeldQueue.Arn"}, {"sqs:ReceiveMessage", "GetAtt:HeldQueue.Arn"}, {"sqs:DeleteMessage", "GetAtt:HeldQueue.Arn"},
		{"sqs:GetQueueAttributes", "GetAtt:HeldQueue.Arn"}, {"sqs:ChangeMessageVisibility", "GetAtt:HeldQueue.Arn"},
	},
	"online": {
		{"dynamodb:BatchGetItem", "GetAtt:ViewTable.Arn"}, {"dynamodb:Query", "Sub:${ViewTable.Arn}/index/online"},
		// The highest shard count the online index was written with.
		{"dynamodb:GetItem", "GetAtt:ViewTable.Arn"},
	},
	"sweeper": {
		// The reconciler: the repair and online indexes, the user items, the log's closes,
		// the stuck transitions, the dead grace timers.
		{"dynamodb:Query", "Sub:${ViewTable.Arn}/index/repair"}, {"dynamodb:Query", "Sub:${ViewTable.Arn}/index/online"},
		{"dynamodb:GetItem", "GetAtt:ViewTable.Arn"}, {"dynamodb:BatchGetItem", "GetAtt:ViewTable.Arn"},
		{"sqs:ReceiveMessage", "GetAtt:GraceDeadLetterQueue.Arn"}, {"sqs:DeleteMessage", "GetAtt:GraceDeadLetterQueue.Arn"},
		{"sqs:ReceiveMessage", "GetAtt:StreamFailureQueue.Arn"}, {"sqs:DeleteMessage", "GetAtt:StreamFailureQueue.Arn"},
		{"dynamodb:GetShardIterator", "GetAtt:EventsTable.StreamArn"}, {"dynamodb:GetRecords", "GetAtt:EventsTable.StreamArn"},
		{"dynamodb:GetShardIterator", "GetAtt:ViewTable.StreamArn"}, {"dynamodb:GetRecords", "GetAtt:ViewTable.StreamArn"},
		// The view table's stream read in the relay's place while the relay does not run.
		{"dynamodb:DescribeStream", "GetAtt:ViewTable.StreamArn"},
		{"dynamodb:PutItem", "GetAtt:ViewTable.Arn"}, {"dynamodb:GetItem", "GetAtt:EventsTable.Arn"},
		{"dynamodb:PutItem", "GetAtt:EventsTable.Arn"}, {"events:PutEvents", "GetAtt:EventBus.Arn"},
		{"execute-api:ManageConnections", "Sub:arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${WebSocketApi}/${StageName}/GET/@connections/*"},
	},
}

// TestRolesAllowExactlyWhatTheCodeCalls: each role allows the calls of its function's
// adapters on the right resources and nothing else, and writes logs only to its own group.
func TestRolesAllowExactlyWhatTheCodeCalls(t *testing.T) {
	tpl, root := load(t)
	for svc, f := range functions(t, tpl, root) {
		got := grants(t, f.role, "logs")
		want := slices.Clone(expected[svc])
		sort.Slice(want, func(i, j int) bool { return want[i].action+want[i].resource < want[j].action+want[j].resource })
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s role allows\n  %v\nwant\n  %v", f.logical, got, want)
		}
		logGroup := strings.Replace(f.logical, "Function", "LogGroup", 1)
		logs := grants(t, map[string]any{"Properties": map[string]any{"Policies": filterPolicies(f.role, "logs")}}, "")
		wantLogs := []grant{{"logs:CreateLogStream", "GetAtt:" + logGroup + ".Arn"}, {"logs:PutLogEvents", "GetAtt:" + logGroup + ".Arn"}}
		if !reflect.DeepEqual(logs, wantLogs) {
			t.Errorf("%s logs grants %v, want %v", f.logical, logs, wantLogs)
		}
	}
	// Nowhere logs:* or a wildcard resource, except where AWS requires it (log delivery).
	for id, r := range tpl.Resources() {
		if r["Type"] != "AWS::IAM::Role" {
			continue
		}
		for _, g := range grants(t, r, "") {
			if g.action == "logs:*" || strings.HasSuffix(g.action, ":*") {
				t.Errorf("%s allows %s", id, g.action)
			}
			if g.resource == "*" && !strings.HasPrefix(g.action, "logs:") {
				t.Errorf("%s allows %s on *", id, g.action)
			}
		}
	}
}

func filterPolicies(role map[string]any, name string) []any {
	var out []any
	for _, p := range deploy.Props(role)["Policies"].([]any) {
		if p.(map[string]any)["PolicyName"] == name {
			out = append(out, p)
		}
	}
	return out
}

var sdkCall = regexp.MustCompile(`\.(?:db|client)\.(\w+)\(ctx`)

// TestRolesCoverTheAdaptersCalls ties the table above to the code: every SDK operation the
// adapters call is granted to some function, and every granted data-plane action is called.
func TestRolesCoverTheAdaptersCalls(t *testing.T) {
	_, root := load(t)
	prefixes := map[string]string{
		"internal/store/dynamo":      "dynamodb:",
		"internal/bus/eventbridge":   "events:",
		"internal/grace/sqsdelay":    "sqs:",
		"internal/stream/failures":   "sqs:",
		"internal/stream/ddbstreams": "dynamodb:",
		"internal/secret/ssm":        "ssm:",
		"internal/gateway/apigw":     "execute-api:",
	}
	called := map[string]bool{}
	for dir, prefix := range prefixes {
		files, _ := filepath.Glob(filepath.Join(root, dir, "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			src, _ := os.ReadFile(f)
			for _, m := range sdkCall.FindAllStringSubmatch(string(src), -1) {
				op := m[1]
				if prefix == "execute-api:" {
					op = "ManageConnections" // PostToConnection and GetConnection
				}
				called[prefix+op] = true
			}
		}
	}
	granted := map[string]bool{}
	for _, gs := range expected {
		for _, g := range gs {
			granted[g.action] = true
		}
	}
	for op := range called {
		if !granted[op] {
			t.Errorf("the code calls %s but no function may", op)
		}
	}
	for op := range granted {
		data := !strings.HasPrefix(op, "sqs:") && !strings.Contains(op, "Stream") && op != "kms:Decrypt" &&
			op != "dynamodb:GetRecords" && op != "dynamodb:GetShardIterator"
		if data && !called[op] {
			t.Errorf("a role allows %s, which no adapter calls", op)
		}
	}
}

// TestReferencesResolve: every Ref and GetAtt names a resource, parameter or pseudo
// parameter; every ${X} of a Sub too.
func TestReferencesResolve(t *testing.T) {
	tpl, _ := load(t)
	known := map[string]bool{"AWS::StackName": true, "AWS::Region": true, "AWS::AccountId": true, "AWS::Partition": true, "AWS::NoValue": true, "AWS::URLSuffix": true}
	for id := range tpl.Resources() {
		known[id] = true
	}
	for id := range tpl["Parameters"].(map[string]any) {
		known[id] = true
	}
	subVar := regexp.MustCompile(`\$\{([A-Za-z0-9:]+)(?:\.[A-Za-z]+)?\}`)
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, val := range x {
				switch k {
				case "Ref":
					if s, ok := val.(string); ok && !known[s] {
						t.Errorf("%s: Ref to unknown %s", path, s)
					}
				case "Fn::GetAtt":
					if parts, ok := val.([]any); ok && !known[parts[0].(string)] {
						t.Errorf("%s: GetAtt of unknown %s", path, parts[0])
					}
				case "Fn::Sub":
					if s, ok := val.(string); ok {
						for _, m := range subVar.FindAllStringSubmatch(s, -1) {
							if !known[m[1]] {
								t.Errorf("%s: Sub of unknown %s", path, m[1])
							}
						}
					}
				}
				walk(path+"."+k, val)
			}
		case []any:
			for i, val := range x {
				walk(fmt.Sprintf("%s[%d]", path, i), val)
			}
		}
	}
	walk("Resources", tpl["Resources"])
	walk("Outputs", tpl["Outputs"])
}

// TestStateMachinesSubstitutions: each definition's ${X} is substituted, nothing more.
func TestStateMachinesSubstitutions(t *testing.T) {
	tpl, root := load(t)
	placeholder := regexp.MustCompile(`\$\{(\w+)\}`)
	n := 0
	for id, r := range tpl.Resources() {
		if r["Type"] != "AWS::Serverless::StateMachine" {
			continue
		}
		n++
		p := deploy.Props(r)
		def, err := os.ReadFile(filepath.Join(root, p["DefinitionUri"].(string)))
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		used := map[string]bool{}
		for _, m := range placeholder.FindAllStringSubmatch(string(def), -1) {
			used[m[1]] = true
		}
		subs, _ := p["DefinitionSubstitutions"].(map[string]any)
		for k := range used {
			if _, ok := subs[k]; !ok {
				t.Errorf("%s: ${%s} has no substitution", id, k)
			}
		}
		for k := range subs {
			if !used[k] {
				t.Errorf("%s: substitution %s is not used", id, k)
			}
		}
	}
	if n != 1 {
		t.Fatalf("%d state machines, want broadcast", n)
	}
}

// TestRegistrySchemasAreTheRepositorySchemas: one source of truth for the event schemas.
func TestRegistrySchemasAreTheRepositorySchemas(t *testing.T) {
	tpl, root := load(t)
	files := map[string]string{"UserOnline": "user-online.json", "UserOffline": "user-offline.json",
		"MessageDelivered": "message-delivered.json", "MessageUndeliverable": "message-undeliverable.json"}
	seen := 0
	for id, r := range tpl.Resources() {
		if r["Type"] != "AWS::EventSchemas::Schema" {
			continue
		}
		p := deploy.Props(r)
		name := strings.TrimPrefix(p["SchemaName"].(string), "wspresence@")
		file, ok := files[name]
		if !ok || p["Type"] != "JSONSchemaDraft4" {
			t.Fatalf("%s: schema %v", id, p["SchemaName"])
		}
		want, err := os.ReadFile(filepath.Join(root, "schemas", file))
		if err != nil {
			t.Fatal(err)
		}
		var a, b any
		if err := json.Unmarshal([]byte(p["Content"].(string)), &a); err != nil {
			t.Fatalf("%s content: %v", id, err)
		}
		_ = json.Unmarshal(want, &b)
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s differs from schemas/%s (regenerate the template's schema blocks)", id, file)
		}
		seen++
	}
	if seen != len(files) {
		t.Fatalf("%d schemas in the registry, want %d", seen, len(files))
	}
}

// TestOperationalSettings: the properties an operator relies on.
func TestOperationalSettings(t *testing.T) {
	tpl, root := load(t)
	rs := tpl.Resources()
	for _, tbl := range []string{"EventsTable", "ViewTable"} {
		p := deploy.Props(rs[tbl])
		if p["PointInTimeRecoverySpecification"].(map[string]any)["PointInTimeRecoveryEnabled"] != "true" {
			t.Errorf("%s has no point-in-time recovery", tbl)
		}
	}
	for _, tbl := range []string{"EventsTable", "ViewTable"} {
		if deploy.Props(rs[tbl])["StreamSpecification"].(map[string]any)["StreamViewType"] != "NEW_IMAGE" {
			t.Errorf("%s's stream is not NEW_IMAGE (the view table's carries the outbox)", tbl)
		}
	}
	// The event table has a retention: its items expire by TTL (ttl), EventRetentionDays
	// past their time, at least 2 days (the stream's 24 h, API Gateway's 2-hour
	// connections), set in every function that appends to the log.
	if ttl := deploy.Props(rs["EventsTable"])["TimeToLiveSpecification"]; ttl == nil ||
		ttl.(map[string]any)["AttributeName"] != "ttl" || ttl.(map[string]any)["Enabled"] != "true" {
		t.Errorf("EventsTable TTL %v", ttl)
	}
	if p := tpl["Parameters"].(map[string]any)["EventRetentionDays"].(map[string]any); fmt.Sprint(p["MinValue"]) != strconv.Itoa(dynamo.MinEventRetentionDays) ||
		fmt.Sprint(p["Default"]) != strconv.Itoa(dynamo.DefaultEventRetentionDays) {
		t.Errorf("EventRetentionDays %v", p)
	}
	for _, svc := range []string{"connect", "disconnect", "sender", "sweeper"} {
		if v := res(functions(t, tpl, root)[svc].props["Environment"].(map[string]any)["Variables"].(map[string]any)["EVENT_RETENTION_DAYS"]); v != "Ref:EventRetentionDays" {
			t.Errorf("%s EVENT_RETENTION_DAYS %v", svc, v)
		}
	}
	// Nothing that holds data goes with a stack deletion or a replacement.
	for _, id := range []string{"EventsTable", "ViewTable", "MessageQueue", "MessageDeadLetterQueue", "StreamFailureQueue"} {
		if rs[id]["DeletionPolicy"] != "Retain" || rs[id]["UpdateReplacePolicy"] != "Retain" {
			t.Errorf("%s: DeletionPolicy %v, UpdateReplacePolicy %v; want Retain", id, rs[id]["DeletionPolicy"], rs[id]["UpdateReplacePolicy"])
		}
	}
	fns := functions(t, tpl, root)
	stream := fns["projector"].props["Events"].(map[string]any)["Stream"].(map[string]any)["Properties"].(map[string]any)
	if !reflect.DeepEqual(stream["FunctionResponseTypes"], []any{"ReportBatchItemFailures"}) || stream["BisectBatchOnFunctionError"] != "true" ||
		stream["MaximumRetryAttempts"] == nil || stream["DestinationConfig"] == nil || res(stream["Stream"]) != "GetAtt:EventsTable.StreamArn" {
		t.Errorf("projector stream mapping %v", stream)
	}
	// Only closes wake the projector ($connect folds its open; activity is not logged).
	if f, _ := json.Marshal(stream["FilterCriteria"]); !strings.Contains(string(f), `\"type\": {\"S\": [\"ConnectionClosed\"]}`) {
		t.Errorf("projector filter %s", f)
	}
	// The outbox relay: the view table's stream, filtered to the writes that recorded
	// transitions, in order, retried a bounded number of times (the items keep what it
	// could not publish, for the reconciler), then the failure destination: a stuck record
	// never holds its shard, and no record is dropped unread for its age.
	relay := fns["publisher"].props["Events"].(map[string]any)["Stream"].(map[string]any)["Properties"].(map[string]any)
	retries, _ := strconv.Atoi(fmt.Sprint(relay["MaximumRetryAttempts"]))
	age, _ := strconv.Atoi(fmt.Sprint(relay["MaximumRecordAgeInSeconds"]))
	filter, _ := json.Marshal(relay["FilterCriteria"])
	if res(relay["Stream"]) != "GetAtt:ViewTable.StreamArn" || !reflect.DeepEqual(relay["FunctionResponseTypes"], []any{"ReportBatchItemFailures"}) ||
		relay["ParallelizationFactor"] != "1" || retries < 1 || age != -1 || relay["DestinationConfig"] == nil ||
		!strings.Contains(string(filter), `\"fresh\": {\"S\": [\"1\"]}`) {
		t.Errorf("publisher stream mapping %v (filter %s)", relay, filter)
	}
	// The queue hides a message at least six times the sender's timeout, as Lambda requires.
	visibility, _ := strconv.Atoi(deploy.Props(rs["MessageQueue"])["VisibilityTimeout"].(string))
	timeout, _ := strconv.Atoi(fns["sender"].props["Timeout"].(string))
	if timeout == 0 || visibility < 6*timeout {
		t.Errorf("queue visibility %d s, sender timeout %d s: want at least 6x", visibility, timeout)
	}
	// The WebSocket stage is redeployed on every route change.
	if deploy.Props(rs["WebSocketStage"])["AutoDeploy"] != "true" {
		t.Error("the WebSocket stage does not auto-deploy: a route change would not be deployed")
	}
	for id, r := range rs {
		if r["Type"] == "AWS::ApiGatewayV2::Deployment" {
			t.Errorf("%s: a fixed deployment is not redone when routes change", id)
		}
	}
	// The queue URL parameter is the stack's own unless named: never the original's.
	param := tpl["Parameters"].(map[string]any)["QueueUrlParameterName"].(map[string]any)
	name := deploy.Props(rs["SendMessageQueueUrlParameter"])["Name"].(map[string]any)["Fn::If"].([]any)
	if param["Default"] != "" || name[0] != "HasQueueUrlParameterName" || res(name[2]) != "Sub:/${AWS::StackName}/SendMessageQueueUrl" {
		t.Errorf("queue URL parameter default %q, name %v", param["Default"], name)
	}
	// The connection cap has the local runtime's default.
	if c := tpl["Parameters"].(map[string]any)["MaxConnectionsPerUser"].(map[string]any); c["Default"] != "10" ||
		res(fns["connect"].props["Environment"].(map[string]any)["Variables"].(map[string]any)["MAX_CONNECTIONS_PER_USER"]) != "Ref:MaxConnectionsPerUser" {
		t.Errorf("MaxConnectionsPerUser %v", c)
	}
	// The grace timers: a queue the grace function consumes with partial batch failures,
	// hidden at least six times the function's timeout, with a dead-letter queue.
	timers := fns["grace"].props["Events"].(map[string]any)["Timers"].(map[string]any)["Properties"].(map[string]any)
	graceVisibility, _ := strconv.Atoi(fmt.Sprint(deploy.Props(rs["GraceQueue"])["VisibilityTimeout"]))
	graceTimeout, _ := strconv.Atoi(fmt.Sprint(tpl["Globals"].(map[string]any)["Function"].(map[string]any)["Timeout"]))
	if res(timers["Queue"]) != "GetAtt:GraceQueue.Arn" || !reflect.DeepEqual(timers["FunctionResponseTypes"], []any{"ReportBatchItemFailures"}) ||
		graceVisibility < 6*graceTimeout || deploy.Props(rs["GraceQueue"])["RedrivePolicy"] == nil {
		t.Errorf("grace queue mapping %v, visibility %d", timers, graceVisibility)
	}
	queue := fns["sender"].props["Events"].(map[string]any)["Queue"].(map[string]any)["Properties"].(map[string]any)
	if !reflect.DeepEqual(queue["FunctionResponseTypes"], []any{"ReportBatchItemFailures"}) {
		t.Errorf("queue mapping %v", queue)
	}
	if redrive := deploy.Props(rs["MessageQueue"])["RedrivePolicy"].(map[string]any); res(redrive["deadLetterTargetArn"]) != "GetAtt:MessageDeadLetterQueue.Arn" {
		t.Errorf("redrive %v", redrive)
	}
	if deploy.Props(rs["SendMessageQueueUrlParameter"])["Value"].(map[string]any)["Ref"] != "MessageQueue" {
		t.Error("the queue URL parameter does not hold the queue URL")
	}
	route := deploy.Props(rs["ConnectRoute"])
	auth := deploy.Props(rs["WebSocketAuthorizer"])
	if route["AuthorizationType"] != "CUSTOM" || !reflect.DeepEqual(auth["IdentitySource"], []any{"route.request.querystring.Authorization"}) {
		t.Errorf("$connect is not authorized from the Authorization query string: %v %v", route, auth)
	}
	alarms := 0
	for _, r := range rs {
		if r["Type"] == "AWS::CloudWatch::Alarm" {
			alarms++
		}
	}
	if alarms != 11+len(fns) {
		t.Errorf("%d alarms, want the three DLQs, stream failures, the iterator age of both streams, undecodable outboxes, "+
			"the two stall alarms, the age of both queues and one per function", alarms)
	}
	// The stall alarms do not depend on the stalled part: the reconciler's metrics, with
	// missing data breaching (a reconciler that stops alarms).
	for _, id := range []string{"UnpublishedTransitionsAlarm", "UnrepairedGhostAlarm"} {
		p := deploy.Props(rs[id])
		if p["TreatMissingData"] != "breaching" || p["Namespace"] != "wspresence" {
			t.Errorf("%s: %v", id, p)
		}
	}
	// The queues the reconciler reads hide a message for longer than its run.
	sweeperTimeout, _ := strconv.Atoi(fmt.Sprint(fns["sweeper"].props["Timeout"]))
	for _, q := range []string{"GraceDeadLetterQueue", "StreamFailureQueue"} {
		v, _ := strconv.Atoi(fmt.Sprint(deploy.Props(rs[q])["VisibilityTimeout"]))
		if sweeperTimeout == 0 || v <= sweeperTimeout {
			t.Errorf("%s hides a message %d s, the reconciler runs up to %d s", q, v, sweeperTimeout)
		}
	}
	for _, out := range []string{"WebSocketUrl", "HttpApiUrl", "SendMessageQueueUrl", "EventBusName"} {
		if _, ok := tpl["Outputs"].(map[string]any)[out]; !ok {
			t.Errorf("no output %s", out)
		}
	}
}

// TestNoDependencyCycles: CloudFormation refuses a template whose resources depend on
// each other in a circle (through Ref, GetAtt, Sub or DependsOn).
func TestNoDependencyCycles(t *testing.T) {
	tpl, _ := load(t)
	rs := tpl.Resources()
	subVar := regexp.MustCompile(`\$\{([A-Za-z0-9]+)(?:\.[A-Za-z]+)?\}`)
	deps := map[string]map[string]bool{}
	var collect func(id string, v any)
	collect = func(id string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, val := range x {
				switch k {
				case "Ref":
					if s, ok := val.(string); ok && rs[s] != nil {
						deps[id][s] = true
					}
				case "Fn::GetAtt":
					if parts, ok := val.([]any); ok && rs[parts[0].(string)] != nil {
						deps[id][parts[0].(string)] = true
					}
				case "Fn::Sub":
					if s, ok := val.(string); ok {
						for _, m := range subVar.FindAllStringSubmatch(s, -1) {
							if rs[m[1]] != nil {
								deps[id][m[1]] = true
							}
						}
					}
				}
				collect(id, val)
			}
		case []any:
			for _, val := range x {
				collect(id, val)
			}
		}
	}
	for id, r := range rs {
		deps[id] = map[string]bool{}
		collect(id, r["Properties"])
		switch d := r["DependsOn"].(type) {
		case string:
			deps[id][d] = true
		case []any:
			for _, x := range d {
				deps[id][x.(string)] = true
			}
		}
	}
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(id string, path []string)
	visit = func(id string, path []string) {
		switch state[id] {
		case 1:
			t.Fatalf("dependency cycle: %s", strings.Join(append(path, id), " -> "))
		case 2:
			return
		}
		state[id] = 1
		for d := range deps[id] {
			visit(d, append(path, id))
		}
		state[id] = 2
	}
	for id := range rs {
		visit(id, nil)
	}
}

// resolve returns the resources the template creates with the given parameters: their
// conditions evaluated, Fn::If resolved and AWS::NoValue dropped, as CloudFormation does.
func resolve(tpl deploy.Template, params map[string]string) map[string]any {
	conds := map[string]bool{}
	var cond func(any) bool
	cond = func(c any) bool {
		m := c.(map[string]any)
		for k, val := range m {
			switch k {
			case "Condition":
				return cond(tpl["Conditions"].(map[string]any)[val.(string)])
			case "Fn::Equals":
				args := val.([]any)
				str := func(a any) string {
					if r, ok := a.(map[string]any); ok {
						return params[r["Ref"].(string)]
					}
					return a.(string)
				}
				return str(args[0]) == str(args[1])
			case "Fn::Not":
				return !cond(val.([]any)[0])
			case "Fn::And":
				for _, a := range val.([]any) {
					if !cond(a) {
						return false
					}
				}
				return true
			}
		}
		panic(fmt.Sprintf("condition %v", c))
	}
	for name, c := range tpl["Conditions"].(map[string]any) {
		conds[name] = cond(c)
	}
	var walk func(any) any
	walk = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			if args, ok := x["Fn::If"].([]any); ok {
				if conds[args[0].(string)] {
					return walk(args[1])
				}
				return walk(args[2])
			}
			if x["Ref"] == "AWS::NoValue" {
				return nil
			}
			out := map[string]any{}
			for k, val := range x {
				if w := walk(val); w != nil {
					out[k] = w
				}
			}
			return out
		case []any:
			var out []any
			for _, e := range x {
				if w := walk(e); w != nil {
					out = append(out, w)
				}
			}
			return out
		}
		return v
	}
	out := map[string]any{}
	for id, r := range tpl.Resources() {
		if c, ok := r["Condition"].(string); ok && !conds[c] {
			continue
		}
		out[id] = walk(r)
	}
	return out
}

// TestRestAuthMode: the RestAuthMode parameter sets both REST routes to IAM, to the API-key
// authorizer (which then exists, with its function, role and permission), or to none.
func TestRestAuthMode(t *testing.T) {
	tpl, _ := load(t)
	param := tpl["Parameters"].(map[string]any)["RestAuthMode"].(map[string]any)
	if param["Default"] != "IAM" || !reflect.DeepEqual(param["AllowedValues"], []any{"IAM", "ApiKey", "None"}) {
		t.Fatalf("RestAuthMode %v", param)
	}
	routes := map[string]string{"OnlineListRoute": "GET /user/online", "UserStatusRoute": "GET /user/{userId}/online"}
	apiKeyOnly := []string{"RestApiKeyAuthorizer", "RestAuthorizerInvokePermission", "WebSocketAdaptorRestAuthorizerFunction",
		"WebSocketAdaptorRestAuthorizerRole", "WebSocketAdaptorRestAuthorizerLogGroup", "WebSocketAdaptorRestAuthorizerErrorsAlarm"}
	for mode, want := range map[string]string{"IAM": "AWS_IAM", "ApiKey": "CUSTOM", "None": "NONE"} {
		rs := resolve(tpl, map[string]string{"RestAuthMode": mode, "JwtSecretKmsKeyArn": "", "AlarmTopicArn": ""})
		for id, key := range routes {
			p := rs[id].(map[string]any)["Properties"].(map[string]any)
			if p["RouteKey"] != key || p["AuthorizationType"] != want || res(p["Target"]) != "Sub:integrations/${OnlineIntegration}" {
				t.Errorf("%s: %s %v", mode, id, p)
			}
			if authz, has := p["AuthorizerId"]; has != (mode == "ApiKey") || (has && res(authz) != "Ref:RestApiKeyAuthorizer") {
				t.Errorf("%s: %s authorizer %v", mode, id, authz)
			}
		}
		for _, id := range apiKeyOnly {
			if _, has := rs[id]; has != (mode == "ApiKey") {
				t.Errorf("%s: resource %s present = %v", mode, id, has)
			}
		}
		if mode == "ApiKey" {
			a := rs["RestApiKeyAuthorizer"].(map[string]any)["Properties"].(map[string]any)
			if a["AuthorizerPayloadFormatVersion"] != "2.0" || a["EnableSimpleResponses"] != "true" || a["AuthorizerResultTtlInSeconds"] != "0" {
				t.Errorf("authorizer %v", a)
			}
		}
	}
	for _, name := range []string{"JwtAlgorithms", "JwtExpiryRequired"} {
		if _, ok := tpl["Parameters"].(map[string]any)[name]; !ok {
			t.Errorf("no parameter %s", name)
		}
	}
}

// TestGraceFitsItsTimer: the longest grace period the template accepts is the one the
// function accepts, and a timer message can be delayed that long.
func TestGraceFitsItsTimer(t *testing.T) {
	tpl, _ := load(t)
	param := tpl["Parameters"].(map[string]any)["OfflineGraceSeconds"].(map[string]any)
	maxGrace, _ := strconv.Atoi(fmt.Sprint(param["MaxValue"]))
	if maxGrace != grace.MaxGraceSeconds || time.Duration(maxGrace)*time.Second > sqsdelay.MaxDelay {
		t.Fatalf("OfflineGraceSeconds MaxValue %d, the function's bound %d, the queue's longest delay %v", maxGrace, grace.MaxGraceSeconds, sqsdelay.MaxDelay)
	}
}
