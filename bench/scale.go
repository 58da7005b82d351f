package main

// Cost that grows with use, not with the table (issue 12): what one
// refresher run reads through the refresh index against the full-Scan
// design on the same table, and a simulated week in which most keys stop
// being used.

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/token-vendor/token-vendor/pkg/envelope"
	"github.com/token-vendor/token-vendor/pkg/provider"
	"github.com/token-vendor/token-vendor/pkg/registry"
	"github.com/token-vendor/token-vendor/pkg/sandbox"
	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/store/dynamostore"
	"github.com/token-vendor/token-vendor/pkg/upstream"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
	"github.com/token-vendor/token-vendor/tests/testenv"
)

// scaleRow is one table size: a refresher run's reads both ways.
type scaleRow struct {
	Keys, Due, ItemBytes int
	// The full-Scan design: one strongly consistent Scan with a filter.
	ScanRCU   float64
	ScanItems int // items DynamoDB read (ScannedCount)
	ScanTime  time.Duration
	// The refresh index: one Query per shard, then a consistent GetItem per
	// due key under the lease protocol.
	IndexRCU, ConfirmRCU float64
	IndexItems           int
	IndexTime            time.Duration
	DueOwnRCU            float64 // the due keys' own size in read units (consistent reads)
}

// capacity counts the read units a DynamoDB client consumes.
type capacity struct {
	dynamostore.API
	units atomic.Int64 // in thousandths of a unit
}

func (c *capacity) add(cc *ddbtypes.ConsumedCapacity) {
	if cc != nil && cc.CapacityUnits != nil {
		c.units.Add(int64(*cc.CapacityUnits * 1000))
	}
}

func (c *capacity) take() float64 { return float64(c.units.Swap(0)) / 1000 }

func (c *capacity) Query(ctx context.Context, in *dynamodb.QueryInput, o ...func(*dynamodb.Options)) (*dynamodb.QueryOutput, error) {
	in.ReturnConsumedCapacity = ddbtypes.ReturnConsumedCapacityTotal
	out, err := c.API.Query(ctx, in, o...)
	if err == nil {
		c.add(out.ConsumedCapacity)
	}
	return out, err
}

func (c *capacity) GetItem(ctx context.Context, in *dynamodb.GetItemInput, o ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error) {
	in.ReturnConsumedCapacity = ddbtypes.ReturnConsumedCapacityTotal
	out, err := c.API.GetItem(ctx, in, o...)
	if err == nil {
		c.add(out.ConsumedCapacity)
	}
	return out, err
}

// sealedSize is the size of a production token at rest: a 1 KB JWT sealed
// with a KMS data key through moto, as the envelope does it.
func sealedSize(ctx context.Context) (int, error) {
	moto, err := testenv.MotoEndpoint()
	if err != nil {
		return 0, err
	}
	api := kms.NewFromConfig(testenv.Config(), func(o *kms.Options) { o.BaseEndpoint = aws.String(moto) })
	key, err := api.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: kmstypes.KeySpecSymmetricDefault, KeyUsage: kmstypes.KeyUsageTypeEncryptDecrypt})
	if err != nil {
		return 0, err
	}
	tok := make([]byte, 1024)
	blob, err := envelope.New(api, aws.ToString(key.KeyMetadata.KeyId)).Seal(ctx, tok, map[string]string{"provider": "p", "pk": "token#p"},
		map[string]string{"expires_at": "2000000000", "issued_at": "1999996400", "token_type": "Bearer", "scope": "", "resource": "", "audience": ""})
	return len(blob), err
}

