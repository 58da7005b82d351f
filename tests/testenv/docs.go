package testenv

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// DocFiles lists the user documentation whose examples the tests run or
// parse: README.md and every page under docs/. Examples move between the
// README and the topic pages; the tests find them wherever they live.
func DocFiles(t testing.TB) []string {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	pages, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(pages)
	return append([]string{filepath.Join(root, "README.md")}, pages...)
}

// Docs is the text of DocFiles, each file once, in that order.
func Docs(t testing.TB) string {
	t.Helper()
	var b strings.Builder
	for _, f := range DocFiles(t) {
		text, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(text)
		b.WriteString("\n")
	}
	return b.String()
}

// DocBlocks returns the fenced code blocks of language lang in the docs
// (README.md and docs/*.md) that contain marker ("" for all).
func DocBlocks(t testing.TB, lang, marker string) []string {
	t.Helper()
	var out []string
	for _, m := range regexp.MustCompile("(?s)```"+regexp.QuoteMeta(lang)+"\n(.*?)```").FindAllStringSubmatch(Docs(t), -1) {
		if strings.Contains(m[1], marker) {
			out = append(out, m[1])
		}
	}
	return out
}
