// Command refresher is the scheduled Lambda that renews tokens before they expire.
package main

import (
	"github.com/token-vendor/token-vendor/pkg/app"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
)

func main() {
	app.StartLambda(func(a *app.App) any {
		return app.Flushing(a, lambdafn.Refresh(a.Vendor, a.Config.RefreshInterval, a.Dispatcher, a.Log))
	})
}
