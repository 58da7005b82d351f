// Package registry supplies provider definitions: from a JSON file in local
// mode, from Secrets Manager in AWS, behind a per-instance cache.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"

	"github.com/token-vendor/token-vendor/pkg/provider"
)

// File holds definitions read from a JSON object of name -> definition.
// Reload re-reads the file, so a local secret rotation is picked up like a
// Secrets Manager one.
type File struct {
	path string
	mu   sync.RWMutex
	defs map[string]*provider.Definition
}

// LoadFile reads and validates every definition in path.
func LoadFile(path string) (*File, error) {
	f := &File{path: path}
	if err := f.load(); err != nil {
		return nil, err
	}
	return f, nil
}

// NewStatic serves fixed definitions (the sandbox's demo providers).
func NewStatic(defs map[string]*provider.Definition) *File {
	return &File{defs: defs}
}

func (f *File) load() error {
	data, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("providers file: %w", err)
	}
	defs, err := ParseFile(data)
	if err != nil {
		return fmt.Errorf("providers file %s: %w", f.path, err)
	}
	f.mu.Lock()
	f.defs = defs
	f.mu.Unlock()
	return nil
}

// ParseFile parses a providers file: a JSON object of name -> definition.
func ParseFile(data []byte) (map[string]*provider.Definition, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("not valid JSON (syntax error at byte %d)", se.Offset)
		}
		return nil, fmt.Errorf("want a JSON object of provider name -> definition")
	}
	defs := make(map[string]*provider.Definition, len(raw))
	for name, r := range raw {
		d, err := provider.Parse(name, r)
		if err != nil {
			return nil, err
		}
		defs[name] = d
	}
	return defs, nil
}

// Get returns a definition or an error wrapping provider.ErrNotFound.
func (f *File) Get(_ context.Context, name string) (*provider.Definition, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	d, ok := f.defs[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", provider.ErrNotFound, name)
	}
	return d, nil
}

// Reload re-reads the file (if there is one) and returns the definition.
func (f *File) Reload(ctx context.Context, name string) (*provider.Definition, error) {
	if f.path != "" {
		if err := f.load(); err != nil {
			return nil, err
		}
	}
	return f.Get(ctx, name)
}

// Names lists provider names, sorted.
func (f *File) Names(context.Context) ([]string, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	names := make([]string, 0, len(f.defs))
	for n := range f.defs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}
