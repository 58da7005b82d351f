// Command vend is the Lambda other Lambdas invoke directly for a token.
package main

import (
	"github.com/token-vendor/token-vendor/pkg/app"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
)

func main() {
	app.StartLambda(func(a *app.App) any {
		// As a lambda.Handler (InvokeFunc): the event is read once.
		return lambdafn.InvokeFunc(app.Flushing(a, lambdafn.Invoke(a.Gate, a.Proofs, a.Log, nil)))
	})
}
