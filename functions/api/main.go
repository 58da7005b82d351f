// Command api is the HTTP API Lambda behind API Gateway (payload v2, AWS_IAM).
package main

import (
	"github.com/token-vendor/token-vendor/pkg/app"
	"github.com/token-vendor/token-vendor/pkg/lambdafn"
)

func main() {
	app.StartLambda(func(a *app.App) any {
		return app.Flushing(a, lambdafn.APIGateway(a.Handler))
	})
}
