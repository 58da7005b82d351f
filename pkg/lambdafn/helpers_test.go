package lambdafn_test

import "github.com/token-vendor/token-vendor/pkg/sandbox"

func sandboxFault(status int) sandbox.Fault { return sandbox.Fault{Status: status} }
