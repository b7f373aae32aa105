// Package durable writes files so that a crash leaves either the old or the
// new content, never a torn one.
package durable

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteFile replaces path with data so that a crash leaves either the
// old or the new content: write a temporary file in the same directory,
// fsync it, rename it over path, fsync the directory.
func WriteFile(path string, data []byte) error {
	return WriteFilePerm(path, data, 0o600)
}

// WriteFilePerm is WriteFile giving the new file the permissions perm
// before it takes path's place.
func WriteFilePerm(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("durable: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("durable: chmod: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("durable: write: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("durable: fsync: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("durable: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("durable: rename: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("durable: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("durable: fsync dir: %w", err)
	}
	return nil
}
