// Command refresher is the scheduled Lambda that renews tokens before they expire.
package main

import (
	"github.com/aws/aws-sdk-go-v2/service/lambda"

	"github.com/token-vendor/token-vendor/pkg/app"
	"github.com/token-vendor/token-vendor/pkg/fanout"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
)

func main() {
	app.StartLambda(func(a *app.App) any {
		var shards lambdafn.Dispatcher // nil: one invocation renews every shard
		if a.Config.RefreshFanOut {
			shards = fanout.Invoker{API: lambda.NewFromConfig(a.AWS), Function: a.Config.FunctionName, Qualifier: a.Config.FunctionVersion}
		}
		return app.Flushing(a, lambdafn.Refresh(a.Gate, a.Config.RefreshInterval, shards, a.Log))
	})
}
