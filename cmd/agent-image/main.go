// Command agent-image builds the token-vendor agent's container image with
// no Docker daemon and no registry: an OCI image layout holding one image
// index for linux/amd64 and linux/arm64, each image FROM scratch with the
// static binary, CA certificates, the token volume's directory owned by
// the agent's user, a non-root user and the agent as entrypoint. `make
// agent-image` builds the binaries and runs it; push the layout with any OCI
// tool (crane push, skopeo copy --all oci:DIR docker://…).
//
//	agent-image [-bin bin/agent] [-out bin/agent-image] [-ca /etc/ssl/certs/ca-certificates.crt] [-tag token-vendor-agent:dev]
package main

import (
	"archive/tar"
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image's user: not root, the conventional "nonroot" of distroless.
const uid = 65532

// Paths in the image.
const (
	Binary    = "/tokenvendor-agent"
	CABundle  = "/etc/ssl/certs/ca-certificates.crt"
	TokenDir  = "/var/run/token-vendor"
	archsHelp = "amd64 and arm64"
)

var archs = []string{"amd64", "arm64"}

func main() {
	bin := flag.String("bin", "bin/agent", "directory holding linux-<arch>/tokenvendor-agent for "+archsHelp)
	out := flag.String("out", "bin/agent-image", "OCI image layout to write (replaced)")
	ca := flag.String("ca", "/etc/ssl/certs/ca-certificates.crt", "PEM bundle of CA certificates to put in the image")
	tag := flag.String("tag", "token-vendor-agent:dev", "the index's org.opencontainers.image.ref.name")
	flag.Parse()
	if err := build(*bin, *out, *ca, *tag, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "agent-image:", err)
		os.Exit(1)
	}
}

func build(bin, out, caPath, tag string, report io.Writer) error {
	certs, err := os.ReadFile(caPath)
	if err != nil {
		return fmt.Errorf("CA certificates: %w", err)
	}
	if n := countCerts(certs); n == 0 {
		return fmt.Errorf("CA certificates: %s holds no PEM certificate", caPath)
	}
	// Reproducible: the same binaries and bundle give the same digests.
	epoch := time.Unix(0, 0).UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH: %w", err)
		}
		epoch = time.Unix(n, 0).UTC()
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, arch := range archs {
		path := filepath.Join(bin, "linux-"+arch, "tokenvendor-agent")
		exe, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("the %s binary (make agent builds it): %w", arch, err)
		}
		img, err := image(arch, exe, certs, epoch)
		if err != nil {
			return fmt.Errorf("%s: %w", arch, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
		l, _ := img.Layers()
		size, _ := l[0].Size()
		fmt.Fprintf(report, "linux/%s: binary %.2f MB, layer %.2f MB compressed\n", arch, mb(len(exe)), mb(int(size)))
	}
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	p, err := layout.Write(out, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
		return err
	}
	d, _ := idx.Digest()
	total, err := dirSize(out)
	if err != nil {
		return err
	}
	fmt.Fprintf(report, "wrote %s: index %s (%s), %.2f MB on disk\n", out, d, tag, mb(int(total)))
	return nil
}

// image is one platform's image: a single layer on scratch.
func image(arch string, exe, certs []byte, epoch time.Time) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body []byte) error {
		h.ModTime, h.Format = epoch, tar.FormatPAX
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	dir := func(name string, owner int) *tar.Header {
		return &tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755, Uid: owner, Gid: owner}
	}
	file := func(name string, mode int64) *tar.Header {
		return &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode}
	}
	entries := []struct {
		h    *tar.Header
		body []byte
	}{
		{dir("etc", 0), nil},
		{file("etc/passwd", 0o644), []byte(fmt.Sprintf("root:x:0:0:root:/:/sbin/nologin\nnonroot:x:%d:%d:token-vendor agent:/:/sbin/nologin\n", uid, uid))},
		{file("etc/group", 0o644), []byte(fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", uid))},
		{dir("etc/ssl", 0), nil},
		{dir("etc/ssl/certs", 0), nil},
		{file(CABundle[1:], 0o644), certs},
		{dir("tmp", 0), nil},
		{dir("var", 0), nil},
		{dir("var/run", 0), nil},
		// The token volume's mount point, writable by the agent: volumes
		// mounted there start with the image's ownership (see Volumes).
		{dir(TokenDir[1:], uid), nil},
		{file(Binary[1:], 0o755), exe},
	}
	for _, e := range entries {
		if e.h.Name == "tmp/" {
			e.h.Mode = 0o1777
		}
		if err := add(e.h, e.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: epoch}
	cf.Config = v1.Config{
		User:       fmt.Sprintf("%d:%d", uid, uid),
		Entrypoint: []string{Binary},
		WorkingDir: "/",
		StopSignal: "SIGTERM",
		// ECS copies a VOLUME path's content and ownership into a bind
		// mount at the same containerPath; without it the task volume is
		// root's (0755) and the agent, not root, could not write its token.
		Volumes: map[string]struct{}{TokenDir: {}},
		Env:     []string{"SSL_CERT_FILE=" + CABundle},
		Labels: map[string]string{
			"org.opencontainers.image.title":       "token-vendor agent",
			"org.opencontainers.image.description": "OAuth tokens from token-vendor for the services beside it, on 127.0.0.1:2790 (docs/agent.md)",
			"org.opencontainers.image.source":      "https://github.com/token-vendor/token-vendor",
		},
	}
	cf.History = []v1.History{{Created: v1.Time{Time: epoch}, CreatedBy: "cmd/agent-image: tokenvendor-agent, CA certificates, nonroot user"}}
	return mutate.ConfigFile(img, cf)
}

func countCerts(b []byte) int {
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return n
		}
		if _, err := x509.ParseCertificate(blk.Bytes); blk.Type == "CERTIFICATE" && err == nil {
			n++
		}
	}
}

func dirSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		return 0, errors.Join(errors.New("measuring the layout"), err)
	}
	return n, nil
}

func mb(n int) float64 { return float64(n) / (1 << 20) }
