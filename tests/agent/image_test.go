package agent

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/token-vendor/token-vendor/tests/testenv"
)

// TestAgentImage builds the image as `make agent-image` does, with no
// Docker daemon, and reads the layout back: one multi-arch OCI index for
// linux/amd64 and linux/arm64; each image non-root with the agent as
// entrypoint and one layer holding the static binary of its architecture,
// the CA bundle and the token directory owned by the agent's user; the
// host's binary, taken out of its layer, runs.
func TestAgentImage(t *testing.T) {
	root, _ := testenv.RepoRoot()
	dir := t.TempDir()
	out := filepath.Join(dir, "img")
	cmd := exec.Command("make", "-s", "agent-image", "AGENT_OUT="+filepath.Join(dir, "bin"), "AGENT_IMAGE="+out)
	cmd.Dir = root
	report, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make agent-image: %v\n%s", err, report)
	}
	t.Logf("make agent-image:\n%s", report)
	if !strings.Contains(string(report), "MB on disk") {
		t.Fatalf("no size reported:\n%s", report)
	}
	p, err := layout.FromPath(out)
	if err != nil {
		t.Fatal(err)
	}
	top, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	tm, _ := top.IndexManifest()
	if len(tm.Manifests) != 1 || tm.Manifests[0].MediaType != types.OCIImageIndex || tm.Manifests[0].Annotations["org.opencontainers.image.ref.name"] == "" {
		t.Fatalf("index.json %+v: want one named OCI image index", tm.Manifests)
	}
	idx, err := top.ImageIndex(tm.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	var platforms []string
	for _, d := range im.Manifests {
		if d.Platform == nil || d.MediaType != types.OCIManifestSchema1 {
			t.Fatalf("manifest %+v: want an OCI image manifest with its platform", d)
		}
		arch := d.Platform.Architecture
		platforms = append(platforms, d.Platform.OS+"/"+arch)
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.OS != "linux" || cf.Architecture != arch || cf.Config.User != "65532:65532" || !slices.Equal(cf.Config.Entrypoint, []string{"/tokenvendor-agent"}) {
			t.Fatalf("%s config: os %s arch %s user %q entrypoint %q", arch, cf.OS, cf.Architecture, cf.Config.User, cf.Config.Entrypoint)
		}
		// ECS populates a bind mount from the image only at a VOLUME path.
		if _, ok := cf.Config.Volumes["/var/run/token-vendor"]; !ok || len(cf.Config.Volumes) != 1 {
			t.Fatalf("%s config: volumes %v, want the token directory", arch, cf.Config.Volumes)
		}
		files := layerFiles(t, img)
		exe, ok := files["tokenvendor-agent"]
		if !ok || exe.hdr.Mode&0o111 == 0 {
			t.Fatalf("%s: no executable /tokenvendor-agent in the layer", arch)
		}
		if ca := files["etc/ssl/certs/ca-certificates.crt"]; ca == nil || bytes.Count(ca.body, []byte("BEGIN CERTIFICATE")) < 10 {
			t.Fatalf("%s: no CA bundle in the layer", arch)
		}
		if d := files["var/run/token-vendor/"]; d == nil || d.hdr.Uid != 65532 {
			t.Fatalf("%s: the token directory is not the agent user's: %+v", arch, d)
		}
		// Static, for the right machine.
		f, err := elf.NewFile(bytes.NewReader(exe.body))
		if err != nil {
			t.Fatalf("%s: %v", arch, err)
		}
		want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch]
		if f.Machine != want || slices.ContainsFunc(f.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP }) {
			t.Fatalf("%s: ELF machine %v (want %v) or dynamically linked", arch, f.Machine, want)
		}
		if arch == runtime.GOARCH && runtime.GOOS == "linux" {
			bin := filepath.Join(dir, "from-image")
			if err := os.WriteFile(bin, exe.body, 0o755); err != nil {
				t.Fatal(err)
			}
			run := exec.Command(bin, "--addr", "0.0.0.0:2790")
			run.Env = []string{"TOKEN_VENDOR_FUNCTION=f", "TOKEN_VENDOR_AGENT_TOKEN=0123456789abcdef0123"}
			b, err := run.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(b), "not a loopback address") {
				t.Fatalf("the image's binary: %v %s", err, b)
			}
		}
	}
	slices.Sort(platforms)
	if !slices.Equal(platforms, []string{"linux/amd64", "linux/arm64"}) {
		t.Fatalf("platforms %v", platforms)
	}
}

type layerFile struct {
	hdr  *tar.Header
	body []byte
}

func layerFiles(t *testing.T, img v1.Image) map[string]*layerFile {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers (%v), want one", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]*layerFile{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name] = &layerFile{hdr: h, body: b}
	}
}
