package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/token-vendor/token-vendor/tests/testenv"
)

type coldStartResult struct {
	Sizes map[string]int64 // linux/arm64 bootstrap bytes
	Ready []time.Duration  // process start to first "next invocation" request, vend function
}

// coldStart measures what a Lambda cold start depends on that this code
// controls: binary size, and the time from exec to the runtime loop asking
// for its first event (AWS config loaded, parts wired, no network at init),
// against a fake Runtime API.
func coldStart(r *report) error {
	dir, err := os.MkdirTemp("", "bench-cold-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	res := coldStartResult{Sizes: map[string]int64{}}
	for _, fn := range []string{"api", "vend", "refresher"} {
		out := filepath.Join(dir, fn+"-arm64")
		cmd := exec.Command("go", "build", "-trimpath", "-tags", "lambda.norpc", "-ldflags", "-s -w", "-o", out, "./functions/"+fn)
		root, err := testenv.RepoRoot()
		if err != nil {
			return err
		}
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%v\n%s", err, b)
		}
		st, err := os.Stat(out)
		if err != nil {
			return err
		}
		res.Sizes[fn] = st.Size()
	}
	host := filepath.Join(dir, "vend-host")
	if err := buildHost("./functions/vend", host, "lambda.norpc"); err != nil {
		return err
	}
	ready := make(chan time.Time, 1)
	rt := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if strings.HasSuffix(req.URL.Path, "/invocation/next") {
			select {
			case ready <- time.Now():
			default:
			}
			<-req.Context().Done() // hold the long poll until the process is killed
			return
		}
		io.Copy(io.Discard, req.Body)
	}))
	defer rt.Close()
	runs := 15
	if r.quick {
		runs = 5
	}
	for i := 0; i < runs; i++ {
		cmd := exec.Command(host)
		cmd.Env = []string{
			"AWS_LAMBDA_RUNTIME_API=" + strings.TrimPrefix(rt.URL, "http://"),
			"TOKEN_TABLE=tokens", "PROVIDER_SECRET_PREFIX=token-vendor/providers/", "TOKEN_KMS_KEY_ID=alias/tokens",
			"AWS_REGION=us-east-1", "AWS_ACCESS_KEY_ID=x", "AWS_SECRET_ACCESS_KEY=x", "AWS_EC2_METADATA_DISABLED=true",
			"AWS_LAMBDA_FUNCTION_NAME=vend", "HOME=" + dir,
		}
		start := time.Now()
		if err := cmd.Start(); err != nil {
			return err
		}
		select {
		case t := <-ready:
			res.Ready = append(res.Ready, t.Sub(start))
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			cmd.Wait()
			return fmt.Errorf("function never asked for an event")
		}
		cmd.Process.Kill()
		cmd.Wait()
	}
	sort.Slice(res.Ready, func(i, j int) bool { return res.Ready[i] < res.Ready[j] })
	r.cold = res
	return nil
}
