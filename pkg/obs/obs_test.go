package obs

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambdacontext"

	"github.com/token-vendor/token-vendor/pkg/vend"
)

// emfDoc is the EMF shape CloudWatch requires.
type emfDoc struct {
	AWS struct {
		Timestamp         int64 `json:"Timestamp"`
		CloudWatchMetrics []struct {
			Namespace  string     `json:"Namespace"`
			Dimensions [][]string `json:"Dimensions"`
			Metrics    []struct {
				Name string `json:"Name"`
				Unit string `json:"Unit"`
			} `json:"Metrics"`
		} `json:"CloudWatchMetrics"`
	} `json:"_aws"`
}

func TestEMFDocumentsAreValidAndCarryDimensions(t *testing.T) {
	var buf bytes.Buffer
	m := NewMetrics(&buf, "TokenVendor")
	m.Vended("kopokopo", vend.FromL1, time.Minute)
	m.Vended("kopokopo", vend.FromL1, time.Minute)
	m.Vended("kopokopo", vend.FromUpstream, time.Hour)
	m.Upstream("kopokopo", 120*time.Millisecond, "")
	m.Upstream("mobi", 3*time.Second, "server_error")
	m.Event("kopokopo", "cooldown_opened")
	m.Event("kopokopo", "unavailable")
	m.Event("kopokopo", "not-a-documented-event")
	m.Value("kopokopo", "RefreshLifeLeft", "Seconds", 690)
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	seen := map[string]map[string]any{}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var doc emfDoc
		var raw map[string]any
		if err := json.Unmarshal([]byte(line), &doc); err != nil || json.Unmarshal([]byte(line), &raw) != nil {
			t.Fatalf("not JSON: %s", line)
		}
		if len(doc.AWS.CloudWatchMetrics) != 1 || doc.AWS.Timestamp == 0 || doc.AWS.CloudWatchMetrics[0].Namespace != "TokenVendor" {
			t.Fatalf("bad _aws: %s", line)
		}
		d := doc.AWS.CloudWatchMetrics[0]
		for _, set := range d.Dimensions {
			for _, dim := range set {
				if _, ok := raw[dim].(string); !ok {
					t.Fatalf("dimension %s has no string value: %s", dim, line)
				}
			}
		}
		for _, metric := range d.Metrics {
			if _, ok := raw[metric.Name]; !ok || metric.Unit == "" {
				t.Fatalf("metric %s has no value: %s", metric.Name, line)
			}
			key := metric.Name + "/" + raw["Provider"].(string)
			if s, ok := raw["Source"].(string); ok {
				key += "/" + s
			}
			if s, ok := raw["Outcome"].(string); ok {
				key += "/" + s
			}
			seen[key] = raw
		}
	}
	want := map[string]float64{
		"Vends/kopokopo/l1": 2, "Vends/kopokopo/upstream": 1, "UpstreamRequests/kopokopo/ok": 1,
		"UpstreamRequests/mobi/server_error": 1, "UpstreamErrors/mobi": 1, "CooldownsOpened/kopokopo": 1, "Unavailable/kopokopo": 1,
	}
	for k, v := range want {
		doc, ok := seen[k]
		if !ok {
			t.Fatalf("missing %s in %v", k, seen)
		}
		name := strings.Split(k, "/")[0]
		if doc[name].(float64) != v {
			t.Fatalf("%s = %v, want %v", k, doc[name], v)
		}
	}
	if v, ok := seen["RefreshLifeLeft/kopokopo"]; !ok || v["RefreshLifeLeft"].([]any)[0].(float64) != 690 {
		t.Fatalf("life left at refresh %v", seen["RefreshLifeLeft/kopokopo"])
	}
	if lat, ok := seen["UpstreamLatency/mobi"]; !ok || lat["UpstreamLatency"].([]any)[0].(float64) != 3000 {
		t.Fatalf("latency %v", seen["UpstreamLatency/mobi"])
	}
	buf.Reset()
	m.Flush()
	if buf.Len() != 0 {
		t.Fatalf("flush did not reset: %s", buf.String())
	}
	var off *Metrics = NewMetrics(&buf, "off")
	off.Vended("x", vend.FromL1, 0)
	off.Event("x", "unavailable")
	if off.Flush() != nil || buf.Len() != 0 {
		t.Fatal("disabled metrics wrote something")
	}
}

func BenchmarkVendedRecording(b *testing.B) {
	m := NewMetrics(&bytes.Buffer{}, "TokenVendor")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		m.Vended("kopokopo", vend.FromL1, time.Minute)
	}
}

func TestLoggerAddsRequestID(t *testing.T) {
	var buf bytes.Buffer
	log := NewLogger(&buf, "debug")
	ctx := lambdacontext.NewContext(context.Background(), &lambdacontext.LambdaContext{AwsRequestID: "abc-123"})
	log.With("k", "v").InfoContext(ctx, "hello")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil || rec["request_id"] != "abc-123" || rec["k"] != "v" {
		t.Fatalf("%s", buf.String())
	}
}

// The alarms and the dashboard watch fleet-wide metrics (no Provider
// dimension). CloudWatch treats each dimension set as its own metric, so
// every document must publish the aggregate set beside the per-provider one.
func TestEveryMetricPublishedFleetWide(t *testing.T) {
	var buf bytes.Buffer
	m := NewMetrics(&buf, "TokenVendor")
	m.Vended("p", vend.FromL2, time.Minute)
	m.Upstream("p", time.Millisecond, "server_error")
	m.Event("p", "refresh_failed")
	m.Value("p", "RefreshLifeLeft", "Seconds", 30)
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var doc struct {
			AWS struct {
				CloudWatchMetrics []struct{ Dimensions [][]string }
			} `json:"_aws"`
		}
		if err := json.Unmarshal([]byte(line), &doc); err != nil {
			t.Fatal(err)
		}
		dims := doc.AWS.CloudWatchMetrics[0].Dimensions
		if len(dims) < 2 || dims[0][0] != "Provider" || slices.Contains(dims[1], "Provider") || len(dims[1]) != len(dims[0])-1 ||
			len(dims[len(dims)-1]) != 0 {
			t.Fatalf("dimension sets %v in %s", dims, line)
		}
		n++
	}
	if n < 5 {
		t.Fatalf("only %d documents", n)
	}
}
