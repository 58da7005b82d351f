package lambdart

import (
	"bytes"
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/token-vendor/token-vendor/pkg/obs"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
)

// TestRefreshLagAlarmQuietAfterReKey: a deploy that re-keys (a provider's
// token_url changed, so its registration fingerprint did) and removes a
// provider leaves keys the refresher can never renew. Ten scheduled runs a
// minute apart on a fake clock, each printing its EMF as a run does: the
// printed RefreshLag's Maximum stays under RefreshLagAlarm's threshold (read
// from template.yaml) and RefreshDue is 0 in every run. Before, the old
// keys were skipped every run and RefreshLag grew from 120 s by a minute a
// run, firing the alarm right after the deploy.
func TestRefreshLagAlarmQuietAfterReKey(t *testing.T) {
	root, err := LoadTemplate()
	if err != nil {
		t.Fatal(err)
	}
	threshold, err := strconv.ParseFloat(Get(root, "Resources", "RefreshLagAlarm", "Properties", "Threshold").Value, 64)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	clock := vendtest.NewClock()
	up := vendtest.NewUpstream(t)
	provs := vendtest.NewProviders(up.Defs)
	var out bytes.Buffer
	metrics := obs.NewMetrics(&out, "TokenVendor")
	v := vend.New(provs, vendtest.Client(clock), store.NewMemory(clock.Now), vend.Options{Now: clock.Now, Sleep: clock.Sleep,
		DisableRefreshAhead: true, L1MaxAge: -1, Observer: metrics})
	for _, p := range []string{"demo-k2", "demo-mobi"} {
		for _, sc := range []string{"a", "b", "c"} {
			if _, err := v.Token(ctx, vend.Request{Provider: p, Scope: sc, MinTTL: -1}); err != nil {
				t.Fatal(err)
			}
		}
	}
	moved := *up.Defs["demo-k2"]
	moved.TokenURL = up.URL + sandbox.K2TokenPath + "?tenant=2"
	provs.Set(&moved)
	provs.Delete("demo-mobi")
	clock.Advance(50 * time.Minute) // the old keys are past refresh_at
	for run := range 10 {
		out.Reset()
		if _, err := v.RefreshDue(ctx, vend.RefreshOptions{Horizon: time.Minute, Exclusive: true}); err != nil {
			t.Fatal(err)
		}
		if err := metrics.Flush(); err != nil {
			t.Fatal(err)
		}
		lag, ok := EMFMax(out.String())[Metric{"TokenVendor", "RefreshLag", ""}]
		due := EMF(out.String())[Metric{"TokenVendor", "RefreshDue", ""}]
		if !ok {
			t.Fatalf("run %d printed no fleet-wide RefreshLag:\n%s", run, out.String())
		}
		if lag >= threshold || due != 0 {
			t.Fatalf("run %d after the re-key printed RefreshLag %v s (alarm at %v) and RefreshDue %v", run, lag, threshold, due)
		}
		clock.Advance(time.Minute)
	}
}