// fillTable writes n token records straight to DynamoDB Local, as the
// vendor would have left them (dynamostore.Marshal), a fraction due now.
func fillTable(ctx context.Context, api *dynamodb.Client, table string, n, due, sealed int, now time.Time) (int, error) {
	var (
		next     atomic.Int64
		firstErr error
		once     sync.Once
		wg       sync.WaitGroup
		size     atomic.Int64
	)
	for w := 0; w < 8; w++ {
		wg.Go(func() {
			for {
				start := int(next.Add(25)) - 25
				if start >= n {
					return
				}
				var reqs []ddbtypes.WriteRequest
				for i := start; i < min(start+25, n); i++ {
					blob := make([]byte, sealed)
					rand.Read(blob)
					refresh := now.Add(48 * time.Minute)
					if i%(n/due) == 0 {
						refresh = now.Add(-time.Duration(i%60) * time.Second)
					}
					it := &store.Item{PK: fmt.Sprintf("token#p%02d#3f9a1c2b7d4e5f60#scope-%06d", i%20, i), Provider: fmt.Sprintf("p%02d", i%20),
						Scope: fmt.Sprintf("scope-%06d", i), Fingerprint: "3f9a1c2b7d4e5f60", Token: store.Secret{Sealed: blob}, TokenType: "Bearer",
						IssuedAt: now.Add(-10 * time.Minute).Unix(), ExpiresAt: refresh.Add(12 * time.Minute).Unix(), RefreshAt: refresh.Unix(),
						Version: now.UnixMicro() + int64(i), LastUsedAt: now.Add(-time.Minute).Unix(), WriteID: "0123456789abcdef"}
					av, err := dynamostore.Marshal(it)
					if err != nil {
						once.Do(func() { firstErr = err })
						return
					}
					if i == 0 {
						size.Store(int64(itemSize(av)))
					}
					reqs = append(reqs, ddbtypes.WriteRequest{PutRequest: &ddbtypes.PutRequest{Item: av}})
				}
				for len(reqs) > 0 {
					out, err := api.BatchWriteItem(ctx, &dynamodb.BatchWriteItemInput{RequestItems: map[string][]ddbtypes.WriteRequest{table: reqs}})
					if err != nil {
						once.Do(func() { firstErr = err })
						return
					}
					reqs = out.UnprocessedItems[table]
				}
			}
		})
	}
	wg.Wait()
	return int(size.Load()), firstErr
}

// itemSize approximates DynamoDB's item size: attribute names plus values.
func itemSize(av map[string]ddbtypes.AttributeValue) int {
	n := 0
	for k, v := range av {
		n += len(k)
		switch x := v.(type) {
		case *ddbtypes.AttributeValueMemberS:
			n += len(x.Value)
		case *ddbtypes.AttributeValueMemberB:
			n += len(x.Value)
		case *ddbtypes.AttributeValueMemberN:
			n += len(x.Value)/2 + 1
		default:
			n++
		}
	}
	return n
}

