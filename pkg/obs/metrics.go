package obs

import (
	"encoding/json"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/token-vendor/token-vendor/pkg/vend"
)

// Metrics aggregates vendor events in memory and writes them as CloudWatch
// Embedded Metric Format documents on Flush. Recording is a map read and an
// atomic add: nothing on the request path writes or waits on I/O. A nil
// *Metrics records nothing.
type Metrics struct {
	w         io.Writer
	namespace string
	now       func() time.Time

	mu       sync.RWMutex
	counters map[metricKey]*atomic.Int64
	valMu    sync.Mutex
	values   map[valueKey][]float64 // samples since the last flush, at most 100 per key
	writeMu  sync.Mutex
}

type metricKey struct {
	name, provider, dimName, dimValue string
}

type valueKey struct{ metric, provider, unit string }

// NewMetrics writes EMF to w under namespace; "off" or "" disables metrics.
func NewMetrics(w io.Writer, namespace string) *Metrics {
	if namespace == "" || namespace == "off" {
		return nil
	}
	return &Metrics{w: w, namespace: namespace, now: time.Now, counters: map[metricKey]*atomic.Int64{}, values: map[valueKey][]float64{}}
}

func (m *Metrics) add(k metricKey, n int64) {
	if m == nil {
		return
	}
	m.mu.RLock()
	c := m.counters[k]
	m.mu.RUnlock()
	if c == nil {
		m.mu.Lock()
		if c = m.counters[k]; c == nil {
			c = new(atomic.Int64)
			m.counters[k] = c
		}
		m.mu.Unlock()
	}
	c.Add(n)
}

// Vended counts a vend by source (l1, l2, upstream).
func (m *Metrics) Vended(provider string, src vend.Source, _ time.Duration) {
	m.add(metricKey{"Vends", provider, "Source", string(src)}, 1)
}

// Upstream counts a token request by outcome ("ok" or the error code) and
// keeps its latency.
func (m *Metrics) Upstream(provider string, latency time.Duration, errCode string) {
	if m == nil {
		return
	}
	outcome := errCode
	if outcome == "" {
		outcome = "ok"
	}
	m.add(metricKey{"UpstreamRequests", provider, "Outcome", outcome}, 1)
	if errCode != "" {
		m.add(metricKey{"UpstreamErrors", provider, "ErrorCode", errCode}, 1)
	}
	m.Value(provider, "UpstreamLatency", "Milliseconds", float64(latency.Microseconds())/1000)
}

// Value keeps a sample of a distribution; EMF takes up to 100 values per
// document, so later samples in the same flush interval are dropped.
func (m *Metrics) Value(provider, metric, unit string, v float64) {
	if m == nil {
		return
	}
	k := valueKey{metric, provider, unit}
	m.valMu.Lock()
	if l := m.values[k]; len(l) < 100 {
		m.values[k] = append(l, v)
	}
	m.valMu.Unlock()
}

// eventMetrics names the metric each core event is counted under.
var eventMetrics = map[string]string{
	"lease_wait":       "LeaseWaits",
	"cooldown_opened":  "CooldownsOpened",
	"cooldown_refusal": "CooldownRefusals",
	"store_fallback":   "StoreFallbacks",
	"store_write_lost": "StoreWritesLost",
	"refreshed":        "Refreshes",
	"refresh_failed":   "RefreshFailures",
	"revoked":          "Revocations",
	"retired":          "KeysRetired",
	"key_limit":        "KeyLimitRefusals",
	"caller_refused":   "CallerRefusals",
	"unsealed_record":  "UnsealedRecords",
	// Named in template.yaml's alarms.
	"upstream_rejected": "UpstreamRejections",
	"unavailable":       "Unavailable",
}

// Event counts a named core event.
func (m *Metrics) Event(provider, name string) {
	if metric, ok := eventMetrics[name]; ok {
		m.add(metricKey{metric, provider, "", ""}, 1)
	}
}

// Count adds n to a metric with only the Provider dimension.
func (m *Metrics) Count(provider, metric string, n int64) {
	m.add(metricKey{metric, provider, "", ""}, n)
}

type emfDirective struct {
	Namespace  string      `json:"Namespace"`
	Dimensions [][]string  `json:"Dimensions"`
	Metrics    []emfMetric `json:"Metrics"`
}

type emfMetric struct {
	Name string `json:"Name"`
	Unit string `json:"Unit"`
}

// directive publishes a metric per provider, and as fleet-wide aggregates
// with Provider left out (and, for a metric with an extra dimension such as
// Source, its total as well). CloudWatch treats each dimension set as
// its own metric; the alarms and the dashboard watch the aggregate, which
// with Provider alone would never exist.
func (m *Metrics) directive(ts int64, name, unit, provider string, extra []string) map[string]any {
	sets := [][]string{append([]string{"Provider"}, extra...), append([]string{}, extra...)}
	if provider == "" {
		sets = sets[1:] // a run-wide figure (the refresher's backlog): fleet-wide only
	}
	if len(extra) > 0 {
		sets = append(sets, []string{}) // the fleet-wide total across the extra dimension too
	}
	return map[string]any{"Timestamp": ts, "CloudWatchMetrics": []emfDirective{{
		Namespace: m.namespace, Dimensions: sets, Metrics: []emfMetric{{Name: name, Unit: unit}}}}}
}

// Flush writes one EMF document per metric and dimension set recorded since
// the last flush, and resets them.
func (m *Metrics) Flush() error {
	if m == nil {
		return nil
	}
	type doc = map[string]any
	var docs []doc
	ts := m.now().UnixMilli()
	m.mu.Lock()
	keys := make([]metricKey, 0, len(m.counters))
	for k, c := range m.counters {
		if c.Load() != 0 {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].name+keys[i].provider+keys[i].dimValue < keys[j].name+keys[j].provider+keys[j].dimValue
	})
	for _, k := range keys {
		n := m.counters[k].Swap(0)
		d := doc{"Provider": k.provider, k.name: n}
		var extra []string
		if k.dimName != "" {
			extra = []string{k.dimName}
			d[k.dimName] = k.dimValue
		}
		if k.provider == "" {
			delete(d, "Provider")
		}
		d["_aws"] = m.directive(ts, k.name, "Count", k.provider, extra)
		docs = append(docs, d)
	}
	m.mu.Unlock()
	m.valMu.Lock()
	for k, vals := range m.values {
		d := doc{"Provider": k.provider, k.metric: vals}
		if k.provider == "" {
			delete(d, "Provider")
		}
		d["_aws"] = m.directive(ts, k.metric, k.unit, k.provider, nil)
		docs = append(docs, d)
	}
	clear(m.values)
	m.valMu.Unlock()
	m.writeMu.Lock()
	defer m.writeMu.Unlock()
	enc := json.NewEncoder(m.w)
	for _, d := range docs {
		if err := enc.Encode(d); err != nil {
			return err
		}
	}
	return nil
}
