package vend_test

import (
	"testing"

	"github.com/token-vendor/token-vendor/pkg/store"
	"github.com/token-vendor/token-vendor/pkg/vend"
	"github.com/token-vendor/token-vendor/pkg/vend/vendtest"
)

func TestScenariosInMemory(t *testing.T) {
	vendtest.Run(t, func(t *testing.T, c *vendtest.Clock) vend.Store {
		if c == nil {
			return store.NewMemory(nil)
		}
		return store.NewMemory(c.Now)
	})
}