func refreshScale(r *report) error {
	ctx := context.Background()
	sizes := []int{1000, 10000, 100000}
	if r.quick {
		sizes = []int{200, 2000}
	}
	sealed, err := sealedSize(ctx)
	if err != nil {
		return err
	}
	ep := os.Getenv(testenv.EnvDynamoDB)
	api := testenv.DynamoDBClient(ep)
	for _, n := range sizes {
		table := "scale-" + testenv.RandomSuffix()
		if err := dynamostore.CreateTable(ctx, api, table); err != nil {
			return err
		}
		now := time.Now()
		due := max(1, n/100)
		size, err := fillTable(ctx, api, table, n, due, sealed, now)
		if err != nil {
			return err
		}
		row := scaleRow{Keys: n, Due: due, ItemBytes: size}
		row.DueOwnRCU = float64(due) * float64((size+4095)/4096)
		before := now.Add(90 * time.Second) // the next run's horizon and jitter

		// The full-Scan design, as the refresher did it before the index.
		start := time.Now()
		p := dynamodb.NewScanPaginator(api, &dynamodb.ScanInput{TableName: aws.String(table), ConsistentRead: aws.Bool(true),
			FilterExpression:          aws.String("begins_with(pk, :t) AND refresh_at < :b"),
			ExpressionAttributeValues: map[string]ddbtypes.AttributeValue{":t": &ddbtypes.AttributeValueMemberS{Value: "token#"}, ":b": &ddbtypes.AttributeValueMemberN{Value: fmt.Sprint(before.Unix())}},
			ReturnConsumedCapacity:    ddbtypes.ReturnConsumedCapacityTotal})
		found := 0
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return err
			}
			row.ScanItems += int(page.ScannedCount)
			found += int(page.Count)
			if page.ConsumedCapacity != nil && page.ConsumedCapacity.CapacityUnits != nil {
				row.ScanRCU += *page.ConsumedCapacity.CapacityUnits
			}
		}
		row.ScanTime = time.Since(start)

		// The refresh index, through the store the refresher uses.
		c := &capacity{API: api}
		st := dynamostore.New(c, table)
		start = time.Now()
		items, err := st.Due(ctx, before, nil)
		if err != nil {
			return err
		}
		row.IndexTime = time.Since(start)
		row.IndexRCU, row.IndexItems = c.take(), len(items)
		// Each due key is then read consistently under the lease protocol.
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16)
		for _, it := range items {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				st.Get(ctx, it.PK, true)
			})
		}
		wg.Wait()
		row.ConfirmRCU = c.take()
		if found != due || len(items) != due {
			return fmt.Errorf("%d keys: scan found %d due, index %d, want %d", n, found, len(items), due)
		}
		r.scale = append(r.scale, row)
		api.DeleteTable(ctx, &dynamodb.DeleteTableInput{TableName: aws.String(table)})
	}
	return nil
}

// weekResult is the simulated week: most keys go idle after a day.
type weekResult struct {
	Keys, Used, Days int
	IdleAfter        time.Duration
	// Upstream token requests for the keys that went idle, after they did
	// (+ IDLE_AFTER), with idle retirement and without it (renewed for ever).
	IdleUpstream, IdleUpstreamForever int
	UsedUpstream                      int
	LiveAtEnd, LiveAtEndForever       int // records holding an unexpired token at the end (what TTL leaves)
}

// scopeCounter counts upstream requests per scope, on the fake clock.
type scopeCounter struct {
	vend.Fetcher
	now          func() time.Time
	after        time.Time
	mu           sync.Mutex
	total, later map[string]int // all requests; requests at or after `after`
}

func (s *scopeCounter) Fetch(ctx context.Context, def *provider.Definition, key provider.Key) (*upstream.Token, error) {
	s.mu.Lock()
	s.total[key.Scopes[0]]++
	if !s.now().Before(s.after) {
		s.later[key.Scopes[0]]++
	}
	s.mu.Unlock()
	return s.Fetcher.Fetch(ctx, def, key)
}

func simulatedWeek(r *report) error {
	keys, days := 1000, 7
	if r.quick {
		keys, days = 100, 3
	}
	used := keys / 10
	idleAfter := 24 * time.Hour
	res := weekResult{Keys: keys, Used: used, Days: days, IdleAfter: idleAfter}
	for _, retire := range []bool{true, false} {
		up, live, usedUp, err := week(keys, used, days, idleAfter, retire)
		if err != nil {
			return err
		}
		if retire {
			res.IdleUpstream, res.LiveAtEnd, res.UsedUpstream = up, live, usedUp
		} else {
			res.IdleUpstreamForever, res.LiveAtEndForever = up, live
		}
	}
	r.week = res
	return nil
}

