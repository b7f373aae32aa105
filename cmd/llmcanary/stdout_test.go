package main

import (
	"io"
	"os"
	"testing"
)

// stdoutOf runs f with os.Stdout captured and returns what it wrote.
func stdoutOf(t *testing.T, f func() error) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	done := make(chan []byte)
	go func() { b, _ := io.ReadAll(r); done <- b }()
	ferr := f()
	os.Stdout = old
	w.Close()
	out := string(<-done)
	if ferr != nil {
		t.Fatalf("%v (printed %q)", ferr, out)
	}
	return out
}
