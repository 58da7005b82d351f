package sandbox

import "github.com/token-vendor/token-vendor/pkg/provider"

// DemoProviders registers one client per seed style on s and returns the
// provider definitions that point at it, keyed by provider name. base is the
// server's root URL, such as http://127.0.0.1:8081.
func DemoProviders(s *Server, base string) map[string]*provider.Definition {
	s.AddClient(Client{ID: "demo-k2-client", Secret: "demo-k2-secret", Style: K2})
	s.AddClient(Client{ID: "demo-mobi-client", Secret: "demo-mobi-secret", Style: Mobi})
	s.AddClient(Client{ID: "demo-dot-client", Secret: "demo-dot-secret", Style: DOT, Scopes: []string{"read", "write", "admin"}})
	defs := map[string]*provider.Definition{
		"demo-k2": {
			Name: "demo-k2", TokenURL: base + K2TokenPath, RevokeURL: base + K2RevokePath,
			ClientID: "demo-k2-client", ClientSecret: "demo-k2-secret", AuthMethod: provider.AuthPost,
		},
		"demo-mobi": {
			Name: "demo-mobi", TokenURL: base + MobiTokenPath,
			ClientID: "demo-mobi-client", ClientSecret: "demo-mobi-secret", AuthMethod: provider.AuthQuery,
			DefaultExpiresIn: 3600,
		},
		"demo-dot": {
			Name: "demo-dot", TokenURL: base + DOTTokenPath, RevokeURL: base + DOTRevokePath,
			ClientID: "demo-dot-client", ClientSecret: "demo-dot-secret", AuthMethod: provider.AuthBasic,
			Scopes: []string{"read"}, AllowedScopes: []string{"read", "write", "admin"},
		},
	}
	for _, d := range defs {
		if err := d.Validate(); err != nil {
			panic("sandbox: demo definition invalid: " + err.Error()) // a programming error, caught by tests
		}
	}
	return defs
}