// week runs the refresher every 10 minutes (a 10-minute horizon stands for
// the minute-by-minute runs) and has callers use every key on day 1 and
// only the used ones afterwards, once an hour, each through a fresh
// instance's L2 read. It returns upstream requests for the idle keys after
// they became idle + IDLE_AFTER, live records at the end, and requests for
// the used keys.
func week(keys, used, days int, idleAfter time.Duration, retire bool) (idleUp, live, usedUp int, err error) {
	ctx := context.Background()
	clock := vendtest.NewClock()
	sb := sandbox.New()
	srv := httptest.NewServer(sb.Handler())
	defer srv.Close()
	defs := sandbox.DemoProviders(sb, srv.URL)
	defs["demo-k2"].MaxKeys = keys + 1
	st := store.NewMemory(clock.Now)
	start := clock.Now()
	counter := &scopeCounter{Fetcher: &upstream.Client{Now: clock.Now}, now: clock.Now, after: start.Add(24*time.Hour + idleAfter), total: map[string]int{}, later: map[string]int{}}
	o := vend.Options{Now: clock.Now, Sleep: clock.Sleep, DisableRefreshAhead: true, L1MaxAge: -1, IdleAfter: idleAfter}
	if !retire {
		o.IdleAfter = 100 * 365 * 24 * time.Hour
	}
	provs := registry.NewStatic(defs)
	refresher := vend.New(provs, counter, st, o)
	scope := func(i int) string { return fmt.Sprintf("k%04d", i) }
	var caller *vend.Vendor
	for step := 0; clock.Now().Before(start.Add(time.Duration(days) * 24 * time.Hour)); step++ {
		if step%6 == 0 { // every hour, callers use their keys
			caller = vend.New(provs, counter, st, o) // a fresh instance: its reads go to the table
			n := used
			if clock.Now().Before(start.Add(24 * time.Hour)) {
				n = keys
			}
			for i := 0; i < n; i++ {
				if _, err := caller.Token(ctx, vend.Request{Provider: "demo-k2", Scope: scope(i), MinTTL: -1}); err != nil {
					return 0, 0, 0, err
				}
			}
			caller.Token(ctx, vend.Request{Provider: "demo-k2", Scope: scope(0), MinTTL: -1}) // carries the last usage writes
		}
		if _, err := refresher.RefreshDue(ctx, vend.RefreshOptions{Horizon: 10 * time.Minute, Parallel: 16}); err != nil {
			return 0, 0, 0, err
		}
		clock.Advance(10 * time.Minute)
	}
	for i := 0; i < keys; i++ {
		if i < used {
			usedUp += counter.total[scope(i)]
		} else {
			idleUp += counter.later[scope(i)]
		}
	}
	items, _ := st.Scan(ctx, store.Filter{Prefix: "token#"})
	for _, it := range items {
		if !it.Token.IsZero() && clock.Now().Before(it.Expiry()) {
			live++
		}
	}
	return idleUp, live, usedUp, nil
}

// Cost model of the refresher's side, per month (30 days), for keys that
// are all in use with 1 h tokens and a refresher every minute. The vends
// themselves are costed per million in section 6.
const (
	runsPerMonth     = 30 * 24 * 60
	renewalsPerKey   = 30 * 24 * 60 / 48 // a 1 h token renewed 12 min before expiry
	usageWritesKey   = 30 * 24           // one usage write an hour (IDLE_AFTER 24 h)
	renewalWRU       = 2*2 + 2           // lease take and token write of a ~1.5 KB item, plus the index entry moving
	usageWRU         = 2                 // a usage write rewrites the item
	renewalUpstreamS = 0.15              // assumed provider latency per renewal
	// secretReadsPerProvider: the refresher re-reads a provider's secret at
	// most every PROVIDER_CACHE_TTL (5 min); vend instances add their own.
	secretReadsPerProvider = runsPerMonth / 5
)

type monthCost struct {
	Keys, Providers         int
	ReadsIndex, ReadsScan   float64 // USD
	Writes, Lambda, Secrets float64
	TotalIndex, TotalScan   float64
	RCUIndexRun, RCUScanRun float64
}

