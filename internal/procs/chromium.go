package procs

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// ChromiumBinary finds headless Chromium: $LLMCANARY_CHROMIUM, else
// chromium on PATH (make deps installs Debian's).
func ChromiumBinary() (string, error) {
	return LookBinary("LLMCANARY_CHROMIUM", "chromium", "install it with make deps (apt-get install chromium)")
}

// Page is a web page opened in headless Chromium: the DOM after it
// rendered, and a screenshot.
type Page struct {
	DOM        string
	Screenshot image.Image
	PNG        string // path of the screenshot
}

// OpenPage opens a local file in headless Chromium (no network: the
// page must be self-contained), dumps its DOM and takes a screenshot of
// the given size into dir.
func OpenPage(ctx context.Context, file, dir string, width, height int) (*Page, error) {
	bin, err := ChromiumBinary()
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, err
	}
	url := "file://" + abs
	// A profile of its own, so that parallel tests never share one.
	common := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
		"--user-data-dir=" + filepath.Join(dir, "chromium-profile"), "--hide-scrollbars"}
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, append(common, "--dump-dom", url)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("chromium --dump-dom: %w\n%s", err, tail(stderr.String(), 2000))
	}
	p := &Page{DOM: stdout.String(), PNG: filepath.Join(dir, "screenshot.png")}
	stderr.Reset()
	cmd = exec.CommandContext(ctx, bin, append(common, "--screenshot="+p.PNG, fmt.Sprintf("--window-size=%d,%d", width, height), url)...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("chromium --screenshot: %w\n%s", err, tail(stderr.String(), 2000))
	}
	f, err := os.Open(p.PNG)
	if err != nil {
		return nil, fmt.Errorf("chromium wrote no screenshot: %w\n%s", err, tail(stderr.String(), 2000))
	}
	defer f.Close()
	if p.Screenshot, err = png.Decode(f); err != nil {
		return nil, fmt.Errorf("screenshot %s: %w", p.PNG, err)
	}
	return p, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// InkShare is the share of an image's pixels that are not (near) white,
// and the number of distinct colours among them: a blank page has none.
func InkShare(img image.Image) (share float64, colours int) {
	b := img.Bounds()
	seen := map[[3]uint8]bool{}
	ink := 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			c := [3]uint8{uint8(r >> 8), uint8(g >> 8), uint8(bl >> 8)}
			if c[0] < 245 || c[1] < 245 || c[2] < 245 {
				ink++
				seen[[3]uint8{c[0] &^ 7, c[1] &^ 7, c[2] &^ 7}] = true
			}
		}
	}
	return float64(ink) / float64(b.Dx()*b.Dy()), len(seen)
}