// costs derives the monthly table from the measured rows: the index's
// per-run constant and per-due-key units, and the Scan's units per key.
func (r *report) monthCosts() []monthCost {
	if len(r.scale) == 0 {
		return nil
	}
	big := r.scale[len(r.scale)-1]
	constant := store.Shards * 0.5 // the minimum a Query consumes, per shard
	perDue := max(0, big.IndexRCU+big.ConfirmRCU-constant) / float64(big.Due)
	scanPerKey := big.ScanRCU / float64(big.Keys)
	var out []monthCost
	for _, shape := range [][2]int{{100, 10}, {10000, 10}, {100000, 10}, {1000000, 10}, {100000, 10000}, {1000000, 10000}} {
		n, providers := shape[0], shape[1]
		duePerRun := float64(n) * renewalsPerKey / runsPerMonth
		c := monthCost{Keys: n, Providers: providers, RCUIndexRun: constant + duePerRun*perDue, RCUScanRun: float64(n)*scanPerKey + duePerRun*(big.ConfirmRCU/float64(big.Due))}
		// The fan-out (on by default): each run is the scheduled invocation
		// and one per shard, and each shard's lease costs a consistent read
		// and two writes of a small item.
		c.RCUIndexRun += store.Shards
		c.ReadsIndex = c.RCUIndexRun * runsPerMonth / 1e6 * ddbPerMillionRRU
		c.ReadsScan = c.RCUScanRun * runsPerMonth / 1e6 * ddbPerMillionRRU
		c.Writes = (float64(n)*(renewalsPerKey*renewalWRU+usageWritesKey*usageWRU) + runsPerMonth*2*store.Shards) / 1e6 * ddbPerMillionWRU
		// DefaultRefreshParallel renewals in flight, each waiting on the provider.
		runSeconds := 0.05 + duePerRun*renewalUpstreamS/64
		invocations := 1.0 + store.Shards
		c.Lambda = runsPerMonth * (invocations*lambdaPerMillionReq/1e6 + (runSeconds+store.Shards*0.05)*memoryGB*lambdaPerGBs)
		c.Secrets = float64(providers)*smPerSecretMonth + float64(secretReadsPerProvider*providers)/1e4*smPer10kCalls
		c.TotalIndex = c.ReadsIndex + c.Writes + c.Lambda + c.Secrets
		scanSeconds := runSeconds + float64(n)/float64(big.Keys)*big.ScanTime.Seconds()
		c.TotalScan = c.ReadsScan + c.Writes + runsPerMonth*(lambdaPerMillionReq/1e6+scanSeconds*memoryGB*lambdaPerGBs) + c.Secrets
		out = append(out, c)
	}
	return out
}

func (r *report) writeScale(w func(string, ...any)) {
	if len(r.scale) == 0 {
		return
	}
	w("")
	w("## 7. Refresher cost grows with use, not with the table")
	w("")
	w("Tables of cached keys written straight to DynamoDB Local as the vendor leaves them (`dynamostore.Marshal`: a 1 KB token sealed with a KMS data key through moto, so %d-byte items), 1 %% of them due. One refresher run, both designs on the same table in the same run: the **full Scan** it used to make (strongly consistent, filtered on `refresh_at`), and the **refresh index** it makes now (one Query per shard of the sparse `due` index, then a consistent GetItem per due key under the lease protocol). Read units from DynamoDB Local's `ReturnConsumedCapacity`.", r.scale[0].ItemBytes)
	w("")
	w("| keys | due | full Scan: read units | items read | wall time | index: read units (query + confirm) | items read | query wall time | due keys' own size (units) |")
	w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, s := range r.scale {
		w("| %d | %d | %.1f | %d | %s | %.1f + %.1f | %d | %s | %.0f |", s.Keys, s.Due, s.ScanRCU, s.ScanItems, ms(s.ScanTime), s.IndexRCU, s.ConfirmRCU, s.IndexItems, ms(s.IndexTime), s.DueOwnRCU)
	}
	w("")
	w("The index's read units per run stay within 2× the due keys' own size plus the per-shard minimum (%d shards × 0.5), whatever the table size; the Scan's grow with the table. Wall times are DynamoDB Local's (a Java process on this machine): its Scan is far slower than DynamoDB's, so read the Scan's wall time as a trend, and the index's as an upper bound.", store.Shards)
	wk := r.week
	if wk.Keys > 0 {
		w("")
		w("### A simulated week (fake clock)")
		w("")
		w("%d keys used hourly on day 1; from day 2 only %d of them. Refresher every 10 minutes (10-minute horizon), IDLE_AFTER %s, the memory store (whose records, like DynamoDB's, stay until deleted; \"live\" counts what TTL would leave).", wk.Keys, wk.Used, wk.IdleAfter)
		w("")
		w("| | upstream requests for the idle keys after day 1 + IDLE_AFTER | live records after %d days | upstream requests for the used keys |", wk.Days)
		w("| --- | ---: | ---: | ---: |")
		w("| idle keys retire (now) | %d | %d | %d |", wk.IdleUpstream, wk.LiveAtEnd, wk.UsedUpstream)
		w("| renewed for ever (before) | %d | %d | |", wk.IdleUpstreamForever, wk.LiveAtEndForever)
	}
	w("")
	w("### Monthly cost of the refresher's side")
	w("")
	w("Every key in use, 1 h tokens (%d renewals a key a month), refresher every minute (%d runs). Providers are secrets in Secrets Manager: $%.2f each a month, and the refresher re-reads each at most every 5 minutes (%d reads a month each; vend instances add their own, per instance, not counted here). The last two rows are the multi-tenant shape, one provider per merchant. Read units per run from the largest measured table (index: per-shard minimum + units per due key; Scan: units per key in the table); writes: %d WRU per renewal (lease take and token write of a ~1.5 KB item, the index entry moving) and one usage write an hour (%d WRU); refresher Lambda 256 MB arm64, 50 ms + %.0f ms per renewal with 64 in flight (assumed provider latency); AWS list prices (us-east-1): DynamoDB on-demand $%.3f per million RRU and $%.3f per million WRU, Secrets Manager $%.2f per 10 000 calls. The vends themselves are costed per million in section 6. The index rows include the refresher's fan-out (on by default): %d shard invocations per run besides the scheduled one, each 50 ms more, and each shard's lease (one consistent read, two writes) — about $%.2f a month whatever the fleet. At 1 000 000 keys a run has about %.0f keys due: one invocation renews them in a minute only if it sustains %.0f renewals/s, the 8 shard invocations of a fanned-out run %.0f/s each (section 11 measures what one invocation sustains).",
		renewalsPerKey, runsPerMonth, smPerSecretMonth, secretReadsPerProvider, renewalWRU, usageWRU, renewalUpstreamS*1000, ddbPerMillionRRU, ddbPerMillionWRU, smPer10kCalls,
		store.Shards, runsPerMonth*(store.Shards*(lambdaPerMillionReq/1e6+0.05*memoryGB*lambdaPerGBs)+store.Shards/1e6*ddbPerMillionRRU+2*store.Shards/1e6*ddbPerMillionWRU),
		1e6*float64(renewalsPerKey)/runsPerMonth, 1e6*float64(renewalsPerKey)/runsPerMonth/60, 1e6*float64(renewalsPerKey)/runsPerMonth/60/store.Shards)
	w("")
	w("| keys | providers | read units per run (index / Scan) | DynamoDB reads (index) | DynamoDB reads (Scan) | DynamoDB writes | refresher Lambda | Secrets Manager | total with the index | total with the Scan |")
	w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, c := range r.monthCosts() {
		w("| %d | %d | %.1f / %.1f | $%.2f | $%.2f | $%.2f | $%.2f | $%.2f | **$%.2f** | $%.2f |", c.Keys, c.Providers, c.RCUIndexRun, c.RCUScanRun, c.ReadsIndex, c.ReadsScan, c.Writes, c.Lambda, c.Secrets, c.TotalIndex, c.TotalScan)
	}
	w("")
	w("Keys that go idle cost nothing after IDLE_AFTER: no renewals, no reads, and their records expire by TTL.")
}
